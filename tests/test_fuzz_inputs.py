"""Seeded fuzzing of the command line: 10,000 formulas through ``predict`` and 1,000 mangled structure files through
``relax`` and ``property``. Each must end in exit 0 with a result or exit 2 with one ``xtalforge: error:`` line.

The generator and the checks live in ``tests/fuzz_cases.py`` (shared with ``bench/fuzz_inputs.py``, which runs
more cases and writes docs/robustness.md).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

SEED = 20261206
N_FORMULAS = 10_000
N_FILES = 1_000


def load_fuzz_cases():
    """``tests/fuzz_cases.py`` as a module (pytest's importlib mode puts no test folder on sys.path)."""
    path = Path(__file__).with_name("fuzz_cases.py")
    spec = importlib.util.spec_from_file_location("fuzz_cases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_cases", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_fuzzed_inputs_end_in_a_result_or_one_error_line(tmp_path, capsys, monkeypatch, one_thread):
    fuzz = load_fuzz_cases()
    monkeypatch.chdir(tmp_path)  # anything written to the working folder by mistake stays in tmp_path
    t0 = time.perf_counter()
    fuzzer, timings = fuzz.run(SEED, N_FORMULAS, N_FILES, tmp_path / "work", capsys.readouterr)
    elapsed = time.perf_counter() - t0
    counts = fuzzer.counts()
    with capsys.disabled():
        print(f"\nfuzzed in {elapsed:.1f} s ({timings}):")
        for command, c in counts.items():
            print(f"  {command}: {c['inputs']} inputs, {c['results']} results, {c['errors']} one-line errors, "
                  f"{c['failures']} failures; CLI ran {c['ran_cli']} times")
    assert not fuzzer.failures, "\n".join(fuzzer.failures[:20])
    assert counts["predict"]["inputs"] == N_FORMULAS
    assert counts["relax"]["inputs"] == counts["property"]["inputs"] == N_FILES
    for command in ("predict", "relax", "property"):  # both outcomes are exercised, not only one of them
        assert counts[command]["results"] > 0 and counts[command]["errors"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
