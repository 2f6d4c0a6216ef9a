"""Throughput of CSP match evaluation: pairs per second on the local cores, and the extrapolated full-benchmark time.

Candidates are built from the true structures of a random sample of test entries, 20 per entry in four kinds
(interleaved over ranks) so that both matches and hard non-matches occur:

* ``perturbed``: the true structure with 1-3 % random strain and 0.01-0.05 fractional noise (mostly matches);
* ``shuffled``: the true lattice and positions with the atom types permuted (same composition, mostly no match);
* ``template``: another test entry with the same exact-count anonymous formula, elements substituted by count and
  the cell scaled to the target's volume (what a template method proposes; random positions if there is none);
* ``random``: the true lattice with uniformly random positions (every lattice mapping is tried: the worst case).

The matches are produced by :func:`xtalforge.evaluation.csp.match_candidates` with the fast engine; a subsample of
entries is re-matched with ``engine="pymatgen"`` (``StructureMatcher.get_rms_dist`` itself) to measure its speed
and the agreement of the two engines.

Usage::

    nice python bench/eval_throughput.py                    # 300 MP-20 bi/ternary entries x 20, 2 workers
    nice python bench/eval_throughput.py --entries 50 --reference-entries 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from xtalforge.composition import anonymous_formula
from xtalforge.crystal import Crystal
from xtalforge.data.protocol import load_split, sample_indices
from xtalforge.evaluation.csp import append_jsonl, candidate_record, match_candidates, read_jsonl, summarize_csp
from xtalforge.evaluation.report import command_line, package_versions, write_json

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("perturbed", "shuffled", "template", "random")
#: The project's target: this many entries x candidates, generation + matching, in 20 minutes on 2 cores.
TARGET_PAIRS = 6000 * 20


def build_candidates(test, rows: np.ndarray, n: int, seed: int) -> tuple[list[dict], list[str]]:
    """Candidate records (the candidates-file format) for ``rows``, and the kind of each rank."""
    rng = np.random.default_rng(seed)
    by_formula: dict[tuple, list[int]] = {}
    for i in range(len(test)):
        by_formula.setdefault(anonymous_formula(test.atoms_of(i).tolist()), []).append(i)
    kinds = [KINDS[rank % len(KINDS)] for rank in range(n)]
    records = []
    for row in rows:
        true = test[int(row)]
        others = [i for i in by_formula[anonymous_formula(true.numbers.tolist())] if i != row]
        cands = []
        for rank, kind in enumerate(kinds):
            cands.append(_make(kind, true, test, others, rng, rank))
        records.append({"index": int(row), "material_id": test.ids[int(row)], "num_atoms": true.num_atoms,
                        "seconds": 0.0, "candidates": [candidate_record(c) for c in cands]})
    return records, kinds


def _make(kind: str, true: Crystal, test, others: list[int], rng, rank: int) -> Crystal:
    if kind == "perturbed":
        level = 1 + (rank // len(KINDS)) % 3  # 1, 2, 3
        lattice = true.lattice @ (np.eye(3) + rng.normal(0, 0.01 * level, (3, 3)))
        return Crystal(lattice, true.frac_coords + rng.normal(0, 0.01 + 0.015 * (level - 1), true.frac_coords.shape),
                       true.numbers)
    if kind == "shuffled":
        return Crystal(true.lattice, true.frac_coords + rng.normal(0, 0.01, true.frac_coords.shape),
                       rng.permutation(true.numbers))
    if kind == "template" and others:
        other = test[int(rng.choice(others))]
        # substitute elements by abundance rank, then scale the cell to the target's volume
        mine = [z for z, _ in Counter(true.numbers.tolist()).most_common()]
        theirs = [z for z, _ in Counter(other.numbers.tolist()).most_common()]
        swap = dict(zip(theirs, mine))
        scale = (true.volume / other.volume) ** (1 / 3)
        return Crystal(other.lattice * scale, other.frac_coords, [swap[z] for z in other.numbers.tolist()])
    return Crystal(true.lattice, rng.uniform(size=true.frac_coords.shape), true.numbers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", default="mp_20_biternary")
    parser.add_argument("--entries", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference-entries", type=int, default=30, help="entries re-matched with pymatgen itself")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "eval_throughput.json"))
    args = parser.parse_args(argv)

    test = load_split(args.benchmark, "test")
    rows = sample_indices(len(test), args.entries, args.seed)
    records, kinds = build_candidates(test, rows, args.candidates, args.seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="xtalforge_eval_bench_") as tmp:
        tmp = Path(tmp)
        with open(tmp / "candidates.jsonl", "w") as fh:
            append_jsonl(fh, records)
        fast = match_candidates(test, tmp / "candidates.jsonl", tmp / "fast.jsonl", args.candidates,
                                workers=args.workers, timeout=args.timeout, progress=False)
        fast_records = {r["index"]: r for r in read_jsonl(tmp / "fast.jsonl")}
        summary = summarize_csp(tmp / "fast.jsonl", ks=(1, args.candidates))

        ref_rows = set(sample_indices(len(records), args.reference_entries, args.seed + 1).tolist())
        with open(tmp / "reference_candidates.jsonl", "w") as fh:
            append_jsonl(fh, [r for i, r in enumerate(records) if i in ref_rows])
        ref = match_candidates(test, tmp / "reference_candidates.jsonl", tmp / "pymatgen.jsonl", args.candidates,
                               workers=args.workers, timeout=args.timeout, engine="pymatgen", progress=False)
        ref_records = {r["index"]: r for r in read_jsonl(tmp / "pymatgen.jsonl")}
    load_after = os.getloadavg()

    # agreement of the engines, and match counts per candidate kind
    decisions = diffs = 0
    max_diff = 0.0
    for index, r in ref_records.items():
        for a, b in zip(fast_records[index]["rms"], r["rms"]):
            decisions += (a is None) != (b is None)
            if a is not None and b is not None:
                diffs += 1
                max_diff = max(max_diff, abs(a - b))
    per_kind = {k: {"pairs": 0, "matches": 0} for k in KINDS}
    for r in fast_records.values():
        for kind, status in zip(kinds, r["status"]):
            per_kind[kind]["pairs"] += 1
            per_kind[kind]["matches"] += status == "match"
    # CPU seconds of the matching children: robust to other jobs sharing the cores, unlike wall-clock rates
    cpu_fast = sum(r["cpu_seconds"] for r in fast_records.values()) / max(1, fast["pairs"])
    cpu_ref = sum(r["cpu_seconds"] for r in ref_records.values()) / max(1, ref["pairs"])
    # the fast engine's time on exactly the reference pairs, for a like-for-like speed-up
    cpu_fast_same = sum(fast_records[i]["cpu_seconds"] for i in ref_records) / max(1, ref["pairs"])
    result = {
        "settings": {"benchmark": args.benchmark, "entries": len(records), "candidates_per_entry": args.candidates,
                     "workers": args.workers, "timeout_s": args.timeout, "seed": args.seed,
                     "reference_entries": len(ref_records), "candidate_kinds_by_rank": kinds,
                     "tolerance": {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}, "command": command_line()},
        "data": {"source": test.source, "sha256": test.sha256, "rows_in_split": len(test),
                 "atoms_per_entry_mean": float(np.mean([r["num_atoms"] for r in records]))},
        "fast": {"pairs": fast["pairs"], "wall_s": fast["wall_s"], "pairs_per_s": fast["pairs_per_s"],
                 "cpu_ms_per_pair": 1e3 * cpu_fast, "timed_out_pairs": summary["timed_out_pairs"],
                 "match_rate_k1": summary["metrics"]["1"]["match_rate"],
                 f"match_rate_k{args.candidates}": summary["metrics"][str(args.candidates)]["match_rate"],
                 "matches_by_kind": per_kind},
        "pymatgen": {"pairs": ref["pairs"], "wall_s": ref["wall_s"], "pairs_per_s": ref["pairs_per_s"],
                     "cpu_ms_per_pair": 1e3 * cpu_ref, "fast_cpu_ms_per_pair_same_pairs": 1e3 * cpu_fast_same},
        "agreement": {"pairs_compared": ref["pairs"], "decision_mismatches": decisions, "rms_compared": diffs,
                      "max_abs_rms_difference": max_diff},
        "extrapolation": {
            "target_pairs": TARGET_PAIRS,
            "fast_minutes_at_measured_rate": TARGET_PAIRS / fast["pairs_per_s"] / 60,
            "fast_minutes_from_cpu_time": TARGET_PAIRS * cpu_fast / args.workers / 60,
            "pymatgen_minutes_at_measured_rate": TARGET_PAIRS / ref["pairs_per_s"] / 60,
            "pymatgen_minutes_from_cpu_time": TARGET_PAIRS * cpu_ref / args.workers / 60,
            "generation_minutes_left_of_20_from_cpu_time": 20 - TARGET_PAIRS * cpu_fast / args.workers / 60,
            "note": "from_cpu_time = CPU seconds per pair x pairs / workers: the time on otherwise idle cores",
        },
        "machine": {"load_average_before": load_before, "load_average_after": load_after,
                    "note": "2 shared cores; other jobs were running, so wall-clock rates are lower bounds"},
        "versions": package_versions(),
    }
    write_json(args.out, result)

    e = result["extrapolation"]
    print(f"Match throughput, {args.benchmark} test, {len(records)} entries x {args.candidates} candidates, "
          f"{args.workers} workers (load average {load_before[0]:.1f} -> {load_after[0]:.1f})\n")
    print("| engine | pairs | wall s | pairs/s (measured) | CPU ms/pair | 120k pairs at measured rate | "
          f"120k pairs from CPU time / {args.workers} cores |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| fast (default) | {fast['pairs']} | {fast['wall_s']:.1f} | {fast['pairs_per_s']:.1f} | "
          f"{1e3 * cpu_fast:.1f} | {e['fast_minutes_at_measured_rate']:.1f} min | "
          f"{e['fast_minutes_from_cpu_time']:.1f} min |")
    print(f"| pymatgen get_rms_dist | {ref['pairs']} | {ref['wall_s']:.1f} | {ref['pairs_per_s']:.1f} | "
          f"{1e3 * cpu_ref:.1f} | {e['pymatgen_minutes_at_measured_rate']:.1f} min | "
          f"{e['pymatgen_minutes_from_cpu_time']:.1f} min |")
    print(f"\nsame {ref['pairs']} pairs: fast {1e3 * cpu_fast_same:.1f} CPU ms/pair vs pymatgen {1e3 * cpu_ref:.1f}; "
          f"decision mismatches {decisions}, max |rms difference| {max_diff:.1e} over {diffs} matched pairs")
    print("matches by candidate kind: " + ", ".join(f"{k} {v['matches']}/{v['pairs']}" for k, v in per_kind.items()))
    print(f"timed-out pairs: {summary['timed_out_pairs']}; match rate k=1 {summary['metrics']['1']['match_rate']:.1f}%,"
          f" k={args.candidates} {summary['metrics'][str(args.candidates)]['match_rate']:.1f}%")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
