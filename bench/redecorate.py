"""Re-decorated templates on the template-free test entries: alone, and inside `auto` (what `predict` runs).

The template-free entries of a benchmark's visible test split are those whose exact-count anonymised formula is
absent from the pooled + AFLOW library that ``xtalforge evaluate`` uses for the benchmark by default. Each ``--methods``
item is evaluated on them with the evaluation harness (StructureMatcher stol 0.5 / ltol 0.3 / angle 10, raw
candidates):

* ``redecorate``: :class:`xtalforge.templates.redecorate.RedecoratedTemplates` alone;
* ``auto``: the default pipeline, which for these entries takes template candidates, re-decorated templates and
  DAO-G samples in turn;
* ``auto-without``: the same pipeline without re-decorated templates (template candidates alternating with DAO-G
  samples, the pipeline before them).

Entries outside the subset are untouched by re-decoration (``auto`` only re-decorates template-free targets), so the
whole-split effect is this subset's difference times its share. Runs resume from ``runs/redecorate/``.

    nice python bench/redecorate.py --bench mp_20_biternary --methods redecorate,auto,auto-without
    nice python bench/redecorate.py --bench mpts_52 --limit 40 --methods auto,auto-without
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from xtalforge.data.protocol import BENCHMARKS, load_split, training_set
from xtalforge.evaluation.csp import evaluate_csp, template_free_mask
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.methods import get_method

RESULTS = Path(__file__).resolve().parent / "results" / "redecorate.json"
RUNS = Path(__file__).resolve().parent.parent / "runs" / "redecorate"


def make_method(name: str, library):
    if name == "redecorate":
        return get_method("redecorate", library=library)
    if name == "auto":
        return get_method("auto", library=library)
    if name == "auto-without":
        return get_method("auto", library=library, redecorate_candidates=0)
    raise SystemExit(f"unknown method {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", default="mp_20_biternary", choices=sorted(BENCHMARKS))
    ap.add_argument("--methods", default="redecorate,auto,auto-without")
    ap.add_argument("--limit", type=int, default=None, help="a reproducible random sample of the subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ks", default="1,20")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="matching processes")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from xtalforge.templates import benchmark_library

    # pooled val splits + AFLOW structures less every row whose material_id is in this benchmark's test split (the
    # shipped library keeps those rows: it serves every benchmark), as `xtalforge evaluate` builds it
    library = benchmark_library(args.bench, pooled=True, aflow=True)
    test = load_split(args.bench, BENCHMARKS[args.bench].test_split)
    rows = np.nonzero(template_free_mask(test, training_set(args.bench, pooled=True, aflow=True)))[0]
    subset = test.subset(rows)
    ks = [int(k) for k in args.ks.split(",")]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    for name in args.methods.split(","):
        method = make_method(name, library)
        run = RUNS / f"{args.bench}_{name}_n{args.limit or 'all'}_s{args.seed}"
        t0, c0 = time.perf_counter(), time.process_time()
        report = evaluate_csp(method, subset, ks=ks, out_dir=run, limit=args.limit, seed=args.seed,
                              workers=args.workers, chunk=2)
        metrics = report["results"]["metrics"]
        row = {"bench": args.bench, "method": name, "subset": "template_free (pooled + AFLOW library)",
               "subset_entries": int(len(rows)), "split_entries": int(len(test)),
               "entries_evaluated": int(args.limit or len(rows)), "metrics": metrics,
               "wall_s_this_run": time.perf_counter() - t0, "cpu_s_this_run": time.process_time() - c0,
               "timings": report["timings"], "settings": {**vars(args), "method_settings": method.settings()},
               "run": str(run.relative_to(RUNS.parent.parent)), "versions": package_versions()}
        results["runs"] = [r for r in results["runs"] if (r["bench"], r["method"], r["entries_evaluated"],
                                                          r["settings"]["seed"]) !=
                           (args.bench, name, row["entries_evaluated"], args.seed)] + [row]
        write_json(out, results)
        print(f"| {args.bench} template-free ({row['entries_evaluated']} of {len(rows)}) | {name} | " +
              " | ".join(f"k={k}: {metrics[str(k)]['match_rate']:.1f}" for k in ks) + " |", flush=True)


if __name__ == "__main__":
    main()
