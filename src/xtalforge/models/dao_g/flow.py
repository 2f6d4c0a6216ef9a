"""DAO-G with a flow-matching objective (FlowMM-style) on the same Crysformer backbone.

The noise process of :class:`~xtalforge.models.dao_g.model.DAOG` is replaced by straight conditional paths from a base
sample (L_0 ~ N(0, I) Angstrom, F_0 ~ U[0, 1)^3) to the data at flow time s = 1:

* lattice: ``L_s = (1 - s) L_0 + s L_1``, target velocity ``L_1 - L_0``;
* coordinates: the torus geodesic ``F_s = F_0 + s w(F_1 - F_0) mod 1`` (``w`` wraps into [-1/2, 1/2)), target
  velocity ``w(F_1 - F_0)`` minus its mean over the crystal's atoms (a common translation is not a change of the
  crystal, and the backbone's coordinate output is translation invariant).

The network sees the diffusion model's time convention, ``t / T = 1 - s`` (1 = noise), so a diffusion checkpoint
is a usable initialisation. Its outputs are the two velocities in units that make both targets of order one:
the lattice velocity divided by the typical lattice length ``(v N)^(1/3)`` and the coordinate velocity times
:data:`COORD_UNIT`. Sampling integrates the ODE (``xtalforge.diffusion.samplers.sample_flow``).
"""

from __future__ import annotations

import torch

from xtalforge.backbone.crysformer import typical_length
from xtalforge.data.batch import CrystalBatch
from xtalforge.models.dao_g.model import DAOG

#: scale of the normalised coordinate velocity (the wrapped difference of two uniform points has std ~0.29)
COORD_UNIT = 3.0


def wrap(x: torch.Tensor) -> torch.Tensor:
    """Shortest periodic displacement: x mod 1 into [-1/2, 1/2)."""
    return torch.remainder(x + 0.5, 1.0) - 0.5


class DAOGFlow(DAOG):
    """DAO-G trained by flow matching; times are the integer diffusion times t = 0..T of :class:`DAOG`
    (``s = 1 - t / T``), so ``forward`` has the same signature and the same meaning of ``t`` (T = noise)."""

    objective = "flow"
    default_sampler = "flow"

    def lattice_unit(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, 1) typical lattice length ``(volume_per_atom * n_atoms)^(1/3)`` in Angstrom."""
        return typical_length(mask, self.net.cfg.volume_per_atom, dtype)

    @staticmethod
    def path(lattice_1: torch.Tensor, frac_1: torch.Tensor, lattice_0: torch.Tensor, frac_0: torch.Tensor,
             s: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The point at flow time ``s`` ((B,) or a float) on the path from (L_0, F_0) to (L_1, F_1): ``L_s``, ``F_s``
        and the wrapped coordinate displacement ``w(F_1 - F_0)`` (unmasked)."""
        s = torch.as_tensor(s, dtype=lattice_1.dtype, device=lattice_1.device).reshape(-1, 1, 1)
        step = wrap(frac_1 - frac_0)
        return (1 - s) * lattice_0 + s * lattice_1, torch.remainder(frac_0 + s * step, 1.0), step

    def velocity(self, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
                 s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d L / ds (B, 3, 3) in Angstrom and d F / ds (B, N, 3) at flow times ``s`` (B,) in [0, 1]."""
        out = self.net(lattice, frac, types, mask, 1.0 - s.to(lattice.dtype))
        return out["lattice"] * self.lattice_unit(mask, lattice.dtype), out["coord"] / COORD_UNIT

    def squared_errors(self, batch: CrystalBatch, t: torch.Tensor, generator: torch.Generator | None = None,
                       eps=None, forward=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per crystal: the lattice velocity MSE (B,) and the coordinate velocity squared error summed over real
        atoms (B,), both in the network's normalised units, at integer times ``t`` (B,)."""
        forward = forward or self
        dtype, dev = batch.lattice.dtype, batch.lattice.device
        if eps is None:
            l0 = torch.randn(batch.lattice.shape, generator=generator, dtype=dtype).to(dev)
            f0 = torch.rand(batch.frac.shape, generator=generator, dtype=dtype).to(dev)
        else:
            l0, f0 = eps
        s = 1.0 - t.to(dtype) / self.timesteps
        mask = batch.mask.to(dtype)[..., None]
        lattice_s, frac_s, step = self.path(batch.lattice, batch.frac, l0, f0, s)
        step, frac_s = step * mask, frac_s * mask
        mean = step.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
        target_f = (step - mean) * mask * COORD_UNIT
        target_l = (batch.lattice - l0) / self.lattice_unit(batch.mask, dtype)
        out_l, out_f = forward(lattice_s, frac_s, batch.types, batch.mask, t)
        lattice_mse = ((out_l - target_l) ** 2).mean(dim=(1, 2))
        coord_sse = (((out_f - target_f) ** 2) * mask).sum(dim=(1, 2))
        return lattice_mse, coord_sse

    def checkpoint(self) -> dict:
        return {**super().checkpoint(), "objective": self.objective}
