"""Noise schedules as plain tensors indexed by the integer time t = 0..T (index 0 = clean data).

* Lattice: DDPM with the cosine schedule of Nichol & Dhariwal (s = 0.008), ``L_t = sqrt(abar_t) L_0 +
  sqrt(1 - abar_t) eps``.
* Fractional coordinates: wrapped normal with ``sigma_t`` exponential from ``sigma_begin`` (t = 1) to ``sigma_end``
  (t = T); ``sigma_norm_t = E[score^2]`` normalises the score target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from xtalforge.diffusion.wrapped_normal import sigma_norm


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """(T,) betas of the cosine schedule (float64), clipped to 0.999 at the end as in DDPM practice."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return torch.clamp(1 - abar[1:] / abar[:-1], 1e-8, 0.999)


@dataclass
class DiffusionSchedule:
    """Both schedules, every tensor of length T + 1 and float64 (index 0 is t = 0: no noise).

    Attributes:
        betas, alphas, alpha_bars: lattice DDPM (beta_0 = 0, abar_0 = 1).
        posterior_std: sigma~_t = sqrt(beta_t (1 - abar_{t-1}) / (1 - abar_t)) (0 at t = 0, 1).
        sigmas: wrapped-normal sigma_t (sigma_0 = 0).
        sigma_norms: E[score^2] at sigma_t (1 at t = 0, unused).
    """

    timesteps: int
    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bars: torch.Tensor
    posterior_std: torch.Tensor
    sigmas: torch.Tensor
    sigma_norms: torch.Tensor

    @classmethod
    def create(cls, timesteps: int = 1000, s: float = 0.008, sigma_begin: float = 0.005,
               sigma_end: float = 0.5) -> DiffusionSchedule:
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), cosine_betas(timesteps, s)])
        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
        posterior_var = betas * (1 - prev) / (1 - alpha_bars).clamp(min=1e-20)
        sig = np.exp(np.linspace(np.log(sigma_begin), np.log(sigma_end), timesteps))
        sigmas = torch.cat([torch.zeros(1, dtype=torch.float64), torch.as_tensor(sig)])
        norms = torch.cat([torch.ones(1, dtype=torch.float64), sigma_norm(sig)])
        return cls(timesteps, betas, alphas, alpha_bars, posterior_var.sqrt(), sigmas, norms)

    def to(self, device: torch.device | str) -> DiffusionSchedule:
        return DiffusionSchedule(self.timesteps, *(getattr(self, f).to(device) for f in (
            "betas", "alphas", "alpha_bars", "posterior_std", "sigmas", "sigma_norms")))
