"""Fine-tune and evaluate the shipped property regressors (and the SuperCon3D Tc cross-validation).

    python -m xtalforge.properties.train formation_energy --init runs/dao_p_mp20/ema.pt --minutes 25
    python -m xtalforge.properties.train band_gap --init runs/dao_p_mp20/ema.pt --minutes 25
    python -m xtalforge.properties.train tc --init runs/dao_p_mp20/ema.pt --minutes 6   # per fold

MP-20 properties follow the benchmark protocol: trained on ``mp_20_biternary`` val (checked against its test ids),
MAE reported on its test split, next to the composition baseline fitted on the same rows. Weights go to
``weights/dao_p_<property>.pt`` with a model card ``.md``; results to ``bench/results/property_<property>.json``.
Tc: 5-fold CV on the ordered SuperCon3D structures (log Tc target), MAE / R^2 per fold, baseline alongside.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from xtalforge.crystal import atomic_write_text
from xtalforge.data.dataset import CrystalDataset, load_csv
from xtalforge.data.protocol import check_no_leak, data_root, load_split
from xtalforge.errors import XtalforgeError
from xtalforge.models.dao_p import DAOP
from xtalforge.properties import PROPERTIES, weights_path
from xtalforge.properties.baseline import CompositionBaseline
from xtalforge.properties.regressor import FineTuneConfig, PropertyRegressor, fine_tune

BENCHMARK = "mp_20_biternary"


def cells_of(data: CrystalDataset) -> list[np.ndarray]:
    return [data.atoms_of(i) for i in range(len(data))]


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def train_mp_property(name: str, init: str, cfg: FineTuneConfig, out_json: Path | None = None) -> dict:
    """Fine-tune DAO-P on MP-20 bi/ternary val for ``name``, evaluate on test with the baseline; save weights."""
    spec = PROPERTIES[name]
    train = load_split(BENCHMARK, "val")
    check_no_leak(train, BENCHMARK)
    test = load_split(BENCHMARK, "test")
    y_train, y_test = train.meta[spec.label].to_numpy(float), test.meta[spec.label].to_numpy(float)
    model = PropertyRegressor.from_dao_p(DAOP.load(init), name, spec.label, spec.unit, y_train)
    model = fine_tune(model, train, y_train, cfg)
    t0 = time.time()
    pred = model.predict(test)
    predict_seconds = time.time() - t0
    t0 = time.time()
    base = CompositionBaseline(seed=cfg.seed).fit(cells_of(train), y_train).predict(cells_of(test))
    baseline_seconds = time.time() - t0
    result = {
        "property": name, "label": spec.label, "unit": spec.unit, "train": f"{BENCHMARK} val", "n_train": len(train),
        "test": f"{BENCHMARK} test (visible)", "n_test": len(test),
        "mae_dao_p": float(np.abs(pred - y_test).mean()), "mae_baseline": float(np.abs(base - y_test).mean()),
        "mae_mean_predictor": float(np.abs(y_test - y_train.mean()).mean()),
        "r2_dao_p": r2(y_test, pred), "r2_baseline": r2(y_test, base),
        "init_from": init, "fine_tune": model.meta, "predict_seconds": predict_seconds,
        "baseline_fit_predict_seconds": baseline_seconds,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    model.meta.update({"test_mae": result["mae_dao_p"], "baseline_test_mae": result["mae_baseline"]})
    path = weights_path(name)
    model.save(path)
    atomic_write_text(path.with_suffix(".md"), model_card(result, path))
    if out_json:
        atomic_write_text(out_json, json.dumps(result, indent=2, default=str))
    return result


def model_card(result: dict, path: Path) -> str:
    ft = result["fine_tune"]
    size_mb = path.stat().st_size / 1e6
    return f"""# {path.name}: {result['property']} ({result['unit']})

Crysformer (DAO-P backbone, config in the checkpoint) fine-tuned to predict `{result['label']}` from a relaxed
structure, evaluated at the clean diffusion step. {size_mb:.1f} MB.

- Initialised from: `{result['init_from']}` (DAO-P: diffusion + exponential energy loss, MP-20 bi/ternary val).
- Fine-tuning data: {result['train']} ({ft['n_train']} rows used for training, {ft['n_holdout']} held out to pick
  the epoch). Test: {result['test']}, {result['n_test']} rows; no test material_id was used.
- Fine-tuning: L1 loss on standardised labels, AdamW lr {ft['fine_tune']['lr']}, {ft['steps']} steps /
  {ft['epochs']} epochs (best epoch {ft['best_epoch']}), {ft['wall_seconds'] / 60:.1f} min wall,
  {ft['cpu_seconds'] / 3600:.2f} CPU-hours (1 thread, shared 2-core CPU).

| model | test MAE ({result['unit']}) | test R^2 |
| --- | --- | --- |
| this model | {result['mae_dao_p']:.4f} | {result['r2_dao_p']:.3f} |
| composition baseline (gradient boosting) | {result['mae_baseline']:.4f} | {result['r2_baseline']:.3f} |
| predict the training mean | {result['mae_mean_predictor']:.4f} | 0 |

The baseline sees only the composition (element fractions + fraction-weighted statistics of 10 elemental
properties, scikit-learn HistGradientBoostingRegressor), fitted on the same training rows.

Limits: trained on ~6k binary/ternary MP-20 entries only (no quaternaries, at most 20 atoms); DFT-PBE labels.
"""


def supercon_cv(init: str, cfg: FineTuneConfig, max_atoms: int = 64, folds: int = 5, seed: int = 0,
                out_json: Path | None = None) -> dict:
    """5-fold CV of log Tc on ordered SuperCon3D structures with <= ``max_atoms`` atoms (DAO-P vs baseline)."""
    data = load_csv(data_root() / "supercon3d" / "data.csv.gz")
    keep = np.flatnonzero(data.num_atoms <= max_atoms)
    skipped = {**(data.skipped or {}), f"more than {max_atoms} atoms": int(len(data) - len(keep))}
    data = data.subset(keep)
    tc = data.meta["tc"].to_numpy(float)
    if (tc <= 0).any():
        raise XtalforgeError("SuperCon3D holds Tc <= 0 K: log target undefined")
    order = np.random.default_rng(seed).permutation(len(data))
    per_fold = []
    dao_p = DAOP.load(init)
    for k in range(folds):
        test_idx = np.sort(order[k::folds])
        train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
        train, test = data.subset(train_idx), data.subset(test_idx)
        model = PropertyRegressor.from_dao_p(dao_p, "tc", "tc", "K", tc[train_idx], log_target=True)
        model = fine_tune(model, train, tc[train_idx], cfg)
        pred = model.predict(test)
        baseline = CompositionBaseline(seed=seed).fit(cells_of(train), np.log(tc[train_idx]))
        base = np.exp(baseline.predict(cells_of(test)))
        y = tc[test_idx]
        per_fold.append({
            "fold": k, "n_train": len(train), "n_test": len(test),
            "mae_K_dao_p": float(np.abs(pred - y).mean()), "mae_K_baseline": float(np.abs(base - y).mean()),
            "mae_logtc_dao_p": float(np.abs(np.log(pred) - np.log(y)).mean()),
            "mae_logtc_baseline": float(np.abs(np.log(base) - np.log(y)).mean()),
            "r2_logtc_dao_p": r2(np.log(y), np.log(pred)), "r2_logtc_baseline": r2(np.log(y), np.log(base)),
            "cpu_seconds": model.meta["cpu_seconds"], "epochs": model.meta["epochs"],
        })
        print(json.dumps(per_fold[-1]))
    result = {"data": "supercon3d/data.csv.gz", "n_used": len(data), "skipped": skipped, "folds": per_fold,
              "mean": {key: float(np.mean([f[key] for f in per_fold])) for key in per_fold[0] if key != "fold"},
              "init_from": init, "fine_tune": vars(cfg)}
    if out_json:
        atomic_write_text(out_json, json.dumps(result, indent=2, default=str))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("property", choices=sorted(PROPERTIES))
    parser.add_argument("--init", required=True, help="DAO-P checkpoint to start from")
    parser.add_argument("--minutes", type=float, default=20.0, help="fine-tuning wall time (per fold for tc)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max_atoms", type=int, default=64, help="tc only: largest cell used")
    args = parser.parse_args(argv)
    cfg = FineTuneConfig(lr=args.lr, max_minutes=args.minutes, max_epochs=args.epochs)
    results = Path(__file__).resolve().parents[3] / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    if args.property == "tc":
        out = supercon_cv(args.init, cfg, args.max_atoms, out_json=results / "property_tc_cv.json")
        print(json.dumps(out["mean"], indent=2))
    else:
        out = train_mp_property(args.property, args.init, cfg, out_json=results / f"property_{args.property}.json")
        print(json.dumps({k: v for k, v in out.items() if k != "fine_tune"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
