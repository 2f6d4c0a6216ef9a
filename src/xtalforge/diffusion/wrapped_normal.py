"""The wrapped normal distribution on the unit torus [0, 1)^3: score, its mean square, sampling.

``p(x) = sum_k N(x + k; 0, sigma^2)`` over integer images k. Its score ``d log p / dx`` is the training target of the
fractional coordinates (divided by ``sqrt(sigma_norm)``, the root mean square of the score at that sigma).
"""

from __future__ import annotations

import numpy as np
import torch


def wrapped_normal_score(x: torch.Tensor, sigma: torch.Tensor | float, n_images: int = 10) -> torch.Tensor:
    """Score ``d/dx log p_sigma(x)`` of the wrapped normal, elementwise (the true score: it points towards 0 mod 1).

    Args:
        x: displacements (any shape), in fractional units.
        sigma: broadcastable to ``x``.
        n_images: images k = -n_images..n_images summed (10 is exact to float precision for sigma <= 1).
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    x = torch.remainder(x + 0.5, 1.0) - 0.5  # the score is periodic; centring keeps the image sum accurate
    k = torch.arange(-n_images, n_images + 1, dtype=x.dtype, device=x.device)
    shifted = x[..., None] + k  # (..., 2 n_images + 1)
    s2 = (sigma**2)[..., None] if sigma.dim() else sigma**2
    log_w = -(shifted**2) / (2.0 * s2)
    w = torch.softmax(log_w, dim=-1)  # stable normalisation of the image weights
    return -(w * shifted).sum(dim=-1) / (sigma**2)


def sigma_norm(sigmas: np.ndarray | torch.Tensor, n_grid: int = 128, n_images: int = 4) -> torch.Tensor:
    """``E[score^2]`` of the wrapped normal at each sigma (float64), by quadrature over one period.

    The grid covers +-10 sigma (the mass outside is below 1e-20) or, for large sigma, one full period without its
    duplicated end point (the rectangle rule is then spectrally accurate for the periodic integrand); accurate to
    1e-13 relative for sigma in [0.005, 0.5] with 128 points (checked against 4000); it tends to 1 / sigma^2 as
    sigma -> 0.
    """
    sig = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
    half = torch.clamp(10.0 * sig, max=0.5)[:, None]
    u = torch.linspace(-1.0, 1.0, n_grid + 1, dtype=torch.float64)[None, :-1]
    x = half * u  # (S, G)
    k = torch.arange(-n_images, n_images + 1, dtype=torch.float64)
    dens = torch.exp(-((x[..., None] + k) ** 2) / (2.0 * sig[:, None, None] ** 2)).sum(-1)
    score = wrapped_normal_score(x, sig[:, None], n_images)
    return (dens * score**2).sum(-1) / dens.sum(-1)


def sample_wrapped_normal(mean: torch.Tensor, sigma: torch.Tensor | float,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, eps)`` with ``x = (mean + sigma * eps) mod 1``, ``eps ~ N(0, 1)`` of ``mean``'s shape."""
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return torch.remainder(mean + sigma * eps, 1.0), eps
