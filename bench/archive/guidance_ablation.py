"""Energy-guided DAO-G sampling (issue 4 item 2): the shipped DAO-G (``dao_g_mp20``) is the generator and the shipped
DAO-P (``dao_p_energy_mp20``) supplies the guidance gradient ``s * grad E_t`` (reference §2), s = 0, 1, 20.

    nice -n 10 python bench/archive/guidance_ablation.py --n 40 --strengths 0,1,20

The same random MP-20 bi/ternary test compositions (exact cells, 1 sample each) and the same starting noise for every
s (paired comparison). Per s: share of valid lattices, k=1 match rate to the known test structure (StructureMatcher
stol 0.5 / angle_tol 10 / ltol 0.3, raw samples), static CHGNet energy per atom of the samples, the share of samples
within 0.1 eV/atom of the CHGNet energy of the known test structure (CHGNet static on the DFT structure; samples
below it count as within), mean DAO-P predicted energy of the samples, and seconds per sample.
(The earlier ``bench/results/dao_p_guidance*.json`` guided DAO-P's *own* diffusion heads; here DAO-G is guided.)
Writes ``bench/results/guidance_ablation.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from xtalforge.crystal import Crystal
from xtalforge.data.batch import collate_numbers
from xtalforge.data.protocol import BENCHMARKS, load_split, sample_indices
from xtalforge.diffusion.guidance import EnergyGuidance
from xtalforge.diffusion.samplers import SAMPLERS
from xtalforge.errors import StructureError
from xtalforge.evaluation.report import command_line, package_versions, write_json
from xtalforge.models.dao_g import DAOG
from xtalforge.models.dao_p import DAOP

RESULTS = Path(__file__).resolve().parents[1] / "results" / "guidance_ablation.json"
BENCHMARK = "mp_20_biternary"


def to_crystals(batch) -> list[Crystal | None]:
    """Samples as crystals; a degenerate lattice is None (an invalid sample)."""
    out: list[Crystal | None] = []
    lat, frac = batch.lattice.double().numpy(), batch.frac.double().numpy()
    for i in range(lat.shape[0]):
        m = batch.mask[i].numpy()
        try:
            out.append(Crystal(lat[i], frac[i][m], batch.types[i][m].numpy()))
        except StructureError:
            out.append(None)
    return out


def matches(samples: list[Crystal | None], truth: list[Crystal]) -> np.ndarray:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    hit = np.zeros(len(truth), dtype=bool)
    for i, (s, t) in enumerate(zip(samples, truth)):
        if s is None:
            continue
        try:
            hit[i] = bool(matcher.fit(s.to_structure(), t.to_structure()))
        except Exception:  # pymatgen can fail on a near-degenerate cell: no match
            pass
    return hit


def min_distance(c: Crystal) -> float:
    """Shortest interatomic distance (Angstrom, periodic images included)."""
    st = c.to_structure()
    if len(st) == 1:
        return float(min(st.lattice.abc))
    d = st.distance_matrix + np.eye(len(st)) * 1e9
    return float(d.min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="mp20", help="DAO-G weights")
    ap.add_argument("--energy", default="energy_mp20", help="DAO-P weights")
    ap.add_argument("--n", type=int, default=40, help="test compositions")
    ap.add_argument("--strengths", default="0,1,20")
    ap.add_argument("--sampler", default="pc")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from xtalforge.relax.chgnet import chgnet_energies

    gen_model, energy_model = DAOG.load(args.generator), DAOP.load(args.energy)
    if gen_model.diffusion_args != energy_model.diffusion_args:  # E_t must be evaluated on the generator's times
        raise SystemExit(f"noise schedules differ: {gen_model.diffusion_args} vs {energy_model.diffusion_args}")
    test = load_split(BENCHMARK, "test")
    idx = sample_indices(len(test), args.n, args.seed)
    truth = [test[int(i)] for i in idx]
    t0 = time.time()
    e_truth = chgnet_energies(truth, threads=args.threads)
    truth_chgnet_s = time.time() - t0
    batch = collate_numbers([c.numbers.tolist() for c in truth])
    step_lr = BENCHMARKS[BENCHMARK].step_lr
    rows = {}
    for s in (float(x) for x in args.strengths.split(",")):
        t0 = time.time()
        out = SAMPLERS[args.sampler](gen_model, batch, args.steps, step_lr=step_lr,
                                     generator=torch.Generator().manual_seed(args.seed),
                                     guidance=EnergyGuidance(energy_model, s) if s else None)
        sample_s = time.time() - t0
        samples = to_crystals(out)
        valid = np.array([c is not None for c in samples])
        hit = matches(samples, truth)
        t0 = time.time()
        e_chg = np.full(len(samples), np.nan)
        if valid.any():
            e_chg[valid] = chgnet_energies([c for c in samples if c is not None], threads=args.threads)
        e_dao_p = np.full(len(samples), np.nan)
        if valid.any():
            e_dao_p[valid] = energy_model.predict_energy([c for c in samples if c is not None])
        eval_s = time.time() - t0
        gap = e_chg - e_truth
        ok = np.isfinite(gap)
        dmin = np.array([min_distance(c) if c is not None else np.nan for c in samples])
        rows[f"s={s:g}"] = {
            "strength": s, "n": len(samples), "valid_lattices": int(valid.sum()),
            "match_rate_k1": float(hit.mean()), "matched": int(hit.sum()),
            "chgnet_energy_per_atom_mean": float(np.nanmean(e_chg)),
            "chgnet_gap_to_known_mean": float(gap[ok].mean()), "chgnet_gap_to_known_median": float(np.median(gap[ok])),
            "share_within_0.1_of_known": float((gap[ok] <= 0.1).sum() / len(samples)),
            "chgnet_evaluated": int(ok.sum()),
            "dao_p_energy_mean": float(np.nanmean(e_dao_p)),
            "min_distance_median_A": float(np.nanmedian(dmin)), "share_min_distance_below_1A": float(
                (dmin < 1.0).sum() / len(samples)),
            "sampling_seconds": sample_s, "seconds_per_sample": sample_s / len(samples), "eval_seconds": eval_s,
            "per_entry": {"match": hit.tolist(), "chgnet": e_chg.tolist(), "dao_p": e_dao_p.tolist()},
        }
        print(f"s={s:g}", {k: v for k, v in rows[f's={s:g}'].items() if k != "per_entry"}, flush=True)
    base = rows.get("s=0")
    if base is not None:  # paired with the unguided samples from the same starting noise
        e0 = np.array(base["per_entry"]["chgnet"], dtype=float)
        for v in rows.values():
            d = np.array(v["per_entry"]["chgnet"], dtype=float) - e0
            ok = np.isfinite(d)
            v["paired_vs_s0"] = {"n": int(ok.sum()), "chgnet_change_median": float(np.median(d[ok])),
                                 "chgnet_change_mean": float(d[ok].mean()),
                                 "share_chgnet_lower": float((d[ok] < 0).mean())}
    result = {"command": command_line(), "settings": vars(args), "benchmark": BENCHMARK, "test_rows": idx.tolist(),
              "generator": f"DAO-G {args.generator}", "guided_by": f"DAO-P {args.energy} (scaled energy E_t)",
              "step_lr": step_lr, "known_structures_chgnet_mean": float(np.nanmean(e_truth)),
              "known_structures_chgnet_seconds": truth_chgnet_s, "known_chgnet": e_truth.tolist(),
              "results": rows, "versions": package_versions()}
    write_json(args.out, result)
    print(table(result))


def table(r: dict) -> str:
    lines = [f"DAO-G {r['settings']['generator']} guided by DAO-P {r['settings']['energy']}; n = {r['settings']['n']} "
             f"MP-20 bi/ternary test compositions, 1 sample each, {r['settings']['sampler']} "
             f"{r['settings']['steps']} steps\n",
             "| s | valid | match k=1 | CHGNet E (eV/atom) | CHGNet E - known (median) | within 0.1 of known | "
             "CHGNet lower than s=0 (paired) | median d_min (A) | DAO-P E | s/sample |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in r["results"].values():
        lower = v.get("paired_vs_s0", {}).get("share_chgnet_lower", 0.0)
        lines.append(f"| {v['strength']:g} | {v['valid_lattices']}/{v['n']} | {v['matched']}/{v['n']} | "
                     f"{v['chgnet_energy_per_atom_mean']:.3f} | {v['chgnet_gap_to_known_median']:.3f} | "
                     f"{v['share_within_0.1_of_known']:.2f} | {lower:.2f} | "
                     f"{v['min_distance_median_A']:.2f} | {v['dao_p_energy_mean']:.3f} | "
                     f"{v['seconds_per_sample']:.2f} |")
    lines.append(f"\nknown test structures, CHGNet mean {r['known_structures_chgnet_mean']:.3f} eV/atom")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
