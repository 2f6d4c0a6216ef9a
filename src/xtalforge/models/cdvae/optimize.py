"""Property optimisation in CDVAE's latent space (seed 002): gradient steps on z against the property head, then
decode. CDVAE's protocol: start from encoded test crystals, Adam (lr 1e-3) for 5,000 steps, decode ``snapshots``
evenly spaced latents along the path; success rates are judged by an independent predictor (:func:`success_rates`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xtalforge.crystal import Crystal
from xtalforge.data.dataset import CrystalDataset
from xtalforge.models.cdvae.model import CDVAE
from xtalforge.models.cdvae.sampler import DEFAULT_SAMPLER, decode, encode


def optimize_latents(model: CDVAE, crystals: Sequence[Crystal] | CrystalDataset, steps: int = 5000,
                     lr: float = 1e-3, snapshots: int = 10, maximize: bool = False,
                     prior_weight: float = 0.0) -> torch.Tensor:
    """(snapshots, M, D) latents along the optimisation path of each crystal's posterior mean (the last is the end
    point). The property head (standardised units) is minimised (``maximize=False``) or maximised; ``prior_weight``
    adds ``prior_weight * |z|^2 / 2``, the prior's negative log-density, which keeps the path where the decoder was
    trained (the paper: 0)."""
    z = encode(model, crystals).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for p in model.parameters():
        p.requires_grad_(False)
    keep = set(np.linspace(steps / snapshots, steps, snapshots).round().astype(int).tolist())
    path = []
    try:
        for step in range(1, steps + 1):
            value = model.property_head(z).sum()
            opt.zero_grad()
            ((-value if maximize else value) + prior_weight * 0.5 * (z ** 2).sum()).backward()
            opt.step()
            if step in keep:
                path.append(z.detach().clone())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return torch.stack(path)


def optimize_property(model: CDVAE, crystals: Sequence[Crystal] | CrystalDataset, steps: int = 5000,
                      lr: float = 1e-3, snapshots: int = 10, maximize: bool = False, sampler: str = DEFAULT_SAMPLER,
                      seed: int = 0, prior_weight: float = 0.0) -> list[list[Crystal]]:
    """For each starting crystal, the ``snapshots`` crystals decoded along its optimisation path (in path order)."""
    path = optimize_latents(model, crystals, steps, lr, snapshots, maximize, prior_weight)
    s, m, d = path.shape
    gen = torch.Generator().manual_seed(seed)
    flat: list[Crystal] = []
    for start in range(0, s * m, 256):
        flat += decode(model, path.reshape(s * m, d)[start:start + 256], sampler, gen)
    return [[flat[k * m + i] for k in range(s)] for i in range(m)]


def success_rates(values: np.ndarray, reference: np.ndarray, percentiles: Sequence[int] = (5, 10, 15),
                  maximize: bool = False) -> dict[str, float]:
    """SR_p: share of starting points whose best value along the path (``values`` (M, S), NaN for invalid decodes)
    reaches the p-th percentile of ``reference`` (the training labels), CDVAE's SR5 / SR10 / SR15."""
    best = np.nanmax(values, axis=1) if maximize else np.nanmin(values, axis=1)
    out = {}
    for p in percentiles:
        edge = np.percentile(reference, 100 - p if maximize else p)
        hit = best >= edge if maximize else best <= edge
        out[f"SR{p}"] = float(np.mean(np.where(np.isnan(best), False, hit)))
    return out
