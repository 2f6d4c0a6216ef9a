"""CSP with the symmetry method (Wyckoff flow) on the benchmarks: given the true symmetry, conditioned on the test
rows' own labels, and with no group given (library symmetry, proposed symmetry, or both).

    python bench/symmetry_csp.py --limit 200 --seed 1 --out bench/results/symmetry_csp.json
    python bench/symmetry_csp.py --runs given:mp_20_biternary,library:mpts_52 --limit 100

Each run is an ``evaluate_csp`` folder under ``--work`` (resumable: rerun the same command). Match = StructureMatcher
``get_rms_dist`` is not None at stol 0.5, ltol 0.3, angle_tol 10 (the evaluator's matcher). Rows: the same
reproducible random sample (``--limit``, ``--seed``) for every run of a benchmark. Candidates are ranked by
``--rank-by`` over a pool of ``--pool`` samples (``score`` keeps the draw order: k=1 is one sample, the DiffCSP++
convention). MPTS-52 also reports its cells of more than 20 atoms, and library runs the template-free subset.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import xtalforge
from xtalforge.data import load_split, training_set
from xtalforge.evaluation import evaluate_csp
from xtalforge.evaluation.csp import summarize_csp
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.prediction import predictor

DEFAULT_RUNS = ("given:mp_20_biternary,labels:mp_20_biternary,given:mpts_52,given:perov_5,given:carbon_24,"
                "library:mpts_52,proposer:mpts_52,both:mpts_52")
MODES = {
    "given": "true space group and Wyckoff letters of each test row",
    "labels": "true symmetry, conditioned on the row's formation energy and band gap (Uni-MDM's setting)",
    "library": "no symmetry given: groups of the library structures of the same anonymised formula",
    "proposer": "no symmetry given: the symmetry proposer's most probable answers",
    "both": "no symmetry given: the library's groups first, then the proposer's",
}


def run_one(mode: str, data: str, args) -> dict:
    test = load_split(data, "test")
    library = training_set(data, pooled=True, aflow=True)  # for the template-free subset of every run
    tag = ""
    if args.subset == "template_free":  # draw the rows among the template-free ones only
        from xtalforge.evaluation.csp import template_free_mask

        test, tag = test.subset(np.flatnonzero(template_free_mask(test, library))), "_tf"
    out = Path(args.work) / f"{data}{tag}_{mode}_n{args.limit}_s{args.seed}_{args.rank_by}{args.pool}"
    kwargs = {"weights": args.weights, "steps": args.steps}
    if mode == "labels":
        kwargs["structure_properties"] = True
    if mode in ("library", "proposer", "both"):
        from xtalforge.templates.library import benchmark_library

        kwargs["source"] = mode
        if mode != "proposer":
            kwargs["library"] = benchmark_library(data, pooled=True, aflow=True)
    method = predictor("symmetry", n=20, rank_by=args.rank_by, pool=args.pool, **kwargs)
    start = time.perf_counter()
    report = evaluate_csp(method, test, ks=(1, 20), out_dir=out, limit=args.limit, seed=args.seed,
                          workers=args.workers, library=library, given_symmetry=mode in ("given", "labels"))
    result = {"mode": mode, "what": MODES[mode], "data": data + tag, "folder": str(out), "subset": args.subset,
              "rank_by": args.rank_by, "pool": args.pool, "results": report["results"],
              "counts": report["counts"], "timings": report["timings"], "settings": report["settings"],
              "wall_s_this_call": time.perf_counter() - start}
    if data == "mpts_52":  # cells of more than 20 atoms
        big = np.flatnonzero(test.num_atoms > 20)
        sub = summarize_csp(out / "matches.jsonl", (1, 20), subset_mask=set(big.tolist()), subset_name="gt20")
        result["gt20"] = sub["gt20"]
    return result


def table(results: list[dict]) -> str:
    """Markdown: match rate at k=1 / k=20 (%), RMSE at k=1, and the > 20 atom and template-free subsets."""
    def rates(block: dict | None) -> str:
        if not block or not block["entries"]:
            return "- | -"
        m = block["metrics"]
        return f"{m['1']['match_rate']:.1f} ({block['entries']}) | {m['20']['match_rate']:.1f}"

    lines = ["| data | mode | entries | k=1 | k=20 | RMSE k=1 | > 20 atoms k=1 (n) | k=20 | template-free k=1 (n) "
             "| k=20 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["results"]["metrics"]
        rmse = m["1"]["rmse"]
        mode = r["mode"] if r.get("rank_by", "score") == "score" else f"{r['mode']}, {r['rank_by']} of {r['pool']}"
        lines.append(f"| {r['data']} | {mode} | {m['1']['entries']} | {m['1']['match_rate']:.1f} | "
                     f"{m['20']['match_rate']:.1f} | {'-' if rmse is None else f'{rmse:.4f}'} | "
                     f"{rates(r.get('gt20'))} | "
                     f"{rates(r['results'].get('template_free'))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated MODE:BENCHMARK (modes: "
                        f"{', '.join(MODES)})")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--subset", default="all", choices=["all", "template_free"],
                        help="rows drawn from the whole test split or its template-free rows only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", default="mp", help="Wyckoff flow weights (shipped name or file)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the weights')")
    parser.add_argument("--rank-by", default="score", help="score (draw order) or consensus")
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/symmetry_csp")
    parser.add_argument("--out", default="bench/results/symmetry_csp.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for item in args.runs.split(","):
        mode, data = item.split(":")
        results.append(run_one(mode, data, args))
        print(table(results[-1:]), flush=True)
    print(table(results))
    doc = {"benchmark": "symmetry_csp", "settings": vars(args), "results": results, "table": table(results),
           "match": "StructureMatcher get_rms_dist is not None, stol 0.5 ltol 0.3 angle_tol 10, unrelaxed",
           "versions": {**package_versions(), "xtalforge": xtalforge.__version__}, "machine": platform.platform()}
    out = Path(args.out)
    if out.is_file():  # keep the runs of other invocations, replace those run now
        old = json.loads(out.read_text())
        key = lambda r: (r["mode"], r["data"], r.get("rank_by", "score"))  # noqa: E731
        keep = [r for r in old.get("results", []) if key(r) not in {key(r) for r in results}]
        doc["results"] = keep + results
        doc["table"] = table(doc["results"])
    write_json(out, doc)


if __name__ == "__main__":
    main()
