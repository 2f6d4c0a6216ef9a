"""Samplers for DAO-G: plain functions with one signature (k-diffusion style).

    sampler(model, batch, steps, step_lr=..., generator=None, guidance=None, callback=None, start_t=None)
        -> CrystalBatch

``model`` is a :class:`~xtalforge.models.dao_g.DAOG` (anything with ``.schedule`` and ``.score``; for ``flow`` a
:class:`~xtalforge.models.dao_g.flow.DAOGFlow`, with ``.velocity``); ``batch`` holds
the compositions (``types``, ``mask``). Without ``start_t`` sampling starts from pure noise (L ~ N(0, I),
F ~ U[0, 1)); with ``start_t`` the batch's own lattice and coordinates are noised to ``start_t`` first and then
denoised, which refines a given structure (e.g. a template candidate) instead of generating from scratch.

``guidance(lattice, frac, types, mask, t) -> (grad_lattice, grad_frac)`` returns the gradient of the guidance
energy (strength included); it is subtracted in the predictor step scaled by the step's noise variance (reference §2).
``callback(info)`` is called after every step with a dict (``i``, ``t``, ``lattice``, ``frac``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from xtalforge.backbone.crysformer import typical_length
from xtalforge.data.batch import CrystalBatch

Guidance = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def time_grid(start_t: int, steps: int) -> list[int]:
    """Descending integer times start_t = t_0 > t_1 > ... > 0 with about ``steps`` evenly spaced steps."""
    grid = np.unique(np.round(np.linspace(0, start_t, min(steps, start_t) + 1)).astype(int))[::-1]
    return [int(t) for t in grid]


def _start(model, batch: CrystalBatch, start_t: int | None, generator: torch.Generator | None
           ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Initial (lattice, frac, t): pure noise at T, or the batch's structure noised to ``start_t``."""
    if start_t is None or start_t >= model.timesteps:
        return (*_prior(batch, generator), model.timesteps)
    t = torch.full((batch.lattice.shape[0],), int(start_t), dtype=torch.long, device=batch.lattice.device)
    noised = model.noise(batch, t, generator)
    return noised["lattice"], noised["frac"], int(start_t)


def _prior(batch: CrystalBatch, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise end of both processes: a standard normal lattice (B, 3, 3) and uniform fractional coordinates."""
    lattice = _randn(batch.lattice, generator)  # drawn first: the order fixes what a seed gives
    frac = torch.rand(batch.frac.shape, generator=generator, dtype=batch.frac.dtype).to(batch.frac.device)
    return lattice, frac


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


@torch.no_grad()
def sample_pc(model, batch: CrystalBatch, steps: int = 1000, step_lr: float = 1e-5,
              generator: torch.Generator | None = None, guidance: Guidance | None = None,
              callback: Callable[[dict], None] | None = None, start_t: int | None = None,
              eta: float = 1.0, lattice_clip: float | None = 3.0, coord_scale: float = 1.0) -> CrystalBatch:
    """Predictor-corrector sampling (DiffCSP / DAO-G, reference §2): 2 network calls per step.

    With ``steps`` = T this is the faithful sampler: a Langevin corrector on F with step size
    ``step_lr * (sigma_t / sigma_1)^2``, then the ancestral predictor (DDPM posterior step on L, reverse VE step on
    F). With fewer steps the same updates are taken between strided times t > s (for L the DDIM update with
    ``eta`` = 1, which equals the DDPM posterior step when s = t - 1).

    Args:
        steps: number of predictor steps (<= T).
        step_lr: corrector step size (5e-7 Perov-5, 5e-6 Carbon-24, 1e-5 MP-20 / MPTS-52); 0 disables it.
        eta: lattice noise of the strided update (1 = ancestral, 0 = deterministic DDIM).
        lattice_clip: clip the predicted clean lattice entries to +- lattice_clip * (v N)^(1/3) Angstrom (v = the
            backbone's ``volume_per_atom``; None disables). Without it the first steps from t = T, where
            1 / sqrt(abar_T) ~ 2e4 amplifies any error of eps_L, can blow the lattice up.
        coord_scale: factor on the coordinate score in predictor and corrector (> 1 samples a sharper,
            lower-temperature density, approximately p^coord_scale; 1 = the model's own).
    """
    return _sample(model, batch, steps, step_lr, generator, guidance, callback, start_t, eta, False, lattice_clip,
                   coord_scale)


@torch.no_grad()
def sample_ode(model, batch: CrystalBatch, steps: int = 50, step_lr: float = 0.0,
               generator: torch.Generator | None = None, guidance: Guidance | None = None,
               callback: Callable[[dict], None] | None = None, start_t: int | None = None,
               lattice_clip: float | None = 3.0, coord_scale: float = 1.0) -> CrystalBatch:
    """Deterministic few-step sampler: 1 network call per step.

    DDIM (eta = 0) on the lattice and the probability-flow ODE ``dF = -1/2 d(sigma^2) score`` on the coordinates
    (Euler steps on the torus). Randomness comes only from the starting noise. ``step_lr`` is ignored;
    ``coord_scale`` as in :func:`sample_pc`.
    """
    return _sample(model, batch, steps, 0.0, generator, guidance, callback, start_t, 0.0, True, lattice_clip,
                   coord_scale)


def _sample(model, batch, steps, step_lr, generator, guidance, callback, start_t, eta, predictor_only, lattice_clip,
            coord_scale=1.0):
    sched = model.schedule
    dtype, dev = batch.lattice.dtype, batch.lattice.device
    types, mask = batch.types, batch.mask
    mask_f = mask.to(dtype)[..., None]
    lattice, frac, t0 = _start(model, batch, start_t, generator)
    frac = frac * mask_f
    b = lattice.shape[0]
    abar = sched.alpha_bars.tolist()
    sig = sched.sigmas.tolist()
    grid = time_grid(t0, steps)
    bound = None
    if lattice_clip:  # a generous bound on lattice entries: lattice_clip x the edge of a cube of typical volume
        bound = lattice_clip * typical_length(mask, model.net.cfg.volume_per_atom, dtype)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        tt = torch.full((b,), t, dtype=torch.long, device=dev)
        if step_lr > 0 and not predictor_only:  # Langevin corrector on F at level t
            _, score = model.score(lattice, frac, types, mask, tt)
            score = coord_scale * score
            step = step_lr * (sig[t] / sig[1]) ** 2
            frac = torch.remainder(frac + step * score + (2 * step) ** 0.5 * _randn(frac, generator), 1.0) * mask_f
        eps, score = model.score(lattice, frac, types, mask, tt)
        score = coord_scale * score
        # lattice: DDIM update t -> s through the predicted clean lattice (for eta = 1 and s = t - 1 this is the
        # DDPM posterior step); near t = T, abar_t ~ 1e-9 makes that prediction ill-conditioned, so it is clipped
        l0 = (lattice - (1 - abar[t]) ** 0.5 * eps) / abar[t] ** 0.5
        if bound is not None:
            l0 = torch.maximum(torch.minimum(l0, bound), -bound)
            eps = (lattice - abar[t] ** 0.5 * l0) / (1 - abar[t]) ** 0.5
        noise_l = eta * ((1 - abar[s]) / (1 - abar[t]) * (1 - abar[t] / abar[s])) ** 0.5
        lat_next = abar[s] ** 0.5 * l0 + max(0.0, 1 - abar[s] - noise_l**2) ** 0.5 * eps
        # coordinates: reverse VE step sigma_t -> sigma_s
        dvar = sig[t] ** 2 - sig[s] ** 2
        if predictor_only:
            # Euler step of the probability-flow ODE; the last step to t = 0 is the Tweedie denoising step instead
            # (an Euler step would only halve the remaining displacement there)
            frac_next, std_f = frac + (dvar if s == 0 else 0.5 * dvar) * score, 0.0
        else:
            std_f = (sig[s] ** 2 * dvar / sig[t] ** 2) ** 0.5
            frac_next = frac + dvar * score
        if guidance is not None:
            grad_l, grad_f = guidance(lattice, frac, types, mask, tt)
            lat_next = lat_next - noise_l**2 * grad_l
            frac_next = frac_next - std_f**2 * grad_f
        if noise_l > 0:
            lat_next = lat_next + noise_l * _randn(lattice, generator)
        if std_f > 0:
            frac_next = frac_next + std_f * _randn(frac, generator)
        lattice, frac = lat_next, torch.remainder(frac_next, 1.0) * mask_f
        if callback is not None:
            callback({"i": i, "t": s, "lattice": lattice, "frac": frac})
    return batch.replace(lattice=lattice, frac=frac)


@torch.no_grad()
def sample_flow(model, batch: CrystalBatch, steps: int = 50, step_lr: float = 0.0,
                generator: torch.Generator | None = None, guidance: Guidance | None = None,
                callback: Callable[[dict], None] | None = None, start_t: int | None = None,
                lattice_clip: float | None = 3.0, coord_scale: float = 1.0, anti_anneal: float = 0.0) -> CrystalBatch:
    """Euler integration of a flow-matching DAO-G (:class:`~xtalforge.models.dao_g.flow.DAOGFlow`) from s = 0 (or
    from the batch's structure on its path at ``s = 1 - start_t / T``) to s = 1: 1 network call per step.

    ``coord_scale`` multiplies the coordinate velocity, ``anti_anneal`` a further ``1 + anti_anneal * s`` (FlowMM's
    inference anti-annealing: late steps move the atoms harder). ``lattice_clip`` bounds the predicted final lattice
    as in :func:`sample_pc`. ``step_lr`` is ignored; guidance is not implemented for flows.
    """
    if guidance is not None:
        raise ValueError("energy guidance is implemented for the diffusion samplers only")
    dtype, dev = batch.lattice.dtype, batch.lattice.device
    types, mask = batch.types, batch.mask
    mask_f = mask.to(dtype)[..., None]
    b = batch.lattice.shape[0]
    lattice, frac = _prior(batch, generator)
    s0 = 0.0
    if start_t is not None and start_t < model.timesteps:
        s0 = 1.0 - start_t / model.timesteps
        lattice, frac, _ = model.path(batch.lattice, batch.frac, lattice, frac, s0)
    frac = frac * mask_f
    grid = np.linspace(s0, 1.0, steps + 1)
    bound = None
    if lattice_clip:
        bound = lattice_clip * model.lattice_unit(mask, dtype)
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        v_l, v_f = model.velocity(lattice, frac, types, mask, torch.full((b,), float(s), dtype=dtype, device=dev))
        if bound is not None:  # clip the lattice this velocity would end at, as sample_pc clips its l0
            end = torch.maximum(torch.minimum(lattice + (1 - s) * v_l, bound), -bound)
            v_l = (end - lattice) / (1 - s)
        ds = s_next - s
        lattice = lattice + ds * v_l
        frac = torch.remainder(frac + ds * coord_scale * (1 + anti_anneal * s) * v_f, 1.0) * mask_f
        if callback is not None:
            callback({"i": i, "t": int(round((1 - s_next) * model.timesteps)), "lattice": lattice, "frac": frac})
    return batch.replace(lattice=lattice, frac=frac)


SAMPLERS: dict[str, Callable[..., CrystalBatch]] = {"pc": sample_pc, "ode": sample_ode, "flow": sample_flow}
