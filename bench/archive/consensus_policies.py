"""Consensus ranking variants for a pool of DAO-G samples, tuned on one set of test rows and reported on another.

``predict --method dao-g`` ranks its pool by consensus (:func:`xtalforge.ranking.consensus_order`: most matched
sample first, CHGNet static energy only breaks ties). This script asks whether trading votes against energy or
symmetry does better. Each sample gets the preference key

    -votes + beta * (E - E_min of the pool, eV/atom) - gamma * ln(number of symmetry operations, spglib 0.1 A)

(``cluster_energy``: E is the lowest energy among the sample and the samples it matches), and the pool is ordered
by :func:`xtalforge.ranking.leaders_first` on that key, as consensus does; beta = gamma = 0 is the shipped ranking.
The variant with the best rank-1 rate on the ``--tune`` rows (the smallest change on ties) is then scored on the
``--report`` rows, next to the shipped ranking. Everything is read from ``bench/ranking.py --pool 60`` runs
(``dao-g_static.jsonl``: match to the true structure, matches among the samples, CHGNet energies) and the samples'
``candidates_test_index.jsonl``; no sampling or matching is redone (~1 min, mostly spglib).

Usage::

    python bench/consensus_policies.py \\
        --tune runs/ranking/<tune run>/dao-g_static.jsonl:<its samples' candidates_test_index.jsonl> \\
        --report <static>:<candidates> [--report <mpts static>:<candidates> ...]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import spglib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # archived: the kept bench/ scripts it imports
from ranking import consensus_matches  # noqa: I001  (sibling script)

from xtalforge.evaluation.csp import read_jsonl
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.ranking import consensus_order, leaders_first

RESULTS = Path(__file__).resolve().parents[1] / "results" / "consensus_policies.json"
BETAS = (0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, np.inf)  # votes per eV/atom; inf: energy first, votes break ties
GAMMAS = (0.0, 1.0, 3.0)


def symmetry_operations(candidate: dict) -> int:
    """Number of symmetry operations spglib finds (symprec 0.1 A) in a stored candidate; 1 if it finds none or fails
    on a degenerate cell."""
    cell = (np.array(candidate["lattice"]), np.array(candidate["frac"]), np.array(candidate["numbers"]))
    try:
        dataset = spglib.get_symmetry_dataset(cell, symprec=0.1)
    except spglib.SpglibError:
        return 1
    return 1 if dataset is None else len(dataset.rotations)


def load_pools(spec: str) -> list[dict]:
    """Per entry of a ``<static.jsonl>:<candidates.jsonl>`` pair: (p, p) matches, votes, energies, hits, symmetry."""
    static, candidates = spec.split(":")
    samples = {r["index"]: r["candidates"] for r in read_jsonl(Path(candidates))}
    pools = []
    for rec in read_jsonl(Path(static)):
        matches = consensus_matches(rec)
        energy = np.array([np.inf if e is None else e for e in rec["chgnet"]], dtype=np.float64)
        pools.append({"matches": matches, "votes": matches.sum(axis=1).astype(np.float64), "energy": energy,
                      "hit": np.array([r is not None for r in rec["rms"]]),
                      "ops": np.array([symmetry_operations(c) for c in samples[rec["index"]][:len(energy)]])})
    return pools


def order(pool: dict, beta: float, gamma: float, cluster_energy: bool) -> np.ndarray:
    """The pool's order under one variant (see the module docstring)."""
    if beta == 0.0 and gamma == 0.0 and not cluster_energy:  # the shipped ranking itself
        return consensus_order(pool["matches"], pool["energy"])
    energy = pool["energy"]
    if cluster_energy:  # a group is as good as its lowest-energy member
        energy = np.where(pool["matches"], energy[None, :], np.inf).min(axis=1).clip(max=energy)
    finite = np.isfinite(energy)
    excess = np.where(finite, energy - (energy[finite].min() if finite.any() else 0.0), 1e3)
    if beta == np.inf:
        key = np.lexsort((-pool["votes"], excess))
    else:
        score = -pool["votes"] + beta * excess - gamma * np.log(pool["ops"])
        key = np.lexsort((excess, score))  # energy breaks ties, as in consensus_order
    return leaders_first(key, pool["matches"])


def rates(pools: list[dict], beta: float, gamma: float, cluster_energy: bool) -> dict:
    """Rank-1 and top-20 match rates (%) under one variant."""
    orders = [order(p, beta, gamma, cluster_energy) for p in pools]
    return {"rank1": 100.0 * float(np.mean([p["hit"][o[0]] for p, o in zip(pools, orders)])),
            "top20": 100.0 * float(np.mean([p["hit"][o[:20]].any() for p, o in zip(pools, orders)]))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", required=True, help="<static.jsonl>:<candidates.jsonl> of the rows to choose on")
    ap.add_argument("--report", action="append", default=[], help="<static.jsonl>:<candidates.jsonl> to report on")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tune = load_pools(args.tune)
    variants = list(itertools.product((False, True), GAMMAS, BETAS))
    grid = [{"cluster_energy": c, "gamma": g, "beta": b, **rates(tune, b, g, c)} for c, g, b in variants]
    # the best rank-1; max keeps the first of equals, the variant closest to the shipped ranking in grid order
    # (plain energy, small gamma / beta)
    chosen = max(grid, key=lambda r: r["rank1"])
    print(f"tune ({len(tune)} entries, oracle {100 * np.mean([p['hit'].any() for p in tune]):.1f}), rank-1 / top-20:")
    for c, g in itertools.product((False, True), GAMMAS):
        cells = [f"b{r['beta']:g} {r['rank1']:.1f}/{r['top20']:.0f}" for r in grid
                 if r["cluster_energy"] == c and r["gamma"] == g]
        print(f"  cluster_energy={c!s:5} gamma={g:g}: " + ", ".join(cells))
    print(f"chosen: beta {chosen['beta']:g}, gamma {chosen['gamma']:g}, cluster_energy {chosen['cluster_energy']}")
    reports = []
    for spec in args.report:
        pools = load_pools(spec)
        shipped, variant = rates(pools, 0.0, 0.0, False), rates(pools, chosen["beta"], chosen["gamma"],
                                                                  chosen["cluster_energy"])
        reports.append({"source": spec, "entries": len(pools), "shipped": shipped, "chosen": variant,
                        "oracle": 100.0 * float(np.mean([p["hit"].any() for p in pools]))})
        print(f"report {Path(spec.split(':')[0]).parent.name} ({len(pools)} entries): shipped "
              f"{shipped['rank1']:.1f} / {shipped['top20']:.1f}, "
              f"chosen {variant['rank1']:.1f} / {variant['top20']:.1f}")
    write_json(args.out, {"settings": {"tune": args.tune, "betas": [str(b) for b in BETAS], "gammas": list(GAMMAS),
                                       "symprec": 0.1, "energy": "CHGNet static eV/atom"},
                          "data": {"tune_entries": len(tune)}, "tune_grid": grid, "chosen": chosen,
                          "reports": reports, "wall_s": time.perf_counter() - t0, "versions": package_versions()})


if __name__ == "__main__":
    main()
