"""DAO-P: exponential energy loss, energy head invariances, energy guidance, property regressors, baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xtalforge.backbone.crysformer import CrysformerConfig
from xtalforge.crystal import Crystal
from xtalforge.data.batch import collate, collate_numbers
from xtalforge.data.dataset import CrystalDataset
from xtalforge.diffusion.guidance import EnergyGuidance
from xtalforge.diffusion.samplers import sample_pc
from xtalforge.diffusion.schedules import DiffusionSchedule
from xtalforge.models.dao_p import DAOP, exponential_energy_loss, relax_with_energy
from xtalforge.properties.regressor import FineTuneConfig, PropertyRegressor, fine_tune

TINY = CrysformerConfig(hidden=32, layers=2, heads=4, n_freq=4, time_dim=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny fits on a shared CPU: more threads only contend


def random_crystals(n: int, seed: int = 0, atoms: tuple[int, int] = (2, 6)) -> list[Crystal]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(*atoms))
        lattice = np.diag(rng.uniform(3.0, 5.0, 3)) + rng.normal(0, 0.3, (3, 3))
        out.append(Crystal(lattice, rng.uniform(0, 1, (k, 3)), rng.choice([3, 8, 26, 31, 52], k)))
    return out


def test_exponential_loss_minimiser_is_soft_minimum() -> None:
    # one noised input, many possible clean energies: the minimiser is -log E[exp(-E_0)] (Proposition 1), which sits
    # below the mean that an MSE would give
    e0 = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    e_hat = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([e_hat], lr=0.5, max_iter=50)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = exponential_energy_loss(e_hat.expand(4), e0)
        loss.backward()
        return loss

    opt.step(closure)
    expected = -math.log(float(torch.exp(-e0).mean()))
    assert abs(e_hat.item() - expected) < 1e-3
    assert e_hat.item() < float(e0.mean()) - 0.3


def test_energy_head_shape_and_invariances() -> None:
    torch.manual_seed(0)
    model = DAOP(TINY, timesteps=50).eval()
    crystals = random_crystals(3)
    data = CrystalDataset.from_crystals(crystals)
    b = collate(data, [0, 1, 2], dtype=torch.float64)
    model = model.double()
    t = torch.tensor([1, 10, 40])
    e = model.energy(b.lattice, b.frac, b.types, b.mask, t)
    assert e.shape == (3,)
    # permutation of the atoms of every crystal (padding stays last)
    n_pad = b.mask.shape[1]
    perm = torch.stack([torch.cat([torch.randperm(int(n)), torch.arange(int(n), n_pad)]) for n in b.num_atoms])
    take = lambda x: torch.gather(x, 1, perm if x.dim() == 2 else perm[..., None].expand_as(x))  # noqa: E731
    e_perm = model.energy(b.lattice, take(b.frac), take(b.types), take(b.mask), t)
    # rotation of the Cartesian frame (rows of L rotate: L R^T) and a rigid translation of the fractional coordinates
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    e_rot = model.energy(b.lattice @ q.T, torch.remainder(b.frac + 0.37, 1.0), b.types, b.mask, t)
    assert torch.allclose(e, e_perm, atol=1e-9)
    assert torch.allclose(e, e_rot, atol=1e-9)
    assert model.float().predict_energy(crystals).shape == (3,)


def test_dao_p_loss_learns_energies_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    crystals = random_crystals(8, seed=1)
    data = CrystalDataset.from_crystals(crystals)
    energies = np.linspace(-2.0, 0.0, 8)
    data.meta["energy"] = energies
    model = DAOP.for_labels(energies, "energy", cfg=TINY, timesteps=50)
    batch = collate(data, np.arange(8), energy_column="energy")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(60):
        loss, logs = model.loss(batch, gen)
        first = first if first is not None else logs["loss_energy"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["loss_energy"] < 0.2 * first
    assert {"loss_lattice", "loss_coord", "loss_energy"} <= set(logs)
    model.eval()
    pred = model.predict_energy(crystals)
    assert np.abs(pred - energies).mean() < 0.5 * np.abs(energies - energies.mean()).mean()
    model.save(tmp_path / "p.pt")
    again = DAOP.load(tmp_path / "p.pt")
    assert again.energy_stats == model.energy_stats
    np.testing.assert_array_equal(again.predict_energy(crystals), pred)


class ToyEnergy:
    """E = mean_i sum_d (1 - cos 2 pi (f_id - 0.25)) + 0.05 |L - 4 I|^2: minimum at f = 0.25, L = 4 I."""

    def energy(self, lattice, frac, types, mask, t):
        m = mask.to(frac.dtype)[..., None]
        e_f = ((1 - torch.cos(2 * math.pi * (frac - 0.25))) * m).sum((1, 2)) / m.sum((1, 2))
        return e_f + 0.05 * ((lattice - 4 * torch.eye(3, dtype=lattice.dtype)) ** 2).sum((1, 2))


class NullScore:
    """A generator that knows nothing (zero noise and zero score): any structure in the samples comes from guidance."""

    def __init__(self, timesteps: int) -> None:
        self.schedule = DiffusionSchedule.create(timesteps)
        self.timesteps = timesteps

    def score(self, lattice, frac, types, mask, t):
        return torch.zeros_like(lattice), torch.zeros_like(frac)


def test_energy_guidance_lowers_toy_energy() -> None:
    model = NullScore(60)
    batch = collate_numbers([[8, 8, 26, 26]] * 16)
    coord_energy, lattice_error = {}, {}
    for s in (0.0, 20.0):
        out = sample_pc(model, batch, steps=60, generator=torch.Generator().manual_seed(3),
                        guidance=EnergyGuidance(ToyEnergy(), s), lattice_clip=None)
        assert out.frac.min() >= 0 and out.frac.max() < 1
        coord_energy[s] = (1 - torch.cos(2 * math.pi * (out.frac - 0.25))).sum((1, 2)).mean().item() / 4
        lattice_error[s] = (out.lattice - 4 * torch.eye(3)).norm(dim=(1, 2)).mean().item()
    # both parts of the toy energy end far closer to its minimum with guidance (the coordinate part is 3 for
    # uniformly random positions)
    assert coord_energy[20.0] < 0.5 * coord_energy[0.0]
    assert lattice_error[20.0] < 0.1 * lattice_error[0.0]


def test_energy_guidance_is_strength_times_gradient() -> None:
    lat = 4 * torch.eye(3).expand(2, 3, 3) + 0.1 * torch.randn(2, 3, 3)
    frac = torch.rand(2, 3, 3)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():  # samplers call the hook without autograd
        g_l, g_f = EnergyGuidance(ToyEnergy(), 3.0)(lat, frac, torch.ones(2, 3, dtype=torch.long), mask, None)
    n = mask.sum(1).to(frac.dtype)[:, None, None]
    expected_f = 3.0 * 2 * math.pi * torch.sin(2 * math.pi * (frac - 0.25)) / n * mask[..., None]
    assert torch.allclose(g_f, expected_f, atol=1e-5)
    assert torch.allclose(g_l, 3.0 * 0.1 * (lat - 4 * torch.eye(3)), atol=1e-5)


def test_relax_with_energy_lowers_energy_and_is_rotation_equivariant() -> None:
    torch.manual_seed(0)
    model = DAOP(TINY, timesteps=50).double().eval()
    crystals = random_crystals(5, seed=4)
    res = relax_with_energy(model, crystals, steps=15, max_strain=0.1)
    # every crystal's energy is non-increasing (steps are accepted only if they lower it) and most moved
    assert (res.energy_after <= res.energy_before + 1e-12).all()
    assert (res.energy_after < res.energy_before - 1e-6).sum() >= 4 and (res.accepted_steps > 0).all()
    for old, new in zip(crystals, res.crystals):
        np.testing.assert_array_equal(new.numbers, old.numbers)  # composition and atom order unchanged
        assert np.isfinite(new.lattice).all() and new.volume > 0.5 * old.volume
    assert (res.strain <= 0.1 + 1e-9).all()
    # rotate the Cartesian frame of the inputs: same energies, same fractional coordinates, rotated lattices
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    rotated = [Crystal(c.lattice @ q.T, c.frac_coords, c.numbers) for c in crystals]
    res_rot = relax_with_energy(model, rotated, steps=15, max_strain=0.1)
    np.testing.assert_allclose(res_rot.energy_after, res.energy_after, atol=1e-9)
    for a, b in zip(res.crystals, res_rot.crystals):
        np.testing.assert_allclose(b.lattice, a.lattice @ q.T, atol=1e-8)
        d = (b.frac_coords - a.frac_coords + 0.5) % 1.0 - 0.5
        assert np.abs(d).max() < 1e-8
    # the returned crystals carry the reported energies (predict_energy runs in float32)
    np.testing.assert_allclose(model.float().predict_energy(res.crystals), res.energy_after, atol=1e-4)


def test_property_regressor_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    crystals = random_crystals(12, seed=2)
    data = CrystalDataset.from_crystals(crystals)
    y = np.random.default_rng(0).uniform(0.5, 3.0, 12)
    base = DAOP(TINY, timesteps=50)
    model = PropertyRegressor.from_dao_p(base, "band_gap", "band_gap", "eV", y, log_target=True)
    model = fine_tune(model, data, y, FineTuneConfig(max_epochs=2, holdout=0.25, warmup_steps=1), log=lambda s: None)
    pred = model.predict(crystals)
    assert pred.shape == (12,) and (pred > 0).all()
    model.save(tmp_path / "band_gap.pt")
    again = PropertyRegressor.load(tmp_path / "band_gap.pt")
    np.testing.assert_array_equal(again.predict(crystals), pred)
    assert again.unit == "eV" and again.log_target and again.meta["epochs"] == 2


def test_composition_baseline_beats_mean_on_real_rows() -> None:
    pytest.importorskip("sklearn")
    from xtalforge.data.protocol import load_split
    from xtalforge.properties.baseline import CompositionBaseline

    data = load_split("mp_20_biternary", "val")
    idx = np.random.default_rng(0).permutation(len(data))[:800]
    cells = [data.atoms_of(i) for i in idx]
    y = data.meta["formation_energy_per_atom"].to_numpy()[idx]
    model = CompositionBaseline(max_iter=100).fit(cells[:600], y[:600])
    mae = np.abs(model.predict(cells[600:]) - y[600:]).mean()
    assert mae < 0.5 * np.abs(y[600:] - y[:600].mean()).mean()


def test_predict_property_reads_a_file(tmp_path, nacl) -> None:
    from xtalforge.properties import PROPERTIES, available_properties, load_property_model, predict_property

    names = available_properties()
    if not names:
        pytest.skip("no shipped property weights")
    path = tmp_path / "NaCl.cif"
    nacl.write(path)
    value = predict_property(path, names[0])
    assert value == pytest.approx(float(load_property_model(names[0]).predict([nacl])[0]), abs=1e-6)
    assert PROPERTIES[names[0]].unit in ("eV/atom", "eV", "K")


def test_dao_g_method_with_energy_guidance_changes_the_samples():
    from xtalforge.methods import get_method

    cell = [3, 3, 8]
    plain = get_method("dao-g", steps=4).sample_cells([cell], seed=0)[0]
    guided_method = get_method("dao-g", steps=4, guidance=20.0)
    guided = guided_method.sample_cells([cell], seed=0)[0]
    assert guided_method.settings()["guidance"] == 20.0 and guided_method.settings()["energy_weights"] == "energy_mp20"
    assert plain is not None and guided is not None
    assert not np.allclose(plain.frac_coords, guided.frac_coords), "the energy gradient must move the trajectory"
