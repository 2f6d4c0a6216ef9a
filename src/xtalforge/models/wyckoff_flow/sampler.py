"""Sampling the Wyckoff flow: Euler integration of its ODE from the prior to s = 1, with classifier-free guidance.

    sample_wyckoff_flow(model, batch, steps=50, guidance_scale=1.0, anti_anneal=0.0, generator=None)
        -> list[SymmetricCrystal]

``batch`` holds the requests (space group, orbits, optional target properties); its ``u`` and ``k`` are ignored.
With targets and ``guidance_scale`` w != 1 each step takes ``v_0 + w (v_c - v_0)`` (two network calls: with and
without the targets); w = 1 is the conditional model itself (one call).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from xtalforge.data.symmetric import SymmetricBatch
from xtalforge.models.dao_g.flow import COORD_UNIT
from xtalforge.symmetry.wyckoff import SymmetricCrystal


@torch.no_grad()
def sample_wyckoff_flow(model, batch: SymmetricBatch, steps: int = 50, guidance_scale: float = 1.0,
                        anti_anneal: float = 0.0, generator: torch.Generator | None = None,
                        callback: Callable[[dict], None] | None = None) -> list[SymmetricCrystal]:
    """One sample per request. ``anti_anneal`` multiplies the coordinate velocity by ``1 + anti_anneal * s``
    (FlowMM's inference anti-annealing, as DAO-G's flow sampler)."""
    dtype, dev = batch.k.dtype, batch.k.device
    b = batch.k.shape[0]
    u, k = model.prior(batch, generator)
    keep = ~torch.isnan(batch.properties)
    guided = guidance_scale != 1.0 and bool(keep.any())
    grid = np.linspace(0.0, 1.0, max(1, int(steps)) + 1)
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        st = torch.full((b,), float(s), dtype=dtype, device=dev)
        v_u, v_k = model(batch, u, k, st, keep)
        if guided:
            v_u0, v_k0 = model(batch, u, k, st, torch.zeros_like(keep))
            v_u = v_u0 + guidance_scale * (v_u - v_u0)
            v_k = v_k0 + guidance_scale * (v_k - v_k0)
        ds = float(s_next - s)
        u = torch.remainder(u + ds * (1 + anti_anneal * s) * v_u / COORD_UNIT, 1.0) * batch.u_free
        k = k + ds * v_k
        if callback is not None:
            callback({"i": i, "s": float(s_next), "u": u, "k": k})
    return batch.crystals(u=u, k=model.denormalise_k(batch, k))
