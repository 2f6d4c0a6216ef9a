"""Wall time of one `xtalforge predict` per composition, as a user runs it: templates, and the symmetry path ranked
by CHGNet static energy or with CHGNet relaxation of the returned candidates.

    python bench/predict_timing.py --rows 5 --threads 2

Compositions: ``--rows`` random test cells (seed ``--seed``) of each size class, MP-20 bi/ternary cells of at most
10 atoms, of 11-20 atoms, and MPTS-52 cells of more than 20 atoms, given as their exact cell (formula and Z). Each
call is ``xtalforge.predict(formula, z=Z, n=--n, method=..., relax=...)`` in this process after one warm-up call per
method (the models load once, as in a session); wall time with ``--threads`` torch threads. Budgets of issue 29:
templates <= 5 s for a 10-atom composition, the symmetry path <= 60 s including CHGNet.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

import xtalforge
from xtalforge.data import load_split
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.symmetry.wyckoff import formula_of

CLASSES = {"<=10 atoms": ("mp_20_biternary", 1, 10), "11-20 atoms": ("mp_20_biternary", 11, 20),
           ">20 atoms": ("mpts_52", 21, 52)}
SETUPS = {"template": {"method": "template", "relax": "none"},
          "symmetry + CHGNet ranking": {"method": "symmetry", "relax": "none", "rank_by": "chgnet"},
          "symmetry + CHGNet relaxation": {"method": "symmetry", "relax": "chgnet"}}


def compositions(rows: int, seed: int) -> list[tuple[str, str, int, int]]:
    """(size class, formula, Z, atoms): the formula with Z fixes the test row's cell exactly."""
    out = []
    for name, (data, lo, hi) in CLASSES.items():
        test = load_split(data, "test")
        pick = np.flatnonzero((test.num_atoms >= lo) & (test.num_atoms <= hi))
        for i in np.random.default_rng(seed).choice(pick, rows, replace=False):
            c = test[int(i)]
            counts: dict[int, int] = {}
            for z in c.numbers:
                counts[int(z)] = counts.get(int(z), 0) + 1
            out.append((name, formula_of(counts), int(np.gcd.reduce(list(counts.values()))), c.num_atoms))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--n", type=int, default=20, help="candidates returned (predict's default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated, from: " + ", ".join(SETUPS))
    parser.add_argument("--out", default="bench/results/predict_timing.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    comps = compositions(args.rows, args.seed)
    setups = {name: SETUPS[name] for name in args.setups.split(",")}
    runs = []
    for setup, kwargs in setups.items():
        xtalforge.predict("NaCl", n=1, **kwargs)  # warm-up: models and potentials load once
        for size, formula, z, atoms in comps:
            t0 = time.perf_counter()
            error = None
            try:
                xtalforge.predict(formula, n=args.n, seed=args.seed, z=z, **kwargs)
            except xtalforge.XtalforgeError as exc:
                error = str(exc)
            runs.append({"setup": setup, "size": size, "formula": formula, "z": z, "atoms": atoms, "error": error,
                         "wall_s": time.perf_counter() - t0})
            print(f"{setup:18s} {size:12s} {formula:24s} {runs[-1]['wall_s']:7.1f} s {error or ''}", flush=True)
    lines = ["| setup | size | compositions | median s | max s |", "|---|---|---|---|---|"]
    for setup in setups:
        for size in CLASSES:
            t = [r["wall_s"] for r in runs if r["setup"] == setup and r["size"] == size]
            lines.append(f"| {setup} | {size} | {len(t)} | {np.median(t):.1f} | {max(t):.1f} |")
    table = "\n".join(lines)
    print(table)
    write_json(Path(args.out), {"benchmark": "predict_timing", "settings": vars(args), "runs": runs, "table": table,
                                "versions": {**package_versions(), "xtalforge": xtalforge.__version__},
                                "machine": platform.platform(), "cpus": torch.get_num_threads()})


if __name__ == "__main__":
    main()
