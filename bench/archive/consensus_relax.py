"""Consensus, then CHGNet relaxation: does relaxing the pool's few most agreed-on structures and choosing among them
by relaxed energy beat the consensus leader at k=1?

``predict --method dao-g`` ranks a pool of DAO-G samples by consensus (:func:`xtalforge.ranking.consensus_order`).
The right structure is often among the first few distinct structures of that order without being the first (MP-20:
leader ~51%, any of the first 3 ~63%), and CHGNet's *static* energy of the raw samples is a poor judge between them
(choosing the lowest of the first 3 by it: ~38%). Here the first ``--top`` leaders (distinct structures, in
consensus order) of every pool are relaxed with CHGNet (``--steps`` FIRE steps, atoms + cell, fmax 0.1) and each
relaxed structure is matched to the true one. Policies scored on those records:

* ``leader``: the consensus leader as sampled (what ships), and ``leader_relaxed``: the same, relaxed;
* ``lowest_relaxed_of_K``: of the first K leaders, the one with the lowest relaxed energy (relaxed structure);
* ``votes_vs_energy``: of the first K leaders, the one minimising -votes + beta * (E_relaxed - E_min, eV/atom).

The variant with the best rank-1 on the ``--tune`` pool is chosen there (grid order breaks ties: fewer relaxations,
smaller beta) and scored on each ``--report`` pool beside the leader. Pools are ``bench/ranking.py --pool 60`` runs,
given as ``<dao-g_static.jsonl>:<samples' candidates_test_index.jsonl>``; the per-entry relaxations go next to the
static file (``consensus_relax_top<K>_steps<S>.jsonl``, resumable: rerun to continue; ``--relax-only`` skips the
summary so two pools can relax in two processes, and ``--part I/N`` relaxes every N-th row of each pool, so one pool
relaxes in N processes, each into its own ``.partIofN`` file).

Results: ``bench/results/consensus_relax.json`` (``--top 3``, 2026-12-03: 44 MP-20 report rows, 42 MPTS-52 small
cells; no policy beat the leader) and ``consensus_relax_leader.json`` (``--top 1``, 2026-12-04: the leader relaxed on
the 200 report and 200 tune rows, 49.5 -> 49.0 and 52.5 -> 51.0 at k=1, median RMSE of the entries matched both ways
0.152 -> 0.033 and 0.189 -> 0.069: relaxing refines the geometry and does not change which structures are found).

Usage::

    python bench/consensus_relax.py --bench mp_20_biternary --tune <static>:<candidates> --report <static>:<cands>
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # archived: the kept bench/ scripts it imports
from ranking import consensus_matches, distinct_leaders, match  # noqa: I001  (sibling script)
from tqdm import tqdm

from xtalforge.crystal import Crystal
from xtalforge.data.protocol import load_split
from xtalforge.evaluation.csp import _resume, append_jsonl, read_jsonl
from xtalforge.evaluation.matching import MatchTolerance
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.ranking import chgnet_relaxed_energy, consensus_order

RESULTS = Path(__file__).resolve().parents[1] / "results" / "consensus_relax.json"
BETAS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, np.inf)  # votes per eV/atom; 0: the leader (votes only)


def relax_entry(test, rec: dict, samples: list[dict], top: int, steps: int, tol: MatchTolerance,
                threads: int) -> dict:
    """Relax the first ``top`` consensus leaders of one pool and match them (raw and relaxed) to the truth."""
    matches = consensus_matches(rec)
    energy = np.array([np.nan if e is None else e for e in rec["chgnet"]], dtype=np.float64)
    heads = distinct_leaders(matches, consensus_order(matches, energy))[:top]
    crystals = [Crystal(np.array(samples[j]["lattice"]), np.array(samples[j]["frac"]),
                        np.array(samples[j]["numbers"])) for j in heads]
    t = time.perf_counter()
    relaxed, relaxed_energy = chgnet_relaxed_energy(crystals, steps=steps, threads=threads)
    seconds = time.perf_counter() - t
    return {"index": rec["index"], "material_id": rec["material_id"], "leaders": heads.tolist(),
            "votes": matches[heads].sum(axis=1).tolist(),
            "raw_hit": [rec["rms"][j] is not None for j in heads],
            "relaxed_rms": match(test, rec["index"], relaxed, tol),
            "relaxed_energy": [float(e) if np.isfinite(e) else None for e in relaxed_energy],
            "relax_steps": [None if c is None else c.properties.get("relax_steps") for c in relaxed],
            "seconds_relax": seconds}


def records_file(spec: str, top: int, steps: int, part: tuple[int, int] | None = None) -> Path:
    """The per-entry relaxation records of one pool (of one part of it, ``(i, n)``, when relaxed in parts)."""
    tag = "" if part is None else f".part{part[0]}of{part[1]}"
    return Path(spec.split(":")[0]).with_name(f"consensus_relax_top{top}_steps{steps}{tag}.jsonl")


def read_records(spec: str, top: int, steps: int) -> list[dict]:
    """Every relaxed entry of one pool, from the whole-pool file and any part files, in row order."""
    base = records_file(spec, top, steps)
    by_index = {r["index"]: r for path in [base, *sorted(base.parent.glob(f"{base.stem}.part*of*.jsonl"))]
                for r in read_jsonl(path)}
    return [by_index[i] for i in sorted(by_index)]


def relax_pool(spec: str, bench: str, top: int, steps: int, threads: int,
               part: tuple[int, int] | None = None) -> None:
    """Relax every not yet relaxed entry of one pool (with ``part=(i, n)``: of its rows i, i + n, ...)."""
    static, candidates = (Path(p) for p in spec.split(":"))
    out = records_file(spec, top, steps, part)
    done = _resume(out) | {r["index"] for r in read_records(spec, top, steps)}
    todo = [rec for pos, rec in enumerate(read_jsonl(static))
            if rec["index"] not in done and (part is None or pos % part[1] == part[0])]
    if not todo:
        return
    wanted = {rec["index"] for rec in todo}
    samples = {r["index"]: r["candidates"] for r in read_jsonl(candidates) if r["index"] in wanted}
    test, tol = load_split(bench, "test"), MatchTolerance()
    with open(out, "a") as fh:
        for rec in tqdm(todo, desc=f"relax {static.parent.name[:40]}"):
            append_jsonl(fh, [relax_entry(test, rec, samples[rec["index"]], top, steps, tol, threads)])


def choose(rec: dict, k: int, beta: float) -> int:
    """Position (among the first ``k`` leaders) a votes-vs-relaxed-energy policy picks; beta 0: the leader."""
    k = min(k, len(rec["leaders"]))
    e = np.array([np.inf if x is None else x for x in rec["relaxed_energy"][:k]])
    votes = np.array(rec["votes"][:k], dtype=np.float64)
    if beta == 0.0 or not np.isfinite(e).any():
        return 0
    excess = np.where(np.isfinite(e), e - e[np.isfinite(e)].min(), 1e3)
    if beta == np.inf:
        return int(np.lexsort((-votes, excess))[0])
    return int(np.lexsort((excess, -votes + beta * excess))[0])  # stable on ties: the earlier leader


def rates(records: list[dict], k: int, beta: float) -> dict:
    """Rank-1 (%) of one policy: its pick as sampled and relaxed."""
    picks = [choose(r, k, beta) for r in records]
    return {"rank1_relaxed": 100.0 * float(np.mean([r["relaxed_rms"][p] is not None for r, p in zip(records, picks)])),
            "rank1_raw": 100.0 * float(np.mean([r["raw_hit"][p] for r, p in zip(records, picks)]))}


def summary(records: list[dict], top: int) -> dict:
    """Leader as sampled and relaxed (with the entries relaxing gains / loses), any of the first k leaders, cost."""
    raw = np.array([r["raw_hit"][0] for r in records], dtype=bool)
    relaxed = np.array([r["relaxed_rms"][0] is not None for r in records], dtype=bool)
    return {"entries": len(records), "leader": 100.0 * float(raw.mean()),
            "leader_relaxed": 100.0 * float(relaxed.mean()),
            "leader_relaxed_gained": int((relaxed & ~raw).sum()), "leader_relaxed_lost": int((raw & ~relaxed).sum()),
            "leader_relax_steps_mean": float(np.mean([r["relax_steps"][0] or 0 for r in records])),
            **{f"any_of_first_{k}": 100.0 * float(np.mean([any(r["raw_hit"][:k]) for r in records]))
               for k in range(2, top + 1)},
            "relax_s_per_entry": float(np.mean([r["seconds_relax"] for r in records]))}


def leader_rmse(records: list[dict], spec: str) -> dict:
    """RMSE (StructureMatcher, normalised) of the consensus leader as sampled and relaxed, on the entries it matches
    both ways: does relaxing move the right structures closer to the truth?"""
    raw = {r["index"]: r["rms"] for r in read_jsonl(spec.split(":")[0])}
    pairs = np.array([(raw[r["index"]][r["leaders"][0]], r["relaxed_rms"][0]) for r in records
                      if r["raw_hit"][0] and r["relaxed_rms"][0] is not None], dtype=np.float64).reshape(-1, 2)
    if not len(pairs):
        return {"entries": 0}
    return {"entries": len(pairs), "raw_mean": float(pairs[:, 0].mean()), "relaxed_mean": float(pairs[:, 1].mean()),
            "raw_median": float(np.median(pairs[:, 0])), "relaxed_median": float(np.median(pairs[:, 1])),
            "relaxed_closer": float((pairs[:, 1] < pairs[:, 0]).mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="mp_20_biternary", help="benchmark of the --tune pool (test split)")
    ap.add_argument("--tune", required=True, help="<static.jsonl>:<candidates.jsonl> of the pool to choose on")
    ap.add_argument("--report", action="append", default=[], help="<bench>=<static>:<candidates> (or "
                    "<static>:<candidates> of --bench) to report on")
    ap.add_argument("--top", type=int, default=3, help="consensus leaders relaxed per entry")
    ap.add_argument("--steps", type=int, default=30, help="FIRE steps per relaxation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--relax-only", action="store_true", help="relax what is missing, no summary")
    ap.add_argument("--part", default=None, help="I/N: relax only rows I, I + N, ... of each pool (to relax one "
                    "pool in N processes; implies --relax-only; the summary reads every part's file)")
    ap.add_argument("--summarize", action="store_true", help="summarise the entries relaxed so far, relax none")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pools = [(args.bench, args.tune)] + [tuple(s.split("=", 1)) if "=" in s else (args.bench, s) for s in args.report]
    part = tuple(int(x) for x in args.part.split("/")) if args.part else None
    if not args.summarize:
        for bench, spec in pools:
            relax_pool(spec, bench, args.top, args.steps, args.threads, part)
    if args.relax_only or part:
        return
    tune = read_records(pools[0][1], args.top, args.steps)
    tune_summary = {**summary(tune, args.top), "leader_rmse_matched_both": leader_rmse(tune, pools[0][1])}
    grid = [{"k": k, "beta": b, **rates(tune, k, b)} for k, b in itertools.product(range(2, args.top + 1), BETAS)]
    # max keeps the first of equals: fewer relaxations, smaller beta; with --top 1 there is only the leader
    chosen = max(grid, key=lambda r: r["rank1_relaxed"]) if grid else {"k": 1, "beta": 0.0}
    print(f"tune ({tune_summary}): rank-1 relaxed / raw pick")
    for k in range(2, args.top + 1):
        print(f"  first {k}: " + ", ".join(f"b{r['beta']:g} {r['rank1_relaxed']:.1f}/{r['rank1_raw']:.1f}"
                                           for r in grid if r["k"] == k))
    print(f"chosen: first {chosen['k']} leaders, beta {chosen['beta']:g}")
    reports = []
    for bench, spec in pools[1:]:
        records = read_records(spec, args.top, args.steps)
        reports.append({"bench": bench, "pool": spec, **summary(records, args.top),
                        "leader_rmse_matched_both": leader_rmse(records, spec),
                        "chosen": rates(records, chosen["k"], chosen["beta"]),
                        "lowest_relaxed": {k: rates(records, k, np.inf) for k in range(2, args.top + 1)}})
        r = reports[-1]
        print(f"report {bench} {Path(spec.split(':')[0]).parent.name[:50]} ({r['entries']} entries): leader "
              f"{r['leader']:.1f}, leader relaxed {r['leader_relaxed']:.1f}, chosen {r['chosen']['rank1_relaxed']:.1f}"
              f" (raw pick {r['chosen']['rank1_raw']:.1f})")
    write_json(args.out, {"settings": {"bench": args.bench, "tune": args.tune, "top": args.top,
                                       "steps": args.steps, "fmax": 0.1, "optimizer": "FIRE, atoms + cell",
                                       "betas": [str(b) for b in BETAS], "threads": args.threads},
                          "tune": {**tune_summary, "grid": [{**r, "beta": str(r["beta"])} for r in grid]},
                          "chosen": {**chosen, "beta": str(chosen["beta"])}, "reports": reports,
                          "wall_s": time.perf_counter() - t0, "versions": package_versions()})


if __name__ == "__main__":
    main()
