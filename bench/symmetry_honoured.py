"""Does every sample of the symmetry method honour its request? Composition and space group of the stored samples of
``bench/symmetry_csp.py`` runs given the true symmetry.

    python bench/symmetry_honoured.py --runs runs/symmetry_csp/mp_20_biternary_given_n200_s1_score20

For each test row of a run, the request is the row's own group (pyxtal at symprec 0.01 A, as the method reads it);
each stored sample is checked for the exact element counts of the row (or a primitive part of them) and analysed by
spglib at ``--symprec``: the requested group, a supergroup of it (reachable from spglib's group by maximal-subgroup
steps, pyxtal's tables), or neither.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

import xtalforge
from xtalforge.crystal import Crystal
from xtalforge.data import load_split
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.symmetry import from_structure


@cache
def subgroup_types(group: int) -> frozenset[int]:
    """Every space-group type that is a subgroup of ``group`` (itself included)."""
    from pyxtal.symmetry import Group

    seen, todo = {group}, [group]
    while todo:
        g = todo.pop()
        for h in set(Group(g).get_max_subgroup_numbers()):
            if h not in seen:
                seen.add(h)
                todo.append(h)
    return frozenset(seen)


def spglib_group(crystal: Crystal, symprec: float) -> int:
    import spglib

    data = spglib.get_symmetry_dataset((crystal.lattice, crystal.frac_coords, crystal.numbers), symprec=symprec)
    return int(data.number) if data is not None else 1


def proportional(a: Counter, b: Counter) -> bool:
    if set(a) != set(b):
        return False
    ratios = {b[z] / a[z] for z in a}
    return len(ratios) == 1 and float(next(iter(ratios))).is_integer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="evaluate folders of given-symmetry runs")
    parser.add_argument("--symprec", type=float, default=0.01)
    parser.add_argument("--out", default="bench/results/symmetry_honoured.json")
    args = parser.parse_args()
    results, table = [], ["| run | samples | exact composition (%) | requested group (%) | a supergroup (%) | neither "
                          "(%) | symprec |", "|---|---|---|---|---|---|---|"]
    for run in args.runs:
        folder = Path(run)
        report = json.loads((folder / "report.json").read_text())
        data = report["settings"].get("data") or folder.name.split("_given")[0]
        test = load_split(data, "test")
        counts = Counter()
        for line in tqdm((folder / "candidates.jsonl").read_text().splitlines(), desc=folder.name, mininterval=10):
            row = json.loads(line)
            target = test[int(row["index"])]
            try:
                requested = from_structure(target).spacegroup
            except XtalforgeError:
                continue
            want = Counter(target.numbers.tolist())
            for cand in row["candidates"]:
                crystal = Crystal(np.array(cand["lattice"]), np.array(cand["frac"]), cand["numbers"])
                counts["samples"] += 1
                counts["composition"] += proportional(Counter(crystal.numbers.tolist()), want)
                found = spglib_group(crystal, args.symprec)
                if found == requested:
                    counts["exact"] += 1
                elif requested in subgroup_types(found):
                    counts["supergroup"] += 1
                else:
                    counts["neither"] += 1
        n = max(1, counts["samples"])
        rec = {"run": str(folder), "data": data, **counts, "symprec": args.symprec}
        results.append(rec)
        table.append(f"| {folder.name} | {counts['samples']} | {100 * counts['composition'] / n:.2f} | "
                     f"{100 * counts['exact'] / n:.2f} | {100 * counts['supergroup'] / n:.2f} | "
                     f"{100 * counts['neither'] / n:.2f} | {args.symprec} |")
        print(table[-1], flush=True)
    print("\n".join(table))
    write_json(Path(args.out), {"benchmark": "symmetry_honoured", "settings": vars(args), "results": results,
                                "table": "\n".join(table),
                                "versions": {**package_versions(), "xtalforge": xtalforge.__version__},
                                "machine": platform.platform()})


if __name__ == "__main__":
    main()
