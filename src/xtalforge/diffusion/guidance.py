"""Energy guidance of DAO-G sampling by a time-conditioned energy model (DAO-P; reference §2).

The guided predictor step of reference §2 subtracts ``s * std_F^2 * grad_F E_t`` from the coordinate update and
``s * sigma~_t^2 * grad_L E_t`` from the lattice update (the corrector stays unguided). The samplers of
:mod:`xtalforge.diffusion.samplers` already scale and subtract a ``guidance`` hook's gradients in their predictor
step; :class:`EnergyGuidance` is that hook for an energy model: ``s`` times the autograd gradients of ``E_t``
w.r.t. L and F at the current noisy state and time.

    from xtalforge.diffusion.samplers import sample_pc
    samples = sample_pc(dao_g, batch, guidance=EnergyGuidance(dao_p, strength=1.0))
"""

from __future__ import annotations

from typing import Protocol

import torch


class EnergyModel(Protocol):
    def energy(self, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
               t: torch.Tensor) -> torch.Tensor:
        """(B,) energy of noised crystals at integer times t (B,), differentiable in lattice and frac."""


def energy_gradients(energy_model: EnergyModel, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor,
                     mask: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_L E_t (B, 3, 3), grad_F E_t (B, N, 3))`` by autograd, also inside ``torch.no_grad`` samplers.

    Each crystal's energy depends only on itself, so the gradient of the batch sum is the per-crystal gradient.
    Padding atoms get zero gradient.
    """
    with torch.enable_grad():
        lat = lattice.detach().requires_grad_(True)
        fr = frac.detach().requires_grad_(True)
        energy = energy_model.energy(lat, fr, types, mask, t)
        grad_l, grad_f = torch.autograd.grad(energy.sum(), (lat, fr))
    return grad_l.detach(), grad_f.detach() * mask[..., None].to(grad_f.dtype)


class EnergyGuidance:
    """The sampler ``guidance`` hook: ``(s * grad_L E_t, s * grad_F E_t)``.

    Args:
        energy_model: e.g. :class:`~xtalforge.models.dao_p.DAOP` (its ``energy`` is the scaled intermediate
            energy E_t, so ``strength`` is in units of that scale).
        strength: s of reference §2 (DAO uses 20 in its generate script, 1.0 for generation from a formula).
    """

    def __init__(self, energy_model: EnergyModel, strength: float = 1.0) -> None:
        self.energy_model = energy_model
        self.strength = strength

    def __call__(self, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
                 t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grad_l, grad_f = energy_gradients(self.energy_model, lattice, frac, types, mask, t)
        return self.strength * grad_l, self.strength * grad_f
