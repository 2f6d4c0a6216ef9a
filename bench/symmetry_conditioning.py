"""Property conditioning of the Wyckoff flow: does asking for a formation energy or band gap move the samples there?

    python bench/symmetry_conditioning.py --limit 40 --samples 5 --seed 1

For ``--limit`` random MP-20 bi/ternary test rows (their true space group and Wyckoff letters), ``--samples`` samples
each are drawn once without a target and once per target value (``TARGETS``), with classifier-free guidance scale 1
(the shipped default: the conditional model alone) and ``--guidance`` (extrapolated). Every sample's property is
predicted by the shipped DAO-P heads (``load_property_model``); a hit is a prediction within ``WINDOW`` of the
target. The same random numbers are used for every setting (same seed), so settings differ only by the target.
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
from xtalforge.models.wyckoff_flow import SymmetryMethod, WyckoffFlow
from xtalforge.properties import load_property_model

#: target values per property (eV/atom, eV), spread over the training labels' range
TARGETS = {"formation_energy": [-3.0, -2.0, -1.0, -0.5, 0.0], "band_gap": [0.0, 1.0, 2.0, 3.0, 5.0]}
#: a hit: |predicted - target| within this (eV/atom, eV)
WINDOW = {"formation_energy": 0.25, "band_gap": 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", default="mp")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/symmetry_conditioning.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_split("mp_20_biternary", "test")
    idx = np.sort(np.random.default_rng(args.seed).choice(len(test), args.limit, replace=False))
    targets = [test[int(i)] for i in idx]
    model = WyckoffFlow.load(args.weights)
    heads = {"formation_energy": load_property_model("formation_energy"), "band_gap": load_property_model("band_gap")}
    rows, table = [], ["| property | target | window | guidance | hit rate conditioned (%) | unconditioned (%) | "
                       "ratio | mean predicted, conditioned | unconditioned | samples |", "|---" * 10 + "|"]

    def draw(properties: dict, guidance: float) -> list:
        method = SymmetryMethod(model, properties=properties, guidance_scale=guidance)
        return [c for per in method.generate(targets, args.samples, seed=args.seed) for c in per]

    t0 = time.perf_counter()
    free = draw({}, 1.0)
    free_pred = {p: heads[p].predict(free) for p in heads}
    for prop, values in TARGETS.items():
        for guidance in (1.0, args.guidance):
            for value in values:
                samples = draw({prop: value}, guidance)
                pred = heads[prop].predict(samples)
                hit = float(np.mean(np.abs(pred - value) <= WINDOW[prop]) * 100)
                base = float(np.mean(np.abs(free_pred[prop] - value) <= WINDOW[prop]) * 100)
                rows.append({"property": prop, "target": value, "window": WINDOW[prop], "guidance": guidance,
                             "hit_rate": hit, "hit_rate_unconditioned": base, "samples": len(samples),
                             "mean_predicted": float(np.mean(pred)),
                             "mean_predicted_unconditioned": float(np.mean(free_pred[prop]))})
                ratio = "-" if base == 0 else f"{hit / base:.2f}"
                table.append(f"| {prop} | {value} | {WINDOW[prop]} | {guidance} | {hit:.1f} | {base:.1f} | {ratio} | "
                             f"{np.mean(pred):.2f} | {np.mean(free_pred[prop]):.2f} | {len(samples)} |")
                print(table[-1], flush=True)
    print("\n".join(table))
    write_json(Path(args.out), {
        "benchmark": "symmetry_conditioning", "settings": vars(args), "rows": rows, "table": "\n".join(table),
        "targets": TARGETS, "window": WINDOW, "test_rows": idx.tolist(), "wall_s": time.perf_counter() - t0,
        "predictor": "shipped DAO-P heads (load_property_model)",
        "versions": {**package_versions(), "xtalforge": xtalforge.__version__}, "machine": platform.platform()})


if __name__ == "__main__":
    main()
