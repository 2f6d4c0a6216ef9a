"""Sampling cost of the Wyckoff flow: CPU-seconds per structure for cells of about 20 and about 52 atoms.

    python bench/symmetry_speed.py --per-size 32 --steps 50,20,10

Requests are the true symmetry of MPTS-52 test rows whose primitive cell has ``size +- 2`` atoms; all requests of one
size are sampled in the method's batches (``SymmetryMethod.sample``, including its resampling of implausible
samples), on ``--threads`` threads; CPU time is the process time (user + system). The training throughput and
CPU-hours of the shipped weights are read from their metadata.
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
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.models.wyckoff_flow import SymmetryMethod, WyckoffFlow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,52")
    parser.add_argument("--per-size", type=int, default=32)
    parser.add_argument("--steps", default="50,20,10")
    parser.add_argument("--weights", default="mp")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/symmetry_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = WyckoffFlow.load(args.weights)
    test = load_split("mpts_52", "test")
    rng = np.random.default_rng(0)
    rows, table = [], ["| cell atoms (target) | mean atoms | requests | steps | CPU-s per structure | wall-s per "
                       "structure |", "|---|---|---|---|---|---|"]
    for size in map(int, args.sizes.split(",")):
        probe = SymmetryMethod(model)
        requests = []
        for i in rng.permutation(len(test)):
            try:
                req = probe.requests(test[int(i)])[0]
            except XtalforgeError:
                continue
            from xtalforge.symmetry import check_assignment

            n = sum(check_assignment(*req).values())
            if abs(n - size) <= 2:
                requests.append((req, n))
            if len(requests) >= args.per_size:
                break
        for steps in map(int, args.steps.split(",")):
            method = SymmetryMethod(model, steps=steps)
            method.sample([r for r, _ in requests[:2]], seed=1)  # warm-up (group tables, allocator)
            c0, w0 = time.process_time(), time.perf_counter()
            method.sample([r for r, _ in requests], seed=0)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            mean = float(np.mean([n for _, n in requests]))
            rows.append({"size": size, "mean_atoms": mean, "requests": len(requests), "steps": steps,
                         "cpu_s_per_structure": cpu / len(requests), "wall_s_per_structure": wall / len(requests)})
            table.append(f"| {size} | {mean:.1f} | {len(requests)} | {steps} | {cpu / len(requests):.3f} | "
                         f"{wall / len(requests):.3f} |")
            print(table[-1], flush=True)
    meta = model.meta
    training = {"steps": meta.get("train_steps"), "epochs": meta.get("train_epochs"),
                "wall_s": meta.get("train_wall_s"), "n_train": meta.get("n_train"),
                "threads": meta.get("train_config", {}).get("threads"),
                "crystals_per_s": meta.get("train_epochs", 0) * meta.get("n_train", 0) / max(1.0, meta.get(
                    "train_wall_s", 1.0))}
    print("\n".join(table))
    write_json(Path(args.out), {"benchmark": "symmetry_speed", "settings": vars(args), "rows": rows,
                                "table": "\n".join(table), "training": training,
                                "versions": {**package_versions(), "xtalforge": xtalforge.__version__},
                                "machine": platform.platform()})


if __name__ == "__main__":
    main()
