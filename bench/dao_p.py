"""DAO-P benchmark: energy MAE on the MP-20 bi/ternary test split, shipped property models next to the composition
baseline, timings, and a small energy-guided CSP experiment (s = 0 vs s > 0).

    nice python bench/dao_p.py                                   # MAEs: shipped weights, whole visible test split
    nice python bench/dao_p.py --guided 16 --strength 1 --steps 250   # guided-sampling experiment only

Writes ``bench/results/dao_p.json`` (or ``dao_p_guidance.json`` with ``--guided``: settings, data sizes, timings,
package versions) and prints a markdown table. The guided experiment samples ``--guided`` test compositions with
DAO-P's own diffusion heads (``sample_pc``, ``--steps``), then reports the DAO-P energy of the samples and the
StructureMatcher match rate (stol 0.5, angle_tol 10, ltol 0.3, k=1, no relaxation) to the true test structure, with
and without guidance.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from xtalforge.crystal import Crystal, atomic_write_text
from xtalforge.data.batch import collate_numbers
from xtalforge.data.protocol import load_split, sample_indices
from xtalforge.diffusion.guidance import EnergyGuidance
from xtalforge.diffusion.samplers import sample_pc
from xtalforge.errors import StructureError
from xtalforge.models.dao_p import CLEAN_T, DAOP
from xtalforge.properties import PROPERTIES, available_properties, load_property_model
from xtalforge.properties.baseline import CompositionBaseline

BENCHMARK = "mp_20_biternary"
RESULTS = Path(__file__).resolve().parent / "results"


def cells_of(data) -> list[np.ndarray]:
    return [data.atoms_of(i) for i in range(len(data))]


def guided_experiment(model: DAOP, test, n: int, strength: float, steps: int, seed: int) -> dict:
    """Sample n test compositions with s = 0 and s = strength; DAO-P energy and k=1 match rate of each."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    idx = sample_indices(len(test), n, seed)
    truth = [test[int(i)] for i in idx]
    batch = collate_numbers([c.numbers.tolist() for c in truth])
    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    out = {"n": len(idx), "strength": strength, "steps": steps, "step_lr": 1e-5, "sampler": "pc"}
    for s in (0.0, strength):
        t0 = time.time()
        gen = torch.Generator().manual_seed(seed)
        guidance = EnergyGuidance(model, s) if s else None
        sampled = sample_pc(model, batch, steps, step_lr=1e-5, generator=gen, guidance=guidance)
        seconds = time.time() - t0
        samples = {}  # index -> Crystal; a collapsed lattice is an invalid sample (no match, no energy)
        for i in range(len(idx)):
            try:
                m = sampled.mask[i]
                samples[i] = Crystal(sampled.lattice[i].double().numpy(), sampled.frac[i][m].double().numpy(),
                                     sampled.types[i][m].numpy())
            except StructureError:
                pass
        energy = model.predict_energy(list(samples.values())) if samples else np.array([np.nan])
        matches = 0
        for i, cand in samples.items():
            try:
                matches += bool(matcher.fit(cand.to_structure(), truth[i].to_structure()))
            except Exception:  # pymatgen can fail on a near-degenerate cell: counts as no match
                pass
        out[f"s={s:g}"] = {"mean_dao_p_energy_eV_per_atom": float(energy.mean()), "valid_lattices": len(samples),
                           "match_rate_k1": matches / len(idx), "seconds": seconds,
                           "seconds_per_sample": seconds / len(idx)}
    return out


def run_guided(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model = DAOP.load(args.weights)
    result = {"guided": guided_experiment(model, load_split(BENCHMARK, "test"), args.guided, args.strength, args.steps,
                                          args.seed), "weights": args.weights}
    return result


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model = DAOP.load(args.weights)
    label = model.energy_stats["label"]
    train = load_split(BENCHMARK, "val")
    test_all = load_split(BENCHMARK, "test")
    test = test_all.subset(sample_indices(len(test_all), args.limit, args.seed))
    y_test = test.meta[label].to_numpy(float)
    t0 = time.time()
    pred = model.predict_energy(test)
    energy_seconds = time.time() - t0
    t0 = time.time()
    baselines = {label: CompositionBaseline(seed=args.seed).fit(cells_of(train), train.meta[label].to_numpy(float))}
    base_pred = baselines[label].predict(cells_of(test))
    result: dict = {
        "benchmark": BENCHMARK, "train": "val", "n_train": len(train), "test": "test (visible)", "n_test": len(test),
        "weights": args.weights, "dao_p_meta": {k: v for k, v in model.meta.items() if k != "z_prior"},
        "energy": {
            "label": label, "unit": "eV/atom", "clean_t": CLEAN_T,
            "mae_dao_p": float(np.abs(pred - y_test).mean()),
            "mae_baseline": float(np.abs(base_pred - y_test).mean()),
            "mae_mean_predictor": float(np.abs(y_test - train.meta[label].mean()).mean()),
            "dao_p_seconds": energy_seconds, "dao_p_crystals_per_s": len(test) / energy_seconds,
            "baseline_fit_predict_seconds": time.time() - t0,
        },
        "properties": {},
    }
    for name in available_properties():
        spec = PROPERTIES[name]
        if spec.label not in test.meta:
            continue
        reg = load_property_model(name)
        y = test.meta[spec.label].to_numpy(float)
        t0 = time.time()
        p = reg.predict(test)
        seconds = time.time() - t0
        if spec.label not in baselines:
            y_train = train.meta[spec.label].to_numpy(float)
            baselines[spec.label] = CompositionBaseline(seed=args.seed).fit(cells_of(train), y_train)
        b = baselines[spec.label]
        result["properties"][name] = {
            "unit": spec.unit, "mae_dao_p": float(np.abs(p - y).mean()),
            "mae_baseline": float(np.abs(b.predict(cells_of(test)) - y).mean()),
            "mae_mean_predictor": float(np.abs(y - train.meta[spec.label].mean()).mean()),
            "seconds": seconds, "fine_tune": {k: reg.meta.get(k) for k in ("steps", "epochs", "cpu_seconds")},
        }
    return result


def with_settings(result: dict, args: argparse.Namespace) -> dict:
    result["settings"] = vars(args)
    result["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "numpy": np.__version__, "threads": torch.get_num_threads()}
    return result


def table(r: dict) -> str:
    if "energy" not in r:
        return guided_table(r["guided"])
    rows = ["| quantity | DAO-P | composition baseline | mean predictor |", "| --- | --- | --- | --- |"]
    e = r["energy"]
    rows.append(f"| energy MAE ({e['label']}, eV/atom, DAO-P energy head) | {e['mae_dao_p']:.4f} | "
                f"{e['mae_baseline']:.4f} | {e['mae_mean_predictor']:.4f} |")
    for name, p in r["properties"].items():
        rows.append(f"| {name} MAE ({p['unit']}, fine-tuned) | {p['mae_dao_p']:.4f} | {p['mae_baseline']:.4f} | "
                    f"{p['mae_mean_predictor']:.4f} |")
    return "\n".join(rows) + f"\n\nn_test = {r['n_test']}, energy head {e['dao_p_crystals_per_s']:.0f} crystals/s\n"


def guided_table(g: dict) -> str:
    text = f"n = {g['n']} test compositions, {g['steps']} PC steps\n"
    text += "\n| guidance s | valid lattices | mean DAO-P energy of valid samples (eV/atom) | match rate k=1 "
    text += "| s per sample |\n"
    text += "| --- | --- | --- | --- | --- |\n"
    for key in (k for k in g if k.startswith("s=")):
        v = g[key]
        text += (f"| {key[2:]} | {v['valid_lattices']}/{g['n']} | {v['mean_dao_p_energy_eV_per_atom']:.3f} | "
                 f"{v['match_rate_k1']:.3f} | "
                 f"{v['seconds_per_sample']:.1f} |\n")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="energy_mp20", help="DAO-P checkpoint path or shipped name")
    ap.add_argument("--limit", type=int, default=None, help="test rows (random sample); default all")
    ap.add_argument("--guided", type=int, default=0, help="test compositions for the guided-sampling experiment")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=1000, help="predictor-corrector steps of the guided experiment")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/dao_p[_guidance].json")
    args = ap.parse_args()
    args.out = args.out or RESULTS / ("dao_p_guidance.json" if args.guided else "dao_p.json")
    result = with_settings(run_guided(args) if args.guided else run(args), args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2, default=str))
    print(table(result))


if __name__ == "__main__":
    main()
