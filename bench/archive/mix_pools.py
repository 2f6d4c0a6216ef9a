"""A pool of samples from two DAO-G weights: the first ``a`` samples of one run and the first ``b`` of another.

Writes ``runs/bench_dao_g_sampler_options/<name>/candidates_test_index.jsonl`` with, per test row both runs hold,
the samples of the first run followed by those of the second, the form ``bench/ranking.py --dao-g-candidates
... --pool a+b`` ranks (consensus over the mixed pool: do two models' samples agree on the right structure more
often than one model's?).

Usage::

    python bench/mix_pools.py runs/.../<default run>/candidates_test_index.jsonl:30 \\
        runs/.../<ft run>/candidates_test_index.jsonl:30 --name mp20_mix_tune200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xtalforge.crystal import atomic_write_text
from xtalforge.evaluation.csp import read_jsonl

RUNS = Path(__file__).resolve().parents[2] / "runs" / "bench_dao_g_sampler_options"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", help="<candidates_test_index.jsonl>:<samples taken>")
    ap.add_argument("second", help="<candidates_test_index.jsonl>:<samples taken>")
    ap.add_argument("--name", required=True, help="folder of the mixed pool under runs/bench_dao_g_sampler_options")
    args = ap.parse_args(argv)
    (path_a, a), (path_b, b) = (s.rsplit(":", 1) for s in (args.first, args.second))
    second = {r["index"]: r for r in read_jsonl(Path(path_b))}
    lines = []
    for rec in read_jsonl(Path(path_a)):
        other = second.get(rec["index"])
        if other is None:
            continue
        if other["material_id"] != rec["material_id"]:
            raise SystemExit(f"row {rec['index']}: {rec['material_id']} in {path_a}, "
                             f"{other['material_id']} in {path_b}")
        cands = rec["candidates"][: int(a)] + other["candidates"][: int(b)]
        lines.append(json.dumps({**rec, "candidates": cands, "sources": [[path_a, int(a)], [path_b, int(b)]]}) + "\n")
    out = RUNS / args.name / "candidates_test_index.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(lines))
    print(f"{len(lines)} rows -> {out}")


if __name__ == "__main__":
    main()
