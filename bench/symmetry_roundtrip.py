"""Round trip of the Wyckoff layer over every val structure: crystal -> (group, orbits, free parameters, lattice
coefficients) -> crystal, counted as rebuilt when StructureMatcher ``get_rms_dist`` (stol 0.5, ltol 0.3, angle 10)
finds the two the same.

    python bench/symmetry_roundtrip.py --data mp_20_biternary+mpts_52+perov_5+carbon_24 --symprec 0.01

The data are what ``xtalforge train`` reads for ``--data`` (val splits pooled, test ids removed); the symmetrised
rows are cached (``data.symmetric.symmetrize``), so a rerun is instant.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import xtalforge
from xtalforge.data.symmetric import symmetrize
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.training.train import TrainConfig, load_training_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mp_20_biternary+mpts_52+perov_5+carbon_24")
    parser.add_argument("--symprec", type=float, default=0.01)
    parser.add_argument("--max_atoms", type=int, default=52)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/results/symmetry_roundtrip.json")
    args = parser.parse_args()
    data, _ = load_training_data(TrainConfig(data=args.data, max_atoms=args.max_atoms))
    t0 = time.perf_counter()
    sym = symmetrize(data, symprec=args.symprec, workers=args.workers)
    skipped = dict(sym.skipped or {})
    rate = 100.0 * len(sym) / len(data)
    table = ("| data | structures | rebuilt | rate (%) | left out (reason: count) | symprec (A) |\n"
             "|---|---|---|---|---|---|\n"
             f"| {args.data} | {len(data)} | {len(sym)} | {rate:.2f} | {skipped} | {args.symprec} |")
    print(table)
    write_json(Path(args.out), {"benchmark": "symmetry_roundtrip", "settings": vars(args), "structures": len(data),
                                "rebuilt": len(sym), "rate": rate, "skipped": skipped, "table": table,
                                "seconds_this_call": time.perf_counter() - t0,
                                "versions": {**package_versions(), "xtalforge": xtalforge.__version__},
                                "machine": platform.platform()})


if __name__ == "__main__":
    main()
