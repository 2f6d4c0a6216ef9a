"""The rows of an ``xtalforge evaluate`` run again through ``xtalforge.predict`` (the row's exact cell typed as a
formula), and both sets of candidates matched by the two StructureMatcher criteria.

``evaluate`` and ``predict`` run the same object (``xtalforge.prediction.predictor``), so the two match rates must agree
within sampling noise (the cells' atom order differs, so the samples differ). The benchmark criterion is
``StructureMatcher.get_rms_dist(...) is not None`` (DiffCSP); the stricter ``StructureMatcher.fit`` is reported beside
it, so a user who checks with ``fit()`` finds the same numbers.

    python bench/predict_vs_evaluate.py --run runs/eval_dao_g_mp20_n200_s1 \
        --out bench/results/predict_vs_evaluate_dao_g_mp20.json

Resumable: the predicted candidates go to ``<run>/predict/candidates.jsonl``, one line per row.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import xtalforge
from xtalforge.crystal import Crystal, atomic_write_text
from xtalforge.data import load_split
from xtalforge.evaluation.csp import append_jsonl, candidate_record, match_candidates, read_jsonl, summarize_csp


def formula_of(numbers: np.ndarray) -> tuple[str, int]:
    """(reduced formula, Z) of a cell, so ``predict(formula, z=Z)`` builds exactly that cell."""
    from pymatgen.core import Composition

    comp = Composition({int(z): int(c) for z, c in zip(*np.unique(numbers, return_counts=True))})
    reduced, z = comp.get_reduced_composition_and_factor()
    return reduced.formula.replace(" ", ""), int(z)


def predict_rows(test, rows: list[int], run_settings: dict, out: Path) -> float:
    """``predict`` for each row (resumable); returns the wall seconds spent by this call."""
    method = run_settings["method"]["method"]
    n = int(run_settings["candidates_per_entry"])
    seed = int(run_settings["seed"])
    done = {int(r["index"]) for r in read_jsonl(out)} if out.is_file() else set()
    start = time.perf_counter()
    with open(out, "a") as fh:
        for r in tqdm([r for r in rows if r not in done], desc="predict", unit="entry"):
            formula, z = formula_of(test.atoms_of(r))
            t0 = time.perf_counter()
            cands = xtalforge.predict(formula, n=n, method=method, z=z, seed=seed)
            append_jsonl(fh, [{"index": r, "material_id": test.ids[r], "num_atoms": len(test.atoms_of(r)),
                               "formula": formula, "z": z, "seconds": time.perf_counter() - t0,
                               "candidates": [candidate_record(c.crystal) for c in cands]}])
    return time.perf_counter() - start


def fit_rates(test, candidates_file: Path, ks: list[int]) -> dict:
    """Match rate (%) at each k by ``StructureMatcher.fit`` and by ``get_rms_dist`` (pymatgen itself), protocol
    tolerances, over the entries of ``candidates_file``."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    first_fit, first_rms, entries = [], [], 0
    for entry in tqdm(list(read_jsonl(candidates_file)), desc="fit vs get_rms_dist", unit="entry"):
        r = int(entry["index"])
        o = test.offsets
        truth = Crystal(test.lattices[r], test.frac_coords[o[r]: o[r + 1]], test.atoms_of(r)).to_structure()
        entries += 1
        f = g = math.inf
        for rank, c in enumerate(entry["candidates"][: max(ks)], start=1):
            cand = Crystal(np.array(c["lattice"]), np.array(c["frac"]).reshape(-1, 3), c["numbers"]).to_structure()
            if g == math.inf and sm.get_rms_dist(truth, cand) is not None:
                g = rank
            if f == math.inf and sm.fit(truth, cand):
                f = rank
            if f < math.inf and g < math.inf:
                break
        first_fit.append(f)
        first_rms.append(g)
    ff, fr = np.array(first_fit), np.array(first_rms)
    return {"entries": entries,
            "get_rms_dist": {str(k): round(100 * float(np.mean(fr <= k)), 2) for k in ks},
            "fit": {str(k): round(100 * float(np.mean(ff <= k)), 2) for k in ks},
            "matched_by_get_rms_dist_not_fit": {str(k): int(np.sum((fr <= k) & (ff > k))) for k in ks}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="an `xtalforge evaluate` run folder on a benchmark")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--ks", default="1,20")
    args = ap.parse_args()
    run = Path(args.run)
    report = json.loads((run / "report.json").read_text())
    settings = report["settings"]
    data = Path(report["data"]["source"]).parent.name
    test = load_split(data, "test")
    ks = [int(k) for k in args.ks.split(",")]
    rows = [int(e["index"]) for e in read_jsonl(run / "candidates.jsonl")]
    (run / "predict").mkdir(exist_ok=True)
    cands = run / "predict" / "candidates.jsonl"
    wall = predict_rows(test, rows, settings, cands)
    match_candidates(test, cands, run / "predict" / "matches.jsonl", k_max=max(ks), workers=1)
    via_predict = summarize_csp(run / "predict" / "matches.jsonl", ks)
    result = {
        "settings": {"run": str(run), "data": data, "rows": len(rows), "row_seed": settings["seed"],
                     "method": settings["method"], "ks": ks,
                     "criterion": "StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)"},
        "evaluate": {"metrics": report["results"]["metrics"]},
        "predict": {"metrics": via_predict["metrics"], "wall_s_this_call": wall},
        "criteria": {"evaluate": fit_rates(test, run / "candidates.jsonl", ks),
                     "predict": fit_rates(test, cands, ks)},
        "versions": {"xtalforge": xtalforge.__version__, "python": platform.python_version()},
    }
    atomic_write_text(Path(args.out), json.dumps(result, indent=2))
    print("| path | k | match rate (get_rms_dist, matcher) | get_rms_dist (pymatgen) | fit |")
    print("|---|---|---|---|---|")
    for name, block in (("evaluate", result["evaluate"]), ("predict", result["predict"])):
        for k in ks:
            crit = result["criteria"][name]
            print(f"| {name} | {k} | {block['metrics'][str(k)]['match_rate']} | {crit['get_rms_dist'][str(k)]} | "
                  f"{crit['fit'][str(k)]} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
