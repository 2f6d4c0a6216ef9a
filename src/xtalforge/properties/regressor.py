"""Structure -> scalar property with the DAO-P backbone, fine-tuned per property on clean crystals.

A :class:`PropertyRegressor` is a Crysformer (initialised from DAO-P weights) whose scalar head predicts the
standardised label; the input is evaluated at the clean time step (``CLEAN_T`` of :mod:`xtalforge.models.dao_p`).
:func:`fine_tune` trains one on a dataset column, keeping the weights with the lowest MAE on a held-out part of the
training data, or on a given validation set (datasets with a real val split, e.g. the AFLOW property sets).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from xtalforge.backbone.crysformer import Crysformer, CrysformerConfig
from xtalforge.checkpoints import save_atomic
from xtalforge.crystal import Crystal
from xtalforge.data.batch import collate, size_bucketed_batches
from xtalforge.data.dataset import CrystalDataset
from xtalforge.device import torch_device
from xtalforge.errors import XtalforgeError
from xtalforge.models.dao_p import CLEAN_T, DAOP

FORMAT = "xtalforge-property-1"


class PropertyRegressor(nn.Module):
    """Crysformer + property scaling.

    Args:
        cfg: backbone configuration.
        name: property name (``formation_energy``, ``band_gap``, ...).
        label: the dataset column it was trained on.
        unit: unit of predictions (``eV/atom``, ``eV``, ``K`` ...).
        mean, std: label standardisation (in ``unit``, or in log units when ``log_target``).
        log_target: the network predicts ``log(y)`` (e.g. superconducting Tc); predictions are returned as ``y``.
        timesteps: T of the DAO-P it came from (the clean step is ``CLEAN_T / timesteps``).
        meta: training facts (data, steps, CPU time, test MAE ...).
    """

    def __init__(self, cfg: CrysformerConfig, name: str, label: str, unit: str, mean: float = 0.0, std: float = 1.0,
                 log_target: bool = False, timesteps: int = 1000, meta: dict | None = None) -> None:
        super().__init__()
        self.net = Crysformer(cfg)
        self.name, self.label, self.unit = name, label, unit
        self.mean, self.std, self.log_target, self.timesteps = mean, std, log_target, timesteps
        self.meta = dict(meta or {})

    @classmethod
    def from_dao_p(cls, dao_p: DAOP, name: str, label: str, unit: str, y: np.ndarray,
                   log_target: bool = False) -> PropertyRegressor:
        """A regressor starting from DAO-P's backbone (all heads included), scaled to the labels ``y``."""
        target = np.log(y) if log_target else np.asarray(y, dtype=np.float64)
        model = cls(dao_p.net.cfg, name, label, unit, float(target.mean()), float(target.std() or 1.0), log_target,
                    dao_p.timesteps, meta={"init_from": dao_p.meta.get("data", "")})
        model.net.load_state_dict(dao_p.net.state_dict())
        return model

    def forward(self, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """(B,) standardised prediction of clean crystals."""
        t = torch.full((lattice.shape[0],), CLEAN_T / self.timesteps, dtype=lattice.dtype, device=lattice.device)
        return self.net(lattice, frac, types, mask, t)["scalar"]

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """Labels in ``unit`` -> standardised regression target."""
        return ((torch.log(y) if self.log_target else y) - self.mean) / self.std

    def to_unit(self, scaled: torch.Tensor) -> torch.Tensor:
        """Standardised prediction -> ``unit``."""
        value = scaled * self.std + self.mean
        return torch.exp(value) if self.log_target else value

    @torch.no_grad()
    def predict(self, crystals: Sequence[Crystal] | CrystalDataset, batch_atoms: int = 2048) -> np.ndarray:
        """(M,) predictions in ``self.unit``."""
        data = crystals if isinstance(crystals, CrystalDataset) else CrystalDataset.from_crystals(list(crystals))
        was_training = self.training
        self.eval()
        out = np.zeros(len(data))
        dev = next(self.parameters()).device
        for idx in size_bucketed_batches(data.num_atoms, batch_atoms):
            b = collate(data, idx).to(dev)
            out[idx] = self.to_unit(self(b.lattice, b.frac, b.types, b.mask)).double().cpu().numpy()
        self.train(was_training)
        return out

    # ------------------------------------------------------------------ persistence
    def checkpoint(self) -> dict:
        return {"format": FORMAT, "config": self.net.cfg.to_dict(), "name": self.name, "label": self.label,
                "unit": self.unit, "mean": self.mean, "std": self.std, "log_target": self.log_target,
                "timesteps": self.timesteps, "meta": self.meta, "state_dict": self.state_dict()}

    def save(self, path: str | os.PathLike) -> None:
        """Write weights + scaling atomically."""
        save_atomic(self.checkpoint(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> PropertyRegressor:
        device = torch_device(device)
        ckpt = torch.load(path, map_location=device, weights_only=False)
        if ckpt.get("format") != FORMAT:
            raise XtalforgeError(f"{path} is not a property checkpoint (format {ckpt.get('format')!r})")
        model = cls(CrysformerConfig(**ckpt["config"]), ckpt["name"], ckpt["label"], ckpt["unit"], ckpt["mean"],
                    ckpt["std"], ckpt["log_target"], ckpt["timesteps"], ckpt["meta"])
        model.load_state_dict(ckpt["state_dict"])
        return model.to(device).eval()


@dataclass
class FineTuneConfig:
    """Fine-tuning settings: AdamW, linear warm-up then cosine decay, L1 loss on standardised labels.

    Attributes:
        lr, weight_decay, warmup_steps: optimiser.
        max_minutes: wall-time budget; the cosine schedule is laid out for ``max_epochs``.
        max_epochs: epochs over the training part.
        holdout: share of the training rows held out to pick the best epoch (never the test split).
        batch_atoms, max_crystals: batch size limits (padded atoms / crystals).
        seed, threads: as named.
    """

    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_minutes: float = 20.0
    max_epochs: int = 30
    holdout: float = 0.1
    batch_atoms: int = 2048
    max_crystals: int = 128
    seed: int = 0
    threads: int = 1


def fine_tune(model: PropertyRegressor, data: CrystalDataset, y: np.ndarray, cfg: FineTuneConfig,
              log=print, val: tuple[CrystalDataset, np.ndarray] | None = None) -> PropertyRegressor:
    """Train ``model`` on ``data`` with labels ``y`` (M,) in ``model.unit``; returns the best-holdout weights.

    Args:
        val: (dataset, labels) to pick the epoch on; then all of ``data`` is trained on and ``cfg.holdout`` is
            unused. Default: hold out ``cfg.holdout`` of ``data``.

    Records steps, epochs, wall/CPU seconds and the holdout MAE in ``model.meta``.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    y = np.asarray(y, dtype=np.float64)
    if val is None:
        perm = np.random.default_rng(cfg.seed).permutation(len(data))
        n_hold = max(1, int(round(cfg.holdout * len(data))))
        hold_idx, train_idx = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
        train, hold, y_hold = data.subset(train_idx), data.subset(hold_idx), y[hold_idx]
    else:
        train_idx = np.arange(len(data))
        train, (hold, y_hold) = data, (val[0], np.asarray(val[1], dtype=np.float64))
    y_train = torch.as_tensor(y[train_idx], dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(size_bucketed_batches(train.num_atoms, cfg.batch_atoms, None, cfg.max_crystals))
    total = max(1, cfg.max_epochs * steps_per_epoch)
    best = {"mae": math.inf, "epoch": -1, "state": copy.deepcopy(model.state_dict())}
    start, cpu0, step = time.time(), time.process_time(), 0
    for epoch in range(cfg.max_epochs):
        model.train()
        batches = size_bucketed_batches(train.num_atoms, cfg.batch_atoms, np.random.default_rng([cfg.seed, epoch]),
                                        cfg.max_crystals)
        losses = []
        for idx in batches:
            b = collate(train, idx)
            warm = min(1.0, (step + 1) / cfg.warmup_steps)
            lr = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = (model(b.lattice, b.frac, b.types, b.mask) - model.target(y_train[idx])).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
        mae = float(np.abs(model.predict(hold) - y_hold).mean())
        if mae < best["mae"]:
            best = {"mae": mae, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        log(f"{model.name} epoch {epoch} step {step} train_l1 {np.mean(losses):.4f} holdout_mae {mae:.4f} "
            f"({time.time() - start:.0f} s)")
        if time.time() - start > 60 * cfg.max_minutes:
            break
    model.load_state_dict(best["state"])
    model.meta.update({"fine_tune": asdict(cfg), "steps": step, "epochs": epoch + 1, "best_epoch": best["epoch"],
                       "holdout_mae": best["mae"], "n_train": len(train), "n_holdout": len(hold),
                       "holdout": "given val set" if val is not None else f"{cfg.holdout:.0%} of the training rows",
                       "wall_seconds": time.time() - start, "cpu_seconds": time.process_time() - cpu0})
    return model.eval()

