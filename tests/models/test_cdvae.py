"""CDVAE: loss and training step, decoding (atom counts, composition, lattice from the heads), seeded sampling,
persistence, the resumable generation folder and its refusals. A tiny untrained model suffices for these."""

import json

import numpy as np
import pytest
import torch

from xtalforge.backbone.crysformer import CrysformerConfig
from xtalforge.data.batch import collate
from xtalforge.data.dataset import CrystalDataset
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.denovo import share_above_p1, uniqueness_novelty
from xtalforge.evaluation.matching import lattice_from_parameters
from xtalforge.models.cdvae import CDVAE, reconstruct, sample
from xtalforge.models.cdvae.model import lattice_features
from xtalforge.models.cdvae.sampler import (
    composition_counts,
    decode_stats,
    draw_latents,
    encode,
    fit_latent_mixture,
    sample_batch,
)

TINY = CrysformerConfig(hidden=16, layers=1, heads=2, n_freq=2, time_dim=8)


@pytest.fixture
def data(nacl, triclinic):
    for c, e in ((nacl, -2.0), (triclinic, -1.0)):
        c.properties["formation_energy_per_atom"] = e
    return CrystalDataset.from_crystals([nacl, triclinic])


@pytest.fixture
def model(data):
    torch.manual_seed(0)
    overrides = {"latent": 8, "max_atoms": 10, "n_sigmas": 5}
    return CDVAE.for_data(data, TINY, {"data": "test"}, "formation_energy_per_atom", overrides).eval()


def test_lattice_features_are_scaled_lengths_and_angles(nacl):
    feats = lattice_features(torch.tensor(nacl.lattice[None]), torch.tensor([8]))[0].numpy()
    np.testing.assert_allclose(feats, [5.64 / 2, 5.64 / 2, 5.64 / 2, 90, 90, 90], rtol=1e-6)


def test_loss_terms_are_finite_and_a_few_steps_lower_the_loss(model, data, one_thread, loss_curve):
    batch = collate(data, [0, 1], energy_column="formation_energy_per_atom")
    curve = loss_curve(model, batch)
    losses, logs = [lg["loss"] for lg in curve], curve[-1]
    assert set(logs) >= {"natom", "lattice", "composition", "property", "coord", "type", "kl"}
    assert np.isfinite(losses).all() and np.mean(losses[-4:]) < np.mean(losses[:4])


def test_composition_counts_sum_to_the_atom_count_and_follow_the_distribution():
    probs = torch.tensor([[0.2, 0.2, 0.6, 0.0], [0.5, 0.5, 0.0, 0.0], [0.34, 0.33, 0.33, 0.0]])
    counts = composition_counts(probs, torch.tensor([5, 3, 1]))
    assert counts.sum(-1).tolist() == [5, 3, 1]
    assert counts[0].tolist() == [1, 1, 3, 0]
    assert counts[2].tolist() == [1, 0, 0, 0]


def test_decoded_angles_always_make_a_cell_and_real_cells_keep_theirs():
    from xtalforge.models.cdvae.model import realisable_angles

    angles = torch.tensor([[120.0, 120.0, 120.0], [90, 90, 120], [60, 60, 60], [150, 150, 30]], dtype=torch.float64)
    fixed = realisable_angles(angles)
    torch.testing.assert_close(fixed[1:3], angles[1:3])  # hexagonal and fcc-primitive cells are left alone
    lattice = lattice_from_parameters(np.c_[np.full((4, 3), 4.0), fixed.numpy()])
    assert (np.abs(np.linalg.det(lattice)) > 0.2 * 64).all()


def test_decoding_starts_from_the_heads(model):
    z = torch.randn(6, model.cfg.latent, generator=torch.Generator().manual_seed(1))
    start = decode_stats(model, z)
    n = model.natom_head(z).argmax(-1).clamp(min=1)
    assert start.num_atoms.tolist() == n.tolist()
    counts = composition_counts(model.composition_head(z).softmax(-1), n)
    for b in range(6):
        types = start.types[b][start.mask[b]]
        assert torch.bincount(types - 1, minlength=counts.shape[1]).tolist() == counts[b].tolist()
    params = model.decode_lattice(z, n)
    np.testing.assert_allclose(start.lattice.norm(dim=-1).numpy(), params[:, :3].detach().numpy(), rtol=1e-4)


def test_sampling_is_seeded_and_gives_real_crystals(model, one_thread):
    a = sample(model, 5, seed=3)
    b = sample(model, 5, seed=3)
    c = sample(model, 5, seed=4)
    assert len(a) == 5
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.frac_coords, y.frac_coords)
        np.testing.assert_array_equal(x.numbers, y.numbers)
    assert any(not np.array_equal(x.frac_coords, y.frac_coords) for x, y in zip(a, c))
    for x in a:
        assert 1 <= x.num_atoms <= model.cfg.max_atoms and np.isfinite(x.lattice).all()
        assert ((x.frac_coords >= 0) & (x.frac_coords < 1)).all() and (x.numbers >= 1).all()
    # a batch can be remade on its own (what resuming relies on)
    again = sample_batch(model, 5, seed=3, index=0)
    np.testing.assert_array_equal(again[2].frac_coords, a[2].frac_coords)


def test_samplers_make_their_named_number_of_decoder_calls(model, monkeypatch, one_thread):
    from xtalforge.models.cdvae.sampler import decode

    calls = []
    real = model.score
    monkeypatch.setattr(model, "score", lambda *a: calls.append(1) or real(*a))
    z = torch.randn(2, model.cfg.latent, generator=torch.Generator().manual_seed(0))
    for name, per_level in (("fast", 1), ("medium", 10), ("faithful", 100)):
        calls.clear()
        crystals = decode(model, z, name, torch.Generator().manual_seed(0))
        assert len(calls) == per_level * model.cfg.n_sigmas and len(crystals) == 2
    with pytest.raises(XtalforgeError, match="unknown CDVAE sampler 'slow'"):
        decode(model, z, "slow")


def test_latent_mixture_draws_near_the_training_latents_and_survives_saving(model, data, tmp_path, one_thread):
    with pytest.raises(XtalforgeError, match="carry no latent mixture"):
        draw_latents(model, 3, torch.Generator(), "mixture")
    with pytest.raises(XtalforgeError, match="unknown latent source 'posterior'"):
        draw_latents(model, 3, torch.Generator(), "posterior")
    torch.testing.assert_close(draw_latents(model, 3, torch.Generator().manual_seed(1)),  # auto: the prior here
                               torch.randn(3, model.cfg.latent, generator=torch.Generator().manual_seed(1)))
    crystals = list(data) * 10  # 20 latents, two distinct: the mixture must sit on them
    mix = fit_latent_mixture(model, crystals, components=2)
    assert mix["means"].shape == (2, model.cfg.latent) and mix["cholesky"].shape == (2, 8, 8)
    mu = encode(model, data)
    z = draw_latents(model, 200, torch.Generator().manual_seed(0), "mixture")
    nearest = torch.cdist(z, mu).min(1).values
    prior = torch.cdist(draw_latents(model, 200, torch.Generator().manual_seed(0), "prior"), mu).min(1).values
    assert nearest.median() < 0.2 * prior.median()
    model.save(tmp_path / "m.pt")
    again = draw_latents(CDVAE.load(tmp_path / "m.pt"), 200, torch.Generator().manual_seed(0), "mixture")
    torch.testing.assert_close(again, z)
    torch.testing.assert_close(draw_latents(model, 200, torch.Generator().manual_seed(0)), z)  # auto: the mixture
    assert len(sample_batch(model, 4, seed=0, index=0, latent="mixture")) == 4


def test_save_load_round_trip_and_reconstruction(model, data, tmp_path):
    path = tmp_path / "cdvae.pt"
    model.save(path)
    loaded = CDVAE.load(path)
    batch = collate(data, [0, 1])
    torch.testing.assert_close(loaded.encode(batch)[0], model.encode(batch)[0])
    assert loaded.stats == model.stats
    assert len(reconstruct(loaded, data)) == 2
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(XtalforgeError, match="not a CDVAE checkpoint"):
        CDVAE.load(tmp_path / "bad.pt")
    with pytest.raises(XtalforgeError, match="no CDVAE weights"):
        CDVAE.load("no_such_benchmark")


def test_generation_folder_resumes_and_refuses_other_runs(model, tmp_path, one_thread):
    from xtalforge.generation import generate_to_folder, read_generated

    weights = tmp_path / "tiny.pt"
    model.save(weights)
    out = tmp_path / "gen"
    table = generate_to_folder(out, weights=str(weights), n=5, seed=1, batch_size=2)
    first = table.read_text()
    crystals, run = read_generated(out)
    assert len(crystals) == 5 and run["settings"]["seed"] == 1
    assert first.splitlines()[0].startswith("index,formula,atoms,spacegroup,density,smact_valid")
    # an interrupted run (last batch missing) finishes with what an uninterrupted one wrote
    (out / "batches" / "00002.jsonl").unlink()
    (out / "generated.csv").unlink()
    assert generate_to_folder(out, weights=str(weights), n=5, seed=1, batch_size=2).read_text() == first
    # batches made by two worker processes are the batches one process makes
    parallel = generate_to_folder(tmp_path / "two", weights=str(weights), n=5, seed=1, batch_size=2, workers=2)
    assert parallel.read_text() == first
    with pytest.raises(XtalforgeError, match="another run"):
        generate_to_folder(out, weights=str(weights), n=5, seed=2, batch_size=2)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(XtalforgeError, match="did not write"):
        generate_to_folder(out, weights=str(weights), n=5, seed=1, batch_size=2)
    assert json.loads((out / "run.json").read_text())["settings"]["n"] == 5
    with pytest.raises(XtalforgeError, match="whole number"):
        generate_to_folder(tmp_path / "none", weights=str(weights), n=0)
    with pytest.raises(XtalforgeError, match="unknown benchmark"):
        generate_to_folder(tmp_path / "none", data="no_such_set", n=1)


def test_uniqueness_novelty_and_symmetry_share(nacl, triclinic):
    from xtalforge.crystal import Crystal

    shifted = Crystal(nacl.lattice, nacl.frac_coords + 0.1, nacl.numbers)  # the same crystal, translated
    result = uniqueness_novelty([nacl, shifted, triclinic], [nacl])
    assert result["unique"] == pytest.approx(200 / 3)
    assert result["novel"] == pytest.approx(100 / 3)
    assert result["novel_flags"].tolist() == [False, False, True]
    assert share_above_p1([nacl, triclinic]) == 50.0


def test_uniqueness_sees_a_primitive_cell_and_its_supercell_as_one(nacl):
    from pymatgen.core import Lattice, Structure

    from xtalforge.crystal import Crystal

    primitive = Crystal.from_structure(nacl.to_structure().get_primitive_structure())  # 2 atoms against 8
    rocksalt_kcl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.29), ["K", "Cl"], [[0, 0, 0], [0.5] * 3])
    result = uniqueness_novelty([primitive, nacl, Crystal.from_structure(rocksalt_kcl)], [])
    assert result["unique_flags"].tolist() == [True, False, True]
    assert result["novel"] == 100.0


def test_latent_optimisation_moves_the_property_head_the_asked_way(model, data, one_thread):
    from xtalforge.models.cdvae.optimize import optimize_latents, optimize_property, success_rates

    z0 = model.predict_property(model.encode(collate(data, [0, 1]))[0]).detach()
    down = optimize_latents(model, data, steps=50, lr=0.05, snapshots=5)
    up = optimize_latents(model, data, steps=50, lr=0.05, snapshots=5, maximize=True)
    assert down.shape == (5, 2, model.cfg.latent)
    assert (model.predict_property(down[-1]) < z0).all() and (model.predict_property(up[-1]) > z0).all()
    assert all(p.requires_grad for p in model.parameters())  # the model is left trainable
    held = optimize_latents(model, data, steps=50, lr=0.05, snapshots=5, prior_weight=1.0)
    assert (held[-1].norm(dim=-1) < down[-1].norm(dim=-1)).all()  # the prior term keeps z nearer the prior's mass
    paths = optimize_property(model, data, steps=10, snapshots=2)
    assert len(paths) == 2 and all(len(p) == 2 for p in paths)
    rates = success_rates(np.array([[0.0, -3.0], [np.nan, np.nan], [5.0, 1.0]]), np.arange(100.0))
    assert rates == {"SR5": pytest.approx(2 / 3), "SR10": pytest.approx(2 / 3), "SR15": pytest.approx(2 / 3)}


def test_optimisation_folder_decodes_each_path_resumes_and_checks_the_property(model, data, tmp_path, one_thread):
    from xtalforge.generation import optimize_to_folder

    weights = tmp_path / "tiny.pt"
    model.save(weights)
    out = tmp_path / "opt"
    starts = list(data)
    table = optimize_to_folder(out, prop="formation_energy", starts=starts, weights=str(weights), steps=20, lr=0.05,
                               snapshots=4, batch_size=1, prior_weight=0.0)
    import pandas as pd

    frame = pd.read_csv(table)
    assert len(frame) == 8 and frame["start"].tolist() == [0] * 4 + [1] * 4
    assert frame["step"].tolist()[:4] == [5, 10, 15, 20] and frame["start_formula"][0] == starts[0].formula
    for _, rows in frame.groupby("start"):  # the head's value falls along each path
        assert rows["latent_property"].is_monotonic_decreasing
    assert all((out / f).is_file() for f in frame["file"])
    first = table.read_text()
    (out / "batches" / "00001.jsonl").unlink()
    assert optimize_to_folder(out, prop="formation_energy", starts=starts, weights=str(weights), steps=20, lr=0.05,
                              snapshots=4, batch_size=1, prior_weight=0.0).read_text() == first
    with pytest.raises(XtalforgeError, match="another run"):  # the default prior weight is another setting
        optimize_to_folder(out, prop="formation_energy", starts=starts, weights=str(weights), steps=20, lr=0.05,
                           snapshots=4, batch_size=1)
    with pytest.raises(XtalforgeError, match="optimise formation_energy, not 'band_gap'"):
        optimize_to_folder(tmp_path / "x", prop="band_gap", starts=starts, weights=str(weights))
    with pytest.raises(XtalforgeError, match="snapshots"):
        optimize_to_folder(tmp_path / "x", starts=starts, weights=str(weights), steps=3, snapshots=5)
    from xtalforge.crystal import Crystal

    c = starts[0]  # 8 atoms; a 1x1x3 supercell exceeds the tiny model's 10
    huge = Crystal(c.lattice * [[1], [1], [3]], np.concatenate([(c.frac_coords + [0, 0, k]) * [1, 1, 1 / 3]
                                                               for k in range(3)]), np.tile(c.numbers, 3))
    with pytest.raises(XtalforgeError, match="more atoms than"):
        optimize_to_folder(tmp_path / "x", starts=[huge], weights=str(weights))
    assert not (tmp_path / "x").exists()


def test_stability_proxy_compares_with_the_lowest_energy_per_formula(nacl, triclinic):
    from xtalforge.crystal import Crystal
    from xtalforge.evaluation.denovo import stability_proxy

    squeezed = Crystal(nacl.lattice * 0.8, nacl.frac_coords, nacl.numbers)  # the same formula, far higher energy
    result = stability_proxy([squeezed, triclinic], [nacl])
    assert result["training_crystals_compared"] == 1
    assert result["stable_flags"].tolist() == [False, True]  # the lone Sr-Ti-O sample is its own lowest
