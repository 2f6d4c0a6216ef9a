"""DAO-G sampler options on CSP: low temperature, lattice noise, steps, flow-matching weights.

Sampling a sharpened density p^lambda (score x lambda) trades diversity for precision, which may lift k=1 (and
cost k=20). This script measures such options on MP-20 bi/ternary test entries: ``coord_scale`` (lambda on the
coordinate score or velocity), ``eta`` (lattice noise of the strided PC update; 1 = ancestral), ``steps``, and for
flow-matching weights ``anti_anneal`` (FlowMM's late-step speed-up).

Tuning and reporting use disjoint test entries: ``--rows tune`` takes ``--limit`` random entries *outside* the 200
entries (seed 0) on which the DAO-G numbers of the model card are reported, ``--rows report`` takes those 200.

Usage::

    python bench/dao_g_sampler_options.py --rows tune --limit 100 --grid "coord_scale=1;coord_scale=1.5,eta=0"
    python bench/dao_g_sampler_options.py --rows tune --weights runs/dao_g_flow/ema.pt --grid "steps=50,anti_anneal=5"
    python bench/dao_g_sampler_options.py --rows report --limit 200 --grid "coord_scale=1;<chosen>"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from dao_g import weights_tag  # noqa: I001  (sibling script)

from xtalforge.crystal import atomic_write_text
from xtalforge.data.protocol import BENCHMARKS, load_split, sample_indices
from xtalforge.evaluation import evaluate_csp
from xtalforge.evaluation.csp import read_jsonl
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.models.dao_g import DAOG, DAOGMethod

RESULTS = Path(__file__).resolve().parent / "results" / "dao_g_sampler_options.json"
RUNS = Path(__file__).resolve().parent.parent / "runs" / "bench_dao_g_sampler_options"


def rows_for(n_test: int, which: str, limit: int, seed: int = 0) -> np.ndarray:
    report = sample_indices(n_test, 200, 0)  # the model card's 200 entries
    if which == "random":  # the rows of bench/ranking.py --n limit --seed seed and of evaluate_csp(limit=, seed=)
        return sample_indices(n_test, limit, seed)
    if which == "report":
        return report[:limit]
    rest = np.setdiff1d(np.arange(n_test), report)
    return np.sort(np.random.default_rng(1).choice(rest, size=limit, replace=False))


def write_test_indexed(run_dir: Path, idx: np.ndarray) -> None:
    """``candidates_test_index.jsonl``: the run's candidates with ``index`` = the row of the whole test split (the
    run itself numbers the rows of its subset), the form ``bench/ranking.py --dao-g-candidates`` reads."""
    lines = []
    for rec in read_jsonl(run_dir / "candidates.jsonl"):
        lines.append(json.dumps({**rec, "index": int(idx[rec["index"]])}) + "\n")
    atomic_write_text(run_dir / "candidates_test_index.jsonl", "".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", default="mp_20_biternary")
    p.add_argument("--weights", default="mp20")
    p.add_argument("--rows", choices=["tune", "report", "random"], default="tune",
                   help="random: sample_indices(len(test), limit, seed), e.g. the 100 MPTS-52 entries of its card "
                   "(seed 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --rows random sample (a fresh draw: not 0)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--grid", default="coord_scale=1;coord_scale=1.5;coord_scale=2",
                   help="';'-separated settings, each 'option=value,...' of DAOGMethod (steps, coord_scale, eta, "
                        "anti_anneal)")
    p.add_argument("--k", default="1,20", help="comma-separated k; the largest is the samples drawn per entry "
                   "(e.g. 1,20,80 for bench/ranking.py --pool 80)")
    p.add_argument("--max_atoms", type=int, default=None, help="keep only the chosen rows of at most this many "
                   "atoms (e.g. 20 on MPTS-52, where larger cells never matched; the others count as not evaluated)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    test = load_split(args.bench, "test")
    idx = rows_for(len(test), args.rows, args.limit, args.seed)
    if args.max_atoms is not None:
        idx = idx[test.num_atoms[idx] <= args.max_atoms]
    rows_of = test.subset(idx)
    step_lr = BENCHMARKS[args.bench].step_lr
    ks = [int(k) for k in args.k.split(",")]
    results = []
    for spec in args.grid.split(";"):
        options = {k: float(v) for k, v in (kv.split("=") for kv in spec.split(","))}
        options["steps"] = int(options.get("steps", 50))
        method = DAOGMethod(DAOG.load(args.weights), step_lr=step_lr, **options)
        tag = "_".join(f"{k}{v:g}" for k, v in sorted(options.items())) + ("" if max(ks) == 20 else f"_k{max(ks)}")
        tag += "" if args.max_atoms is None else f"_max{args.max_atoms}"
        rows_tag = f"{args.rows}{len(idx)}" + ("" if args.rows != "random" or args.seed == 0 else f"_s{args.seed}")
        out = RUNS / f"{args.bench}_{weights_tag(args.weights)}_{rows_tag}_{tag}"
        t0 = time.perf_counter()
        report = evaluate_csp(method, rows_of, ks=ks, out_dir=out, workers=1, progress=False)
        write_test_indexed(out, idx)
        row = {"weights": args.weights, "options": options, "settings": method.settings(), "rows": args.rows,
               "seed": args.seed if args.rows == "random" else None, "max_atoms": args.max_atoms,
               "entries": len(idx), "metrics": report["results"]["metrics"],
               "generation_s_per_entry": report["timings"]["generation_s_per_entry"],
               "wall_s": time.perf_counter() - t0, "run_dir": str(out)}
        results.append(row)
        m = row["metrics"]
        rates = " ".join(f"k={k} {m[str(k)]['match_rate']:.1f}" for k in ks)
        print(f"{spec}: {rates} ({row['generation_s_per_entry']:.2f} s/entry)", flush=True)
    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {"runs": []}
    old["runs"] += results
    old["settings_last_run"] = vars(args)
    old["versions"] = package_versions()
    write_json(args.out, old)


if __name__ == "__main__":
    main()
