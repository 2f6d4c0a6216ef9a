"""Noise processes and samplers of DAO-G: exact scores, schedule identities, sampler contracts."""

import math

import numpy as np
import pytest
import torch

from xtalforge.backbone.crysformer import CrysformerConfig
from xtalforge.data.batch import collate_numbers
from xtalforge.diffusion.samplers import SAMPLERS, sample_flow, sample_ode, sample_pc, time_grid
from xtalforge.diffusion.schedules import DiffusionSchedule, cosine_betas
from xtalforge.diffusion.wrapped_normal import sample_wrapped_normal, sigma_norm, wrapped_normal_score
from xtalforge.models.dao_g import DAOG
from xtalforge.models.dao_g.flow import COORD_UNIT, DAOGFlow, wrap

TINY = CrysformerConfig(hidden=16, layers=1, heads=2, n_freq=2, time_dim=8)


def test_wrapped_normal_score_is_gradient_of_log_density():
    x = torch.linspace(-1.3, 1.7, 41, dtype=torch.float64, requires_grad=True)
    for sigma in (0.01, 0.1, 0.5):
        k = torch.arange(-10, 11, dtype=torch.float64)
        logp = torch.logsumexp(-((x[:, None] + k) ** 2) / (2 * sigma**2), dim=1)
        (grad,) = torch.autograd.grad(logp.sum(), x)
        assert torch.allclose(wrapped_normal_score(x.detach(), sigma), grad, atol=1e-8 / sigma**2)


def test_score_is_periodic():
    x = torch.rand(100, dtype=torch.float64)
    assert torch.allclose(wrapped_normal_score(x, 0.3), wrapped_normal_score(x + 3.0, 0.3), atol=1e-10)


def test_sigma_norm_matches_monte_carlo_and_small_sigma_limit():
    g = torch.Generator().manual_seed(0)
    for sigma in (0.02, 0.2, 0.5):
        x = torch.randn(400_000, generator=g, dtype=torch.float64) * sigma
        mc = (wrapped_normal_score(x, sigma) ** 2).mean()
        assert abs(float(sigma_norm([sigma])[0]) / float(mc) - 1) < 0.01
    assert abs(float(sigma_norm([0.005])[0]) * 0.005**2 - 1) < 1e-6


def test_schedule_identities():
    sched = DiffusionSchedule.create(1000)
    assert sched.alpha_bars[0] == 1 and float(sched.alpha_bars[-1]) < 1e-5
    assert torch.all(sched.alpha_bars[1:] < sched.alpha_bars[:-1])
    assert math.isclose(float(sched.sigmas[1]), 0.005) and math.isclose(float(sched.sigmas[-1]), 0.5)
    ratio = sched.sigmas[2:] / sched.sigmas[1:-1]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))  # exponential (geometric) spacing
    betas = cosine_betas(1000)
    assert torch.allclose(torch.cumprod(1 - betas, 0), sched.alpha_bars[1:])
    # posterior variance of DDPM: beta_t (1 - abar_{t-1}) / (1 - abar_t)
    t = 500
    expect = sched.betas[t] * (1 - sched.alpha_bars[t - 1]) / (1 - sched.alpha_bars[t])
    assert torch.isclose(sched.posterior_std[t] ** 2, expect)


def test_sample_wrapped_normal_wraps():
    x, eps = sample_wrapped_normal(torch.full((1000, 3), 0.99), 0.3, torch.Generator().manual_seed(0))
    assert float(x.min()) >= 0 and float(x.max()) < 1
    assert torch.allclose(torch.remainder(0.99 + 0.3 * eps, 1.0), x)


def test_time_grid():
    assert time_grid(1000, 1000) == list(range(1000, -1, -1))
    grid = time_grid(1000, 50)
    assert grid[0] == 1000 and grid[-1] == 0 and len(grid) == 51
    assert time_grid(30, 100) == list(range(30, -1, -1))


def _model(cls=DAOG):
    torch.manual_seed(0)
    return cls(TINY).eval()


def test_samplers_share_a_signature_and_respect_masks():
    batch = collate_numbers([[8, 8, 22], [38, 22, 8, 8, 8]])
    for name, fn in SAMPLERS.items():
        model = _model(DAOGFlow if name == "flow" else DAOG)
        calls: list[int] = []
        out = fn(model, batch, 10, step_lr=1e-5, generator=torch.Generator().manual_seed(0),
                 callback=lambda info, calls=calls: calls.append(info["t"]))
        assert calls[-1] == 0 and len(calls) == 10, name
        assert torch.all(out.frac[0, 3:] == 0) and torch.all(out.types == batch.types)
        assert float(out.frac.min()) >= 0 and float(out.frac.max()) < 1
        assert torch.isfinite(out.lattice).all()
        assert len(out.crystals()[1].numbers) == 5


def test_same_seed_same_samples():
    model = _model()
    batch = collate_numbers([[8, 8, 22]])
    a = sample_pc(model, batch, 5, generator=torch.Generator().manual_seed(3))
    b = sample_pc(model, batch, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.frac, b.frac) and torch.equal(a.lattice, b.lattice)


def test_start_t_refines_near_the_initial_structure():
    """Starting from a structure noised to a small t keeps it close (the template-refinement mode)."""
    model = _model()
    batch = collate_numbers([[38, 22, 8, 8, 8]])
    batch.lattice = torch.eye(3)[None] * 3.9
    batch.frac = torch.tensor([[[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]])
    for fn in (sample_pc, sample_ode, sample_flow):
        out = fn(_model(DAOGFlow) if fn is sample_flow else model, batch, 5, step_lr=0.0,
                 generator=torch.Generator().manual_seed(0), start_t=5)
        d = torch.remainder(out.frac - batch.frac + 0.5, 1.0) - 0.5
        assert float(d.abs().max()) < 0.05
        assert float((out.lattice - batch.lattice).abs().max()) < 0.2


@pytest.mark.slow
def test_pc_from_noise_with_the_exact_score_recovers_a_point_mass():
    """With the true score of a point-mass data set, the sampler must land on the data (checks signs/scales)."""
    sched = DiffusionSchedule.create(1000)
    f0 = torch.tensor([[[0.25, 0.5, 0.75], [0.1, 0.9, 0.3]]], dtype=torch.float64)
    l0 = torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))[None]

    class Oracle:
        schedule = sched
        timesteps = 1000
        net = type("Net", (), {"cfg": TINY})  # the sampler reads cfg.volume_per_atom for lattice clipping

        def score(self, lattice, frac, types, mask, t):
            abar = sched.alpha_bars[t][:, None, None]
            eps = (lattice - abar.sqrt() * l0) / (1 - abar).sqrt()
            return eps, wrapped_normal_score(frac - f0, sched.sigmas[t][:, None, None])

    batch = collate_numbers([[8, 8]], dtype=torch.float64)
    for fn, steps in ((sample_pc, 1000), (sample_pc, 50), (sample_ode, 50)):
        out = fn(Oracle(), batch, steps, step_lr=1e-5, generator=torch.Generator().manual_seed(0))
        d = torch.remainder(out.frac - f0 + 0.5, 1.0) - 0.5
        assert float(d.abs().max()) < 1e-3, (fn.__name__, steps)
        assert float((out.lattice - l0).abs().max()) < 1e-3, (fn.__name__, steps)


def test_loss_is_finite_and_masks_padding():
    model = _model()
    batch = collate_numbers([[8, 8, 22], [38, 22, 8, 8, 8]])
    batch.lattice = torch.eye(3).expand(2, 3, 3) * 4.0
    batch.frac = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(0)) * batch.mask[..., None]
    t = torch.tensor([10, 900])
    loss, logs = model.loss(batch, torch.Generator().manual_seed(0), t=t)
    assert np.isfinite(logs["loss"]) and math.isclose(logs["loss"], logs["loss_lattice"] + logs["loss_coord"],
                                                      rel_tol=1e-5)
    # junk in padded slots must not change the loss
    junk = batch.replace(frac=batch.frac + (~batch.mask)[..., None] * 0.37)
    loss2, _ = model.loss(junk, torch.Generator().manual_seed(0), t=t)
    assert torch.isclose(loss, loss2)
    # the per-crystal errors make up the batch loss: lattice MSEs averaged, coordinate errors over all real atoms
    with torch.no_grad():
        lattice_mse, coord_sse = model.squared_errors(batch, t, torch.Generator().manual_seed(0))
    assert lattice_mse.shape == coord_sse.shape == (2,)
    assert math.isclose(logs["loss_lattice"], float(lattice_mse.mean()), rel_tol=1e-5)
    assert math.isclose(logs["loss_coord"], float(coord_sse.sum()) / (3 * 8), rel_tol=1e-5)


def test_flow_sampler_with_the_exact_velocity_lands_on_a_point_mass():
    """The exact velocity of a point-mass data set (x_1 - x_s) / (1 - s) must carry Euler steps onto the data:
    checks the time direction and the unit conventions of DAOGFlow.velocity."""
    f1 = torch.tensor([[[0.25, 0.5, 0.75], [0.1, 0.9, 0.3]]], dtype=torch.float64)
    l1 = torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))[None]

    class Oracle:
        timesteps = 1000
        lattice_unit = DAOGFlow.lattice_unit
        net = type("Net", (), {"cfg": TINY})

        def velocity(self, lattice, frac, types, mask, s):
            left = (1 - s)[:, None, None]
            return (l1 - lattice) / left, wrap(f1 - frac) / left

    batch = collate_numbers([[8, 8]], dtype=torch.float64)
    for steps in (1, 7, 50):
        out = sample_flow(Oracle(), batch, steps, generator=torch.Generator().manual_seed(0))
        assert float(wrap(out.frac - f1).abs().max()) < 1e-9
        assert float((out.lattice - l1).abs().max()) < 1e-9


def test_flow_matching_targets():
    """DAOGFlow regresses the straight-path velocities, in its normalised units, over real atoms only; the
    coordinate target ignores a common translation of the crystal."""
    model = _model(DAOGFlow)
    batch = collate_numbers([[8, 8, 22], [38, 22, 8, 8, 8]])
    batch.lattice = torch.eye(3).expand(2, 3, 3) * 4.0
    batch.frac = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(0)) * batch.mask[..., None]
    l0, f0 = torch.randn(2, 3, 3), torch.rand(2, 5, 3)
    t = torch.tensor([10, 900])
    zero = lambda lattice, frac, types, mask, t: (torch.zeros_like(lattice), torch.zeros_like(frac))  # noqa: E731
    lattice_mse, coord_sse = model.squared_errors(batch, t, eps=(l0, f0), forward=zero)
    unit = model.lattice_unit(batch.mask, torch.float32)
    assert torch.allclose(lattice_mse, (((batch.lattice - l0) / unit) ** 2).mean(dim=(1, 2)))
    step = wrap(batch.frac[1] - f0[1])
    assert torch.isclose(coord_sse[1], ((COORD_UNIT * (step - step.mean(0))) ** 2).sum())
    shifted = batch.replace(frac=torch.remainder(batch.frac + 0.3, 1.0) * batch.mask[..., None])
    _, coord_shifted = model.squared_errors(shifted, t, eps=(l0, torch.remainder(f0 + 0.3, 1.0)), forward=zero)
    assert torch.allclose(coord_sse, coord_shifted, atol=1e-4)
    loss, logs = model.loss(batch, torch.Generator().manual_seed(0), t=t)
    junk = batch.replace(frac=batch.frac + (~batch.mask)[..., None] * 0.37)
    assert np.isfinite(logs["loss"]) and torch.isclose(loss, model.loss(junk, torch.Generator().manual_seed(0), t=t)[0])


def test_coord_scale_scales_the_coordinate_update():
    """The coordinate score is multiplied by coord_scale in every update (checked with a constant score)."""

    class ConstantScore(DAOG):
        def score(self, lattice, frac, types, mask, t):
            return torch.zeros_like(lattice), torch.full_like(frac, 0.01)

    torch.manual_seed(0)
    model = ConstantScore(TINY).eval()
    batch = collate_numbers([[8, 8, 22]])
    moved = {c: sample_ode(model, batch, 5, generator=torch.Generator().manual_seed(1), coord_scale=c).frac
             for c in (0.0, 1.0, 2.0)}
    d1, d2 = wrap(moved[1.0] - moved[0.0]), wrap(moved[2.0] - moved[0.0])
    assert float(d1.abs().min()) > 1e-3 and torch.allclose(d2, 2 * d1, atol=1e-5)
