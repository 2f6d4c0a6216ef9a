"""The Wyckoff flow: loss and training step, every sample in the requested group and composition, the CSP method
and its errors. A tiny untrained model suffices for the guarantees, which hold by construction of the sampler."""

import numpy as np
import pytest
import torch

from xtalforge.backbone.crysformer import CrysformerConfig
from xtalforge.composition import Target
from xtalforge.data.symmetric import PROPERTIES, SymmetricDataset, collate_rows, collate_symmetric
from xtalforge.errors import AtomLimitError, XtalforgeError
from xtalforge.models.wyckoff_flow import SymmetryMethod, WyckoffFlow, sample_wyckoff_flow
from xtalforge.symmetry import Orbit, SymmetricCrystal, from_structure, has_group

TINY = CrysformerConfig(hidden=16, layers=1, heads=2, n_freq=2, time_dim=8)
#: (group, orbits): low symmetry (P-1, P2_1/c, C2/m) to high (Fm-3m, P6_3/mmc, Ia-3d)
REQUESTS = [
    (2, [(8, 0), (22, 7)]),
    (14, [(8, 0), (8, 0), (12, 1)]),
    (12, [(8, 0), (14, 1), (14, 2)]),
    (225, [(11, 11), (17, 10)]),
    (194, [(12, 9), (5, 6)]),
    (230, [(8, 0), (14, 5)]),
]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return WyckoffFlow(TINY, property_mean=[-1.0, 1.0], property_std=[1.0, 1.5], meta={"max_atoms": 60}).eval()


def shells(requests):
    return [SymmetricCrystal(g, [Orbit(z, w) for z, w in orbits], np.zeros(6)) for g, orbits in requests]


def test_loss_is_finite_and_a_few_steps_lower_it(model, nacl, triclinic, one_thread, loss_curve):
    data = SymmetricDataset.from_crystals([from_structure(c) for c in (nacl, triclinic)],
                                          np.array([[-2.0, 4.0], [np.nan, np.nan]]))
    batch = collate_rows(data, [0, 1])
    losses = [logs["loss"] for logs in loss_curve(model, batch)]
    assert np.isfinite(losses).all() and np.mean(losses[-4:]) < np.mean(losses[:4])


def test_every_sample_has_the_requested_group_and_composition(model, one_thread):
    batch = collate_symmetric(shells(REQUESTS * 3))
    samples = sample_wyckoff_flow(model, batch, steps=3, generator=torch.Generator().manual_seed(0))
    for (group, orbits), sym in zip(REQUESTS * 3, samples):
        crystal = sym.to_crystal()
        assert sym.spacegroup == group and has_group(sym.conventional(), group)
        want = {}
        for z, w in orbits:
            from xtalforge.symmetry import site_table

            want[z] = want.get(z, 0) + site_table(group, w).size
        assert dict(zip(*np.unique(crystal.numbers, return_counts=True))) == want
        assert np.isfinite(crystal.lattice).all() and crystal.volume > 0


def test_property_targets_change_the_samples_only_through_guidance(model, one_thread):
    batch = collate_symmetric(shells(REQUESTS[:2]))
    with_targets = batch.replace(properties=torch.tensor([[-2.0, 3.0]] * 2))
    a = sample_wyckoff_flow(model, batch, steps=2, generator=torch.Generator().manual_seed(1))
    b = sample_wyckoff_flow(model, with_targets, steps=2, generator=torch.Generator().manual_seed(1))
    assert all(x.spacegroup == y.spacegroup for x, y in zip(a, b))
    assert len(PROPERTIES) == 2


def test_save_load_and_the_csp_method(model, tmp_path, one_thread):
    path = tmp_path / "wf.pt"
    model.save(path)
    again = WyckoffFlow.load(path)
    assert torch.equal(again.property_mean, model.property_mean)
    method = SymmetryMethod(again, spacegroup=225, steps=2)
    out = method.generate([[11, 17]], 4)[0]
    assert len(out) == 4 and all(c.properties["spacegroup"] == 225 for c in out)
    assert sorted(out[0].numbers.tolist()) == [11, 17]
    # a reduced formula: Z enumerated over the cells the group can hold
    cands = method.predict_target(Target.parse("NaCl"), 6)
    assert len(cands) == 6 and {len(c.numbers) % 2 for c in cands} == {0}
    # given structures: their own symmetry
    from xtalforge.crystal import Crystal

    rutile = Crystal(np.diag([4.6, 4.6, 2.96]), [[0, 0, 0], [0.5, 0.5, 0.5], [0.3, 0.3, 0], [0.7, 0.7, 0],
                                                [0.8, 0.2, 0.5], [0.2, 0.8, 0.5]], [22, 22, 8, 8, 8, 8])
    got = method.generate([rutile], 2)[0]
    assert all(c.properties["spacegroup"] == 136 for c in got)


def test_bad_requests_are_one_line_errors(model):
    with pytest.raises(XtalforgeError, match="do not hold the composition"):
        SymmetryMethod(model, spacegroup=225, wyckoff="Na:a Cl:b").generate([[11, 11, 17, 17]], 1)
    with pytest.raises(XtalforgeError, match="no Wyckoff positions"):
        SymmetryMethod(model, spacegroup=230).generate([[11, 17]], 1)
    with pytest.raises(XtalforgeError, match="need a space group"):
        SymmetryMethod(model, wyckoff="Na:a")
    with pytest.raises(XtalforgeError, match="unknown target property"):
        SymmetryMethod(model, properties={"density": 3.0})
    with pytest.raises(AtomLimitError):
        SymmetryMethod(model, spacegroup=1).generate([[8] * 61], 1)
