"""Re-decorated templates on the template-free test entries: alone, and inside `auto` (what `predict` runs).

The template-free entries of a benchmark's visible test split are those whose exact-count anonymised formula is
absent from the pooled + AFLOW library that ``xtalforge evaluate`` uses for the benchmark by default. Each ``--methods``
item is evaluated on them with the evaluation harness (StructureMatcher stol 0.5 / ltol 0.3 / angle 10, raw
candidates):

* ``redecorate``: :class:`xtalforge.templates.redecorate.RedecoratedTemplates` alone (``redecorate-N``: with at most
  N candidates evaluated by CHGNet instead of 1,000);
* ``auto``: the default pipeline, which for these entries takes template candidates, re-decorated templates and
  DAO-G samples in turn;
* ``auto-without``: the same pipeline without re-decorated templates (template candidates alternating with DAO-G
  samples, the pipeline before them).

Entries outside the subset are untouched by re-decoration (``auto`` only re-decorates template-free targets), so the
whole-split effect is this subset's difference times its share. Runs resume from ``runs/redecorate/``.

``--split val-loo`` asks which source should take the first slot without looking at test data: val entries whose
exact-count anonymised formula has at most ``--max-siblings`` library structures are made template-free by removing
those structures from the library (for that entry only), then ``template`` and ``redecorate`` are evaluated on them
and their candidate lists interleaved both ways. DAO-G is left out there: it was trained on these val entries.

``--split test-short`` measures what filling short template lists with re-decorated templates adds: the test
entries that have a template but fewer than 20 template candidates, none of them matching (the only entries where
the empty slots can change k=20; k=1 stays a template candidate), evaluated with ``auto-no-short`` (`auto` before:
DAO-G samples fill those slots) and ``auto-short`` (`auto` now: re-decorated templates and DAO-G samples in turn).

    nice python bench/redecorate.py --bench mp_20_biternary --methods redecorate,auto,auto-without
    nice python bench/redecorate.py --bench mpts_52 --limit 40 --methods auto,auto-without
    nice python bench/redecorate.py --bench mp_20_biternary --split val-loo --methods template,redecorate
    nice python bench/redecorate.py --bench mp_20_biternary --split test-short --methods auto-no-short,auto-short
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from xtalforge.crystal import Crystal
from xtalforge.data.protocol import BENCHMARKS, load_split, training_set
from xtalforge.evaluation.csp import evaluate_csp, read_jsonl, template_free_mask
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.methods import CSPMethod, get_method
from xtalforge.pipeline import in_turn
from xtalforge.templates.library import TemplateLibrary, anonymous_key

RESULTS = Path(__file__).resolve().parent / "results" / "redecorate.json"
RUNS = Path(__file__).resolve().parent.parent / "runs" / "redecorate"


class WithoutTargetKey(CSPMethod):
    """``factory(library)`` with, for each target, every library structure of the target's exact-count anonymised
    formula removed first: a val entry made as template-free as a template-free test entry is."""

    def __init__(self, factory, library: TemplateLibrary) -> None:
        self.factory, self.library = factory, library
        inner = factory(library)
        self.name, self.max_atoms, self._settings = inner.name, inner.max_atoms, inner.settings()

    def settings(self) -> dict:
        return {**self._settings, "library": "less the target's exact-count anonymised formula"}

    def generate(self, targets, n: int, seed: int = 0) -> list[list[Crystal]]:
        out = []
        for cell in targets:
            keep = np.setdiff1d(np.arange(len(self.library)), self.library.lookup(anonymous_key(np.asarray(cell))))
            out += self.factory(self.library.subset(keep)).generate([cell], n, seed)
        return out


def make_method(name: str, library):
    if name.endswith("-own-order"):  # the pipeline with its generated slots in the samples' own order (before)
        return _make(name.removesuffix("-own-order"), library, generator_pool=1)
    return _make(name, library)


def _make(name: str, library, **auto_kwargs):
    if name == "template":
        return get_method("template", library=library)
    if name == "redecorate":
        return get_method("redecorate", library=library)
    if name.startswith("redecorate-"):  # redecorate-N: at most N candidates evaluated by CHGNet (default 1000)
        return get_method("redecorate", library=library, max_candidates=int(name.split("-")[1]))
    if name == "auto":
        return get_method("auto", library=library, **auto_kwargs)
    if name == "auto-without":
        return get_method("auto", library=library, redecorate_candidates=0, **auto_kwargs)
    if name == "auto-short":  # what `auto` does by default since 2026-12-02
        return get_method("auto", library=library, redecorate_short_lists=True, **auto_kwargs)
    if name == "auto-no-short":  # `auto` before: re-decorated templates only for template-free targets
        return get_method("auto", library=library, redecorate_short_lists=False, **auto_kwargs)
    raise SystemExit(f"unknown method {name}")


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"runs": []}


def interleaved(runs: dict[str, Path], first: str, second: str, ks: list[int]) -> dict:
    """Match rates of the candidate lists of ``first`` and ``second`` taken in turn (``first`` leading), from the
    runs' ``matches.jsonl`` (each source keeps half of max(ks) slots; a short source's slots go to the other)."""
    k_max = max(ks)
    per = {name: {r["index"]: r for r in read_jsonl(runs[name] / "matches.jsonl")} for name in (first, second)}
    common = sorted(set(per[first]) & set(per[second]))
    hits = {k: 0 for k in ks}
    for index in common:
        a, b = (per[name][index]["rms"] for name in (first, second))
        a, b = a[: max(k_max - k_max // 2, k_max - len(b))], b[: max(k_max // 2, k_max - len(a))]
        merged = in_turn(a, b)
        for k in ks:
            hits[k] += any(x is not None for x in merged[:k])
    return {"entries": len(common), **{str(k): 100.0 * hits[k] / max(1, len(common)) for k in ks}}


def short_unmatched_rows(test, library: TemplateLibrary, workers: int) -> np.ndarray:
    """Rows of ``test`` with a template whose template list is shorter than 20 and matches nothing: the only
    entries where filling the empty slots differently can change k=20 (k=1 is a template candidate's)."""
    template = get_method("template", library=library)
    cells = [test.atoms_of(i).tolist() for i in range(len(test))]
    short = np.array([template.has_template(c) and len(row) < 20 for c, row in
                      zip(cells, template.generate(cells, 20))])
    rows = np.nonzero(short)[0]
    report = evaluate_csp(template, test.subset(rows), ks=[20], out_dir=RUNS / f"{Path(test.source).parent.name}"
                          "_short_lists_template", workers=workers, chunk=64)
    matched = {r["index"] for r in read_jsonl(report["files"]["matches"]) if any(x is not None for x in r["rms"])}
    return np.array([row for j, row in enumerate(rows) if j not in matched], dtype=np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", default="mp_20_biternary", choices=sorted(BENCHMARKS))
    ap.add_argument("--split", default="test", choices=["test", "val-loo", "test-short"])
    ap.add_argument("--max-siblings", type=int, default=2,
                    help="val-loo: val entries whose anonymised formula has at most this many library structures")
    ap.add_argument("--min-siblings", type=int, default=0, help="val-loo: ... and more than this many")
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
    if args.split == "test":
        data = load_split(args.bench, BENCHMARKS[args.bench].test_split)
        rows = np.nonzero(template_free_mask(data, training_set(args.bench, pooled=True, aflow=True)))[0]
        label, tag = "template_free (pooled + AFLOW library)", ""
    elif args.split == "test-short":
        data = load_split(args.bench, BENCHMARKS[args.bench].test_split)
        rows = short_unmatched_rows(data, library, args.workers)
        label, tag = "test, a template but fewer than 20 template candidates, none matching", "_short"
    else:
        data = load_split(args.bench, "val")
        siblings = np.array([len(library.lookup(anonymous_key(data.atoms_of(i)))) for i in range(len(data))])
        rows = np.nonzero((siblings > args.min_siblings) & (siblings <= args.max_siblings))[0]
        label = (f"val, formula with {args.min_siblings + 1}-{args.max_siblings} library structures, those removed "
                 "per entry")
        tag = f"_valloo{args.max_siblings}" + (f"min{args.min_siblings}" if args.min_siblings else "")
    subset = data.subset(rows)
    ks = [int(k) for k in args.ks.split(",")]
    out = Path(args.out)
    runs = {}
    for name in args.methods.split(","):
        method = make_method(name, library)
        if args.split == "val-loo":
            method = WithoutTargetKey(lambda lib, name=name: make_method(name, lib), library)
        run = runs[name] = RUNS / f"{args.bench}{tag}_{name}_n{args.limit or 'all'}_s{args.seed}"
        t0, c0 = time.perf_counter(), time.process_time()
        report = evaluate_csp(method, subset, ks=ks, out_dir=run, limit=args.limit, seed=args.seed,
                              workers=args.workers, chunk=2)
        metrics = report["results"]["metrics"]
        row = {"bench": args.bench, "split": args.split, "method": name, "subset": label,
               "subset_entries": int(len(rows)), "split_entries": int(len(data)),
               "entries_evaluated": int(args.limit or len(rows)), "metrics": metrics,
               "wall_s_this_run": time.perf_counter() - t0, "cpu_s_this_run": time.process_time() - c0,
               "timings": report["timings"], "settings": {**vars(args), "method_settings": method.settings()},
               "run": str(run.relative_to(RUNS.parent.parent)), "versions": package_versions()}
        results = load_results(out)  # afresh: another run of this script may have written meanwhile
        results["runs"] = [r for r in results["runs"] if (r["bench"], r.get("split", "test"), r["method"],
                                                          r["entries_evaluated"], r["settings"]["seed"]) !=
                           (args.bench, args.split, name, row["entries_evaluated"], args.seed)] + [row]
        write_json(out, results)
        print(f"| {args.bench} {args.split} ({row['entries_evaluated']} of {len(rows)}) | {name} | " +
              " | ".join(f"k={k}: {metrics[str(k)]['match_rate']:.1f}" for k in ks) + " |", flush=True)
    if {"template", "redecorate"} <= set(runs):
        results = load_results(out)
        for first, second in (("template", "redecorate"), ("redecorate", "template")):
            merged = interleaved(runs, first, second, ks)
            results.setdefault("interleaved", {})[f"{args.bench}{tag}_{first}_first_n{args.limit or 'all'}"] = merged
            print(f"| {args.bench} {args.split} | {first} first, {second} in turn | " +
                  " | ".join(f"k={k}: {merged[str(k)]:.1f}" for k in ks) + " |", flush=True)
        write_json(out, results)


if __name__ == "__main__":
    main()
