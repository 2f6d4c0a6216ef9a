"""`auto` with another generator for the slots templates leave: the shipped DAO-G or the symmetry method.

    python bench/auto_generator.py --data mpts_52 --generator symmetry --limit 150 --seed 1

Runs exactly what `xtalforge evaluate --data D --method auto --limit N --seed S` runs (shipped library, pooled val +
AFLOW; k = 1, 20), with ``generator=`` passed to the auto method, into ``--work``/<data>_auto_<generator>_n<N>_s<S>
(resumable). Compare with the stored `auto_eval_<data>_n<N>_s<S>.json` of the same rows.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import xtalforge
from xtalforge.data import load_split, training_set
from xtalforge.evaluation import evaluate_csp
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.prediction import predictor
from xtalforge.templates.library import benchmark_library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mpts_52")
    parser.add_argument("--generator", default="symmetry", choices=["dao-g", "symmetry"])
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/auto_generator")
    parser.add_argument("--out", default=None, help="JSON (default bench/results/auto_<generator>_<data>_...)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_split(args.data, "test")
    method = predictor("auto", n=20, library=benchmark_library(args.data, pooled=True, aflow=True),
                       generator=args.generator)
    tag = f"{args.data}_auto_{args.generator}_n{args.limit}_s{args.seed}"
    report = evaluate_csp(method, test, ks=(1, 20), out_dir=Path(args.work) / tag, limit=args.limit, seed=args.seed,
                          workers=1, library=training_set(args.data, pooled=True, aflow=True))
    out = Path(args.out or f"bench/results/auto_{args.generator}_{args.data}_n{args.limit}_s{args.seed}.json")
    write_json(out, {**report, "benchmark": "auto_generator", "bench_settings": vars(args),
                     "versions": {**package_versions(), "xtalforge": xtalforge.__version__},
                     "machine": platform.platform()})
    m = report["results"]["metrics"]
    free = report["results"].get("template_free", {}).get("metrics", {})
    print(f"| {args.data} | auto, generator {args.generator} | {m['1']['entries']} | {m['1']['match_rate']:.1f} | "
          f"{m['20']['match_rate']:.1f} | template-free {free.get('1', {}).get('match_rate', float('nan')):.1f} / "
          f"{free.get('20', {}).get('match_rate', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
