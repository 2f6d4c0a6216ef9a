"""Choose TemplateCSP's ranking weights by leave-one-out on the val splits (never on test).

For each sampled val entry (its own material_id hidden from the library) every (template, mapping) pair is scored
and grouped into structure types once; the types that reach the top 40 under any probe setting are built and
matched against the entry. Re-ranking those labelled types under a grid of weights then costs no matching, so the
grid is cheap. Duplicate removal is ignored here (it only changes k = 20 slightly). The collected pairs are re-scored
with the current substitution table, so a changed table is compared on the same labelled candidates.

    nice python bench/tune_template_weights.py --limit 300 [--collect /tmp/tune.pkl]
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # archived: the kept bench/ scripts it imports
from template_csp import RESULTS, HoldOutTemplateCSP  # noqa: I001  (sibling script)

from xtalforge.crystal import atomic_write_text
from xtalforge.data.protocol import load_split, sample_indices
from xtalforge.evaluation.matching import PairMatcher, reduce_structure
from xtalforge.templates import RankWeights, benchmark_library
from xtalforge.templates.chemistry import substitution_log_prob

PROBES = [RankWeights(stability=b, temperature=t) for b in (0.0, 5.0, 20.0) for t in (0.3, 1.0, 3.0)]
TOP = 40


def collect(bench: str, limit: int, seed: int) -> list[dict]:
    library = benchmark_library(bench, pooled=True)
    method = HoldOutTemplateCSP(library, pool_size=10**9)
    data = load_split(bench, "val")
    matcher = PairMatcher()
    rows = []
    for i in sample_indices(len(data), limit, seed):
        target = data[int(i)]
        method.held_out = str(data.ids[int(i)])
        pools = method._pools(target.numbers, 20)
        if not pools:
            rows.append({"bench": bench, "pools": None})
            continue
        prepared = matcher.prepare(target.to_structure())
        labelled: dict[int, bool] = {}
        for w in PROBES:
            types = method._structure_types(pools, w)
            for type_id in types.ranked[:TOP]:
                if int(type_id) in labelled:
                    continue
                k, j = types.origin[types.representative[type_id]]
                cand = method._build(pools[k], j, target.numbers)
                labelled[int(type_id)] = matcher.rms(reduce_structure(cand.to_structure()), prepared) is not None
        # keep the pairs of labelled types only (the rest never reached a top 40), each with its type's label
        types = method._structure_types(pools, PROBES[0])
        is_labelled = np.isin(types.type_of, list(labelled))
        label = np.array([labelled.get(int(t), False) for t in types.type_of])
        kept, labels = [], []
        for k, pool in enumerate(pools):
            rows_k = types.origin[:, 0] == k
            keep = np.nonzero(is_labelled[rows_k])[0]
            if len(keep):
                kept.append(pool.take(keep))
                labels.append(label[rows_k][keep])
        rows.append({"bench": bench, "pools": kept, "labels": np.concatenate(labels)})
    return rows


def evaluate(method: HoldOutTemplateCSP, rows: list[dict], w: RankWeights, ks=(1, 20)) -> dict[int, float]:
    hits = {k: 0 for k in ks}
    for r in rows:
        if r["pools"] is None:
            continue
        types = method._structure_types(r["pools"], w)
        good = np.unique(types.type_of[r["labels"]])
        if len(good) == 0:
            continue
        position = np.empty(len(types.ranked), np.int64)
        position[types.ranked] = np.arange(len(types.ranked))
        first = int(position[good].min())
        for k in ks:
            hits[k] += first < k
    return {k: 100.0 * hits[k] / len(rows) for k in ks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default="mp_20_biternary,mpts_52,perov_5,carbon_24")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--collect", type=Path, default=Path("/tmp/template_tune.pkl"))
    args = ap.parse_args()
    if args.collect.is_file():
        with open(args.collect, "rb") as fh:
            data = pickle.load(fh)
    else:
        data = {}
    for bench in args.benchmarks.split(","):
        if bench not in data:
            t = time.perf_counter()
            data[bench] = collect(bench, args.limit, args.seed)
            print(f"collected {bench}: {len(data[bench])} entries in {time.perf_counter() - t:.0f} s", flush=True)
            with open(args.collect, "wb") as fh:
                pickle.dump(data, fh)
    grid = [
        RankWeights(substitution=a, stability=b, temperature=t)
        for a, b, t in itertools.product((0.5, 1.0, 2.0), (0.0, 2.0, 5.0, 10.0, 20.0), (0.3, 0.5, 1.0, 2.0, 4.0))
    ]
    methods = {bench: HoldOutTemplateCSP(benchmark_library(bench, pooled=True)) for bench in data}
    # score with the current substitution table (the collected pairs keep their elements, not their scores)
    table = substitution_log_prob()
    for rows in data.values():
        for r in rows:
            for pool in r["pools"] or []:
                pool.substitution = table[pool.elements, pool.slots].sum(axis=-1)
    results = []
    for w in grid:
        row = {"weights": asdict(w)}
        for bench, rows in data.items():
            row[bench] = evaluate(methods[bench], rows, w)
        results.append(row)
    benches = list(data)
    # objective: mean over benchmarks of k=1 plus half of k=20
    for row in results:
        row["objective"] = float(np.mean([row[b][1] + 0.5 * row[b][20] for b in benches]))
    results.sort(key=lambda r: -r["objective"])
    for row in results[:15]:
        cells = " | ".join(f"{row[b][1]:.1f} / {row[b][20]:.1f}" for b in benches)
        print(f"| {row['weights']} | {cells} | {row['objective']:.2f} |")
    default = next(r for r in results if r["weights"] == asdict(replace(RankWeights())))
    print("default:", {b: default[b] for b in benches})
    atomic_write_text(RESULTS / "template_tuning.json", json.dumps({"limit": args.limit, "seed": args.seed,
                                                                   "results": results}, indent=1))


if __name__ == "__main__":
    main()
