"""Does the symmetry path find crystals the templates miss? Per-entry overlap of two `evaluate` runs on the same rows.

    xtalforge evaluate --data mpts_52 --method template --limit 100 --seed 1 --out runs/tpl_mpts_s1
    python bench/symmetry_csp.py --runs both:mpts_52 --limit 100 --seed 1 --rank-by chgnet --pool 20
    python bench/symmetry_overlap.py runs/tpl_mpts_s1 runs/symmetry_csp/mpts_52_both_n100_s1_chgnet20

Reads each folder's ``matches.jsonl`` (per entry, the match of every candidate in rank order; match =
StructureMatcher get_rms_dist at the evaluator's tolerances) and counts, at k=20, the entries each run matches, both
and only one; then the lists ``auto`` could make from the two: template candidates first with the symmetry samples
in the slots they leave empty, and with ``r`` of the 20 slots kept for the symmetry samples.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import xtalforge
from xtalforge.evaluation.report import package_versions, write_json


def matches(folder: Path) -> dict[str, list[bool]]:
    """material_id -> match of each candidate, in rank order."""
    out = {}
    for line in (folder / "matches.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["material_id"]] = [r is not None for r in row["rms"]]
    return out


def rates(lists: list[list[bool]], k: int = 20) -> tuple[float, float]:
    """Match rate (%) at k=1 and at k."""
    n = max(1, len(lists))
    return 100.0 * sum(bool(x) and x[0] for x in lists) / n, 100.0 * sum(any(x[:k]) for x in lists) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("templates", type=Path, help="evaluate folder of the template method")
    parser.add_argument("symmetry", type=Path, help="evaluate folder of the symmetry method on the same rows")
    parser.add_argument("--out", default="bench/results/symmetry_overlap.json")
    args = parser.parse_args()
    t, s = matches(args.templates), matches(args.symmetry)
    ids = sorted(set(t) & set(s))
    if not ids:
        raise SystemExit("the two runs share no entry: evaluate them on the same rows (--limit, --seed)")
    hit_t = {i for i in ids if any(t[i][:20])}
    hit_s = {i for i in ids if any(s[i][:20])}
    no_template = [i for i in ids if not t[i]]
    policies = {"templates alone": [t[i] for i in ids], "symmetry alone": [s[i] for i in ids],
                "templates, symmetry in the empty slots": [(t[i] + s[i])[:20] for i in ids]}
    for r in (5, 10):
        policies[f"{r} slots kept for symmetry"] = [(t[i][: 20 - r] + s[i])[:20] for i in ids]
    rows = [dict(zip(("list", "k1", "k20"), (name, *rates(lists)))) for name, lists in policies.items()]
    counts = {"entries": len(ids), "templates_match": len(hit_t), "symmetry_match": len(hit_s),
              "both": len(hit_t & hit_s), "symmetry_only": len(hit_s - hit_t), "templates_only": len(hit_t - hit_s),
              "no_template_candidate": len(no_template),
              "symmetry_only_without_template_candidate": len((hit_s - hit_t) & set(no_template))}
    lines = ["| list | k=1 | k=20 |", "|---|---|---|"] + [f"| {r['list']} | {r['k1']:.1f} | {r['k20']:.1f} |"
                                                        for r in rows]
    table = "\n".join(lines)
    print(table)
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    write_json(Path(args.out), {"benchmark": "symmetry_overlap", "settings": {k: str(v) for k, v in vars(args).items()},
                                "counts": counts, "lists": rows, "table": table,
                                "versions": {**package_versions(), "xtalforge": xtalforge.__version__},
                                "machine": platform.platform()})


if __name__ == "__main__":
    main()
