"""Template CSP on the four benchmarks: match rate at k = 1 and 20, raw candidates (or CHGNet-relaxed).

Two modes:

* ``--split test`` (the report): library = ``training_set(bench, pooled)``, targets = the visible test split,
  scored by :func:`xtalforge.evaluation.evaluate_csp` (run folders under ``runs/template_csp/``).
* ``--split val`` (for tuning, leave-one-out): library = the same training set, targets = val entries, and each
  target's own ``material_id`` is hidden from the library while it is predicted; a small loop here matches with the
  evaluation's :class:`PairMatcher` (``evaluate_csp`` cannot hide a different entry per target). Ranking weights
  were chosen in this mode only (bench/tune_template_weights.py), so test numbers are not tuned on test.

Usage (the runs reported in bench/results/template_csp_test_*.json)::

    nice python bench/template_csp.py --split val --pooled yes --limit 150
    nice python bench/template_csp.py --split test --pooled both --limit 200 --workers 2 --no-dedupe
    nice python bench/template_csp.py --split test --subset template_free --benchmarks mp_20_biternary,mpts_52 \
        --pooled both --limit 200 --no-dedupe
    nice python bench/template_csp.py --split test --benchmarks mp_20_biternary --pooled yes --limit 200
    nice python bench/template_csp.py --split test --benchmarks mp_20_biternary --pooled yes --limit 20 \
        --relax chgnet --relax-top 2 --relax-steps 40 --no-dedupe

``--no-dedupe`` skips TemplateCSP's StructureMatcher duplicate check (the default on), which costs most of its
generation time and did not change k = 20 in leave-one-out on MP-20 val (87.3 with and without).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np

from xtalforge.crystal import atomic_write_text
from xtalforge.data.protocol import BENCHMARKS, check_no_leak, load_split, sample_indices, training_set
from xtalforge.evaluation.matching import PairMatcher, reduce_structure
from xtalforge.templates import RankWeights, TemplateCSP, anonymous_key, benchmark_library

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path(__file__).resolve().parent.parent / "runs" / "template_csp"
RANKERS = {"learned": "shipped", "hand": None}  # TemplateCSP(ranker=...) of the --ranker names (else a file path)


def ranker_arg(ranker: str) -> str | None:
    """TemplateCSP's ``ranker=`` for a ``--ranker`` value: a name of RANKERS or the path of a ranker file."""
    return RANKERS[ranker] if ranker in RANKERS else ranker


def settings_tag(method) -> str:
    """Run-folder name part: a hash of the method's settings (a retrained ranker or other library must not resume
    the results of the last one; ``evaluate_csp`` would refuse the folder)."""
    return hashlib.sha256(json.dumps(method.settings(), sort_keys=True, default=str).encode()).hexdigest()[:8]


class HoldOutTemplateCSP(TemplateCSP):
    """Leave-one-out validation: templates with the target's own ``material_id`` are hidden while it is predicted."""

    held_out: str = ""

    def _score_group(self, *args, **kwargs):
        pool = super()._score_group(*args, **kwargs)
        if pool is None or not self.held_out:
            return pool
        keep = self.library.ids[pool.template] != self.held_out
        return pool.take(keep) if keep.any() else None


def run_test(bench: str, pooled: bool, limit: int | None, seed: int, ks: list[int], relax: str,
             weights: RankWeights, workers: int, dedupe: bool = True, relax_kw: dict | None = None,
             subset: str = "all", ranker: str = "learned", aflow: bool = False) -> dict:
    """Test-split report through ``evaluate_csp``; returns a flat row for the summary table.

    ``subset="template_free"`` evaluates only the test rows whose anonymised formula has no library entry (a random
    sample of them has few or none). ``aflow`` adds the AFLOW structures to the library
    (:func:`xtalforge.data.protocol.aflow_structures`)."""
    from xtalforge.evaluation import evaluate_csp, markdown_table, template_free_mask

    t0 = time.perf_counter()
    library = benchmark_library(bench, pooled=pooled, aflow=aflow)
    t_library = time.perf_counter() - t0
    check_no_leak(list(library.ids), bench)
    method = TemplateCSP(library, weights=weights, relax=relax, dedupe=dedupe, ranker=ranker_arg(ranker),
                         **(relax_kw or {}))
    tag = relax if relax == "none" else f"{relax}-top{(relax_kw or {}).get('relax_top')}"
    tag += f"_{ranker if ranker in RANKERS else Path(ranker).stem}_{settings_tag(method)}"
    tag += "" if dedupe else "_nodedupe"
    tag += "" if subset == "all" else f"_{subset}"
    kind = f"{'pooled' if pooled else 'own'}{'+aflow' if aflow else ''}"
    out_dir = RUNS / f"{bench}_{kind}_{tag}_n{limit or 'all'}_s{seed}"
    test, train = load_split(bench, "test"), training_set(bench, pooled=pooled, aflow=aflow)
    if subset == "template_free":
        test = test.subset(np.nonzero(template_free_mask(test, train))[0])
    report = evaluate_csp(method, test, ks=ks, out_dir=out_dir, limit=limit, seed=seed,
                          workers=workers, library=train, progress=False)
    print(markdown_table(report), flush=True)
    res = report["results"]
    row = {
        "benchmark": bench,
        "split": "test",
        "pooled": pooled,
        "aflow": aflow,
        "n": report["data"]["entries_evaluated"],
        "library_entries": len(library),
        "library_seconds": t_library,
        "seconds_per_entry": report["timings"]["generation_s_per_entry"],
        "template_free": report["data"]["library"]["template_free_entries_in_test"],
        "template_free_evaluated": res.get("template_free", {}).get("entries"),
        "report": str(out_dir / "report.json"),
    }
    for k in ks:
        row[f"match@{k}"] = res["metrics"][str(k)]["match_rate"]
        row[f"rms@{k}"] = res["metrics"][str(k)]["rmse"]
        free = res.get("template_free", {}).get("metrics", {}).get(str(k), {})
        row[f"free_match@{k}"] = free.get("match_rate")
    return row


def run_val(bench: str, pooled: bool, limit: int | None, seed: int, ks: list[int], relax: str,
            weights: RankWeights, dedupe: bool = True, relax_kw: dict | None = None, ranker: str = "learned") -> dict:
    """Leave-one-out on the val split (for choosing weights)."""
    split = "val"
    t0 = time.perf_counter()
    library = benchmark_library(bench, pooled=pooled)
    t_library = time.perf_counter() - t0
    data = load_split(bench, split)
    idx = sample_indices(len(data), limit, seed)
    method = HoldOutTemplateCSP(library, weights=weights, relax=relax, dedupe=dedupe, ranker=ranker_arg(ranker),
                                **(relax_kw or {}))
    matcher = PairMatcher()
    n_max = max(ks)
    ranks, rms, free, seconds = [], [], [], []
    for i in idx:
        target = data[int(i)]
        method.held_out = str(data.ids[int(i)]) if split == "val" else ""
        t = time.perf_counter()
        cands = method.generate([target.numbers.tolist()], n_max, seed)[0]
        seconds.append(time.perf_counter() - t)
        prepared = matcher.prepare(target.to_structure())
        rank, dist = None, None
        for r, c in enumerate(cands):
            res = matcher.rms(reduce_structure(c.to_structure()), prepared)
            if res is not None:
                rank, dist = r, res[0]
                break
        ranks.append(rank)
        rms.append(dist)
        same_key = library.lookup(anonymous_key(target.numbers))
        free.append(not np.any(library.ids[same_key] != method.held_out))
    free_mask = np.asarray(free)
    report = {
        "benchmark": bench,
        "split": split,
        "pooled": pooled,
        "n": len(idx),
        "library_entries": len(library),
        "library_seconds": t_library,
        "seconds_per_entry": float(np.mean(seconds)),
        "template_free": int(free_mask.sum()),
    }
    for k in ks:
        hit = np.array([r is not None and r < k for r in ranks])
        dists = [d for d, r in zip(rms, ranks) if r is not None and r < k]
        report[f"match@{k}"] = float(100 * hit.mean())
        report[f"rms@{k}"] = float(np.mean(dists)) if dists else None
        report[f"free_match@{k}"] = float(100 * hit[free_mask].mean()) if free_mask.any() else None
    report["first_match_rank"] = [r if r is not None else -1 for r in ranks]
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--pooled", choices=["no", "yes", "both"], default="both")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ks", default="1,20")
    ap.add_argument("--relax", choices=["none", "chgnet"], default="none")
    ap.add_argument("--weights", default="{}", help="JSON overrides of RankWeights fields")
    ap.add_argument("--relax-top", type=int, default=None, help="relax only the best this many candidates")
    ap.add_argument("--relax-steps", type=int, default=200)
    ap.add_argument("--subset", choices=["all", "template_free"], default="all", help="test rows to evaluate")
    ap.add_argument("--no-dedupe", action="store_true", help="keep candidates that match a better one")
    ap.add_argument("--workers", type=int, default=1, help="matching processes (test split)")
    ap.add_argument("--ranker", default="learned",
                    help="learned (the shipped re-ranker, TemplateCSP's default), hand (the hand-made score alone) "
                         "or the path of a ranker file")
    ap.add_argument("--aflow", action="store_true", help="add the AFLOW structures to the library (test split)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    weights = RankWeights(**json.loads(args.weights))
    relax_kw = {"relax_top": args.relax_top, "relax_steps": args.relax_steps}
    if args.relax != "none":
        import torch

        torch.set_num_threads(1)  # the machine is shared; one CHGNet thread per run
    pooled_modes = {"no": [False], "yes": [True], "both": [False, True]}[args.pooled]
    rows, table = [], []
    for bench in args.benchmarks.split(","):
        for pooled in pooled_modes:
            if args.split == "test":
                r = run_test(bench, pooled, args.limit, args.seed, ks, args.relax, weights, args.workers,
                             not args.no_dedupe, relax_kw, args.subset, args.ranker, args.aflow)
            else:
                r = run_val(bench, pooled, args.limit, args.seed, ks, args.relax, weights, not args.no_dedupe,
                            relax_kw, args.ranker)
            r["ranker"] = args.ranker
            rows.append(r)
            cols = " | ".join(f"{r[f'match@{k}']:.1f}" for k in ks)
            free = " | ".join("-" if r[f"free_match@{k}"] is None else f"{r[f'free_match@{k}']:.1f}" for k in ks)
            line = (f"| {bench} | {args.split} | {pooled} | {r['n']} | {cols} | {r['template_free']}: {free} | "
                    f"{r['seconds_per_entry']:.2f} |")
            table.append(line)
            print(line, flush=True)
    result = {
        "settings": {**vars(args), "weights": asdict(weights), "tolerances": PairMatcher().tol.as_dict()},
        "versions": {p: version(p) for p in ("numpy", "pymatgen", "spglib", "chgnet", "torch")},
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "results": rows,
    }
    out = Path(args.out) if args.out else RESULTS / f"template_csp_{args.split}_{args.relax}.json"
    atomic_write_text(out, json.dumps(result, indent=1))
    header = " | ".join(f"k={k}" for k in ks)
    print(f"\n| benchmark | split | pooled | n | {header} | template-free n: {header} | s/entry |")
    print("| --- " * (6 + 2 * len(ks) - 2) + "|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
