"""Evaluation: CSP match rate / RMSE (resumable, parallel, with per-pair time-outs) and de novo metrics.

>>> from xtalforge.evaluation import evaluate_csp, markdown_table
>>> report = evaluate_csp(method, test, ks=(1, 20), out_dir="runs/template_mp20", library=train)
>>> print(markdown_table(report))

Names are imported lazily, so the matching child processes do not load the data and model stacks.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "generate_candidates": "csp",
    "match_candidates": "csp",
    "summarize_csp": "csp",
    "template_free_mask": "csp",
    "evaluate_csp": "csp",
    "markdown_table": "csp",
    "read_jsonl": "csp",
    "MatchTolerance": "matching",
    "PairMatcher": "matching",
    "evaluate_denovo": "denovo",
    "structure_validity": "denovo",
    "smact_validity": "denovo",
    "coverage": "denovo",
    "structure_fingerprint": "fingerprints",
    "composition_fingerprint": "fingerprints",
    "package_versions": "report",
    "write_json": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"xtalforge.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'xtalforge.evaluation' has no attribute '{name}'")
