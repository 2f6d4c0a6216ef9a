"""Design by property: hit rate of `xtalforge design` against unconditioned generation of the same elements.

    python bench/design.py --compositions 4 --samples 6 --n 10

For each element set and each target (``TARGETS``), structures are sampled with the target (the proposer and the
Wyckoff flow conditioned on it) and once without any target (same compositions, seeds and sample counts); both sets
are ranked the same way (``design.rank_designs``: closeness of the DAO-P prediction to the target + CHGNet energy
above the lowest found for the composition). Reported: the hit rate (predicted property within ``design.WINDOW`` of
the target) of all samples and of the ``--n`` returned, conditioned and not, and the returned structures' mean
CHGNet energy above the lowest structure found for their composition.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

import xtalforge
from xtalforge.design import WINDOW, hit_rate, rank_designs, sample_structures
from xtalforge.evaluation.report import package_versions, write_json

ELEMENT_SETS = (("Li", "Fe", "P", "O"), ("Mg", "Al", "O"), ("Zn", "Cd", "S"))
TARGETS = {"band_gap": [0.5, 1.5, 2.5, 3.5, 5.0], "formation_energy": [-3.0, -2.5, -2.0, -1.5, -1.0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compositions", type=int, default=4)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--max-atoms", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/design.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = {"max_atoms": args.max_atoms, "compositions_tried": args.compositions, "samples": args.samples,
              "seed": args.seed}
    rows, table = [], ["| elements | property | target | window | hit all samples: conditioned / unconditioned (%) | "
                       "hit returned: conditioned / unconditioned (%) | ratio (returned) | returned above lowest "
                       "(eV/atom) | samples |", "|---" * 9 + "|"]
    t0 = time.perf_counter()
    for elements in ELEMENT_SETS:
        free = sample_structures(elements, {}, **common)
        for prop, values in TARGETS.items():
            for value in values:
                target = {prop: value}
                cond = sample_structures(elements, target, **common)
                ranked = {"conditioned": rank_designs(cond, target), "unconditioned": rank_designs(free, target)}
                rec = {"elements": list(elements), "property": prop, "target": value, "window": WINDOW[prop],
                       "samples": {k: len(v) for k, v in ranked.items()}}
                for name, designs in ranked.items():
                    rec[f"hit_all_{name}"] = hit_rate(designs, target)[prop]
                    rec[f"hit_returned_{name}"] = hit_rate(designs[: args.n], target)[prop]
                    rec[f"above_lowest_returned_{name}"] = float(np.mean([d.above_lowest for d in designs[: args.n]]))
                    rec[f"mean_predicted_{name}"] = float(np.mean([d.predicted[prop] for d in designs]))
                rows.append(rec)
                base = rec["hit_returned_unconditioned"]
                ratio = "-" if base == 0 else f"{rec['hit_returned_conditioned'] / base:.2f}"
                table.append(f"| {'-'.join(elements)} | {prop} | {value} | {WINDOW[prop]} | "
                             f"{rec['hit_all_conditioned']:.1f} / {rec['hit_all_unconditioned']:.1f} | "
                             f"{rec['hit_returned_conditioned']:.1f} / {base:.1f} | {ratio} | "
                             f"{rec['above_lowest_returned_conditioned']:.3f} | {len(cond)} / {len(free)} |")
                print(table[-1], flush=True)
    summary = {}
    for prop in TARGETS:
        sel = [r for r in rows if r["property"] == prop]
        summary[prop] = {k: float(np.mean([r[k] for r in sel])) for k in
                         ("hit_all_conditioned", "hit_all_unconditioned", "hit_returned_conditioned",
                          "hit_returned_unconditioned")}
    print("\n".join(table))
    write_json(Path(args.out), {
        "benchmark": "design", "settings": vars(args), "rows": rows, "summary": summary, "table": "\n".join(table),
        "element_sets": ELEMENT_SETS, "targets": TARGETS, "wall_s": time.perf_counter() - t0,
        "predictor": "shipped DAO-P heads; CHGNet static energies",
        "versions": {**package_versions(), "xtalforge": xtalforge.__version__}, "machine": platform.platform()})


if __name__ == "__main__":
    main()
