"""DAO-G as a CSP method: save/load, registry, batched generation, Z prior for reduced formulas, refinement."""

import numpy as np
import pytest
import torch

from xtalforge.backbone.crysformer import CrysformerConfig
from xtalforge.composition import Target
from xtalforge.crystal import Crystal
from xtalforge.errors import AtomLimitError, XtalforgeError
from xtalforge.methods import CSPMethod, get_method
from xtalforge.models.dao_g import DAOG, DAOGMethod, TemplateRefine, reduced_key, z_prior

TINY = CrysformerConfig(hidden=16, layers=1, heads=2, n_freq=2, time_dim=8)


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    cells = [[8, 8, 22]] * 3 + [[8, 8, 8, 8, 22, 22]] * 5 + [[11, 11, 17, 17, 17]]
    model = DAOG(TINY, meta={"max_atoms": 12, "z_prior": z_prior(cells), "step_lr": 1e-5})
    path = tmp_path / "tiny.pt"
    model.save(path)
    return path


def test_save_load_roundtrip(weights):
    model = DAOG.load(weights)
    again = DAOG.load(weights)
    assert model.net.cfg == TINY and model.meta["max_atoms"] == 12
    batch_t = torch.tensor([3])
    args = (torch.eye(3)[None] * 4, torch.rand(1, 2, 3), torch.tensor([[11, 17]]), torch.ones(1, 2, dtype=bool))
    with torch.no_grad():
        assert torch.equal(model(*args, batch_t)[1], again(*args, batch_t)[1])
    with pytest.raises(XtalforgeError, match="no DAO-G weights"):
        DAOG.load("no_such_weights")


def test_registered_method_generates_ranked_candidates(weights):
    method = get_method("dao-g", weights=str(weights), steps=4)
    assert isinstance(method, CSPMethod) and method.name == "dao-g"
    targets = [[8, 8, 22], [38, 22, 8, 8, 8], [11, 17]]
    out = method.generate(targets, n=3, seed=1)
    assert [len(c) for c in out] == [3, 3, 3]
    for cands, target in zip(out, targets):
        scores = [c.properties["score"] for c in cands]
        assert scores == sorted(scores, reverse=True)
        for c in cands:
            assert isinstance(c, Crystal) and sorted(c.numbers.tolist()) == sorted(target)
            assert np.isfinite(c.lattice).all()
    again = method.generate(targets, n=3, seed=1)
    assert np.allclose(again[0][0].frac_coords, out[0][0].frac_coords)  # seeded


def test_atom_limit(weights):
    method = get_method("dao-g", weights=str(weights), steps=2)
    with pytest.raises(AtomLimitError):
        method.generate([[6] * 13], n=1)


def test_z_prior_for_reduced_formulas(weights):
    method = get_method("dao-g", weights=str(weights), steps=2)
    assert reduced_key([8, 8, 8, 8, 22, 22]) == ("1-2", 2)
    # TiO2: Z=1 seen 3 times, Z=2 seen 5 times in the tiny prior
    options = method.z_weights(Target.parse("TiO2"))
    assert [len(c) for c, _ in options] == [3, 6] and np.isclose(options[1][1], 5 / 8)
    cells = method.cells_for(Target.parse("TiO2"), n=8)
    assert sorted(len(c) for c in cells) == [3] * 3 + [6] * 5
    assert method.cells_for(Target.parse("Ti2O4"), n=3) == [[22, 22, 8, 8, 8, 8]] * 3
    cands = method.predict_target(Target.parse("TiO2"), n=8)
    assert len(cands) <= 8 and all(c.num_atoms in (3, 6) for c in cands)
    # unseen formula: the smallest Z with at least min_atoms (4) atoms
    options = method.z_weights(Target.parse("GaTe"))
    assert [len(c) for c, _ in options] == [4]


class FixedTemplates(CSPMethod):
    """Stand-in template method returning a known perovskite (tests refinement without a template library)."""

    name = "fixed"
    max_atoms = 12

    def generate(self, targets, n, seed=0):
        base = Crystal(np.eye(3) * 3.9, [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
                       [38, 22, 8, 8, 8], {"score": 1.0, "template_id": "t-1"})
        return [[base] * n for _ in targets]


def test_template_refinement_stays_close_at_small_t(weights):
    refiner = DAOGMethod(DAOG.load(weights), steps=3, step_lr=0.0)
    for mode, expected in (("refined", 2), ("both", 2)):
        method = TemplateRefine(FixedTemplates(), refiner, start_t=3, mode=mode)
        out = method.generate([[38, 22, 8, 8, 8]], n=2)
        assert len(out[0]) == expected
    refined = TemplateRefine(FixedTemplates(), refiner, start_t=3).generate([[38, 22, 8, 8, 8]], n=1)[0][0]
    assert refined.properties["refined_from"] == "t-1"
    d = (refined.frac_coords - FixedTemplates().generate([[0]], 1)[0][0].frac_coords + 0.5) % 1 - 0.5
    assert np.abs(d).max() < 0.05 and np.abs(refined.lattice - np.eye(3) * 3.9).max() < 0.3


def test_by_size_routes_each_cell_to_the_smallest_model_that_holds_it(tmp_path):
    from xtalforge.methods import BySize

    methods = []
    for name, limit in (("large", 12), ("small", 6)):
        torch.manual_seed(0)
        path = tmp_path / f"{name}.pt"
        DAOG(TINY, meta={"max_atoms": limit, "name": name, "step_lr": 1e-5}).save(path)
        methods.append(get_method("dao-g", weights=str(path), steps=2))
    routed = BySize(methods)
    assert routed.max_atoms == 12 and routed.name == "dao-g"
    assert [m["max_atoms"] for m in routed.settings()["by_size"]] == [6, 12]
    cells = [[8] * 8 + [22] * 2, [8, 8, 22], [11] * 6]
    samples = routed.sample_cells(cells, seed=0)
    assert [s.properties["weights"] for s in samples] == ["large", "small", "small"]
    assert all(sorted(s.numbers.tolist()) == sorted(c) for s, c in zip(samples, cells))
    # the small model's samples do not depend on what else was in the call
    alone = methods[1].sample_cells([[8, 8, 22], [11] * 6], seed=0)
    assert np.allclose(alone[0].frac_coords, samples[1].frac_coords)
    rows = routed.generate([[8] * 10, [8, 8, 22]], n=2)
    assert [{c.properties["weights"] for c in r} for r in rows] == [{"large"}, {"small"}]
    assert {c.properties["weights"] for c in routed.predict_target(Target.parse("Ti4O6"), n=2)} == {"large"}
    with pytest.raises(AtomLimitError, match="allow 12"):
        routed.sample_cells([[6] * 13])
    with pytest.raises(AtomLimitError, match="largest"):
        routed.predict_target(Target.parse("Ti5O9"), n=1)


def test_flow_weights_load_as_flow_and_refuse_diffusion_samplers(tmp_path):
    from xtalforge.models.dao_g.flow import DAOGFlow

    torch.manual_seed(0)
    path = tmp_path / "flow.pt"
    DAOGFlow(TINY, meta={"max_atoms": 12, "sampler_options": {"steps": 3, "anti_anneal": 2.0}}).save(path)
    model = DAOG.load(path)
    assert isinstance(model, DAOGFlow)
    method = DAOGMethod(model)  # sampler, steps and anti-annealing from the weights
    settings = method.settings()
    assert (settings["sampler"], settings["steps"], settings["anti_anneal"]) == ("flow", 3, 2.0)
    assert DAOGMethod(model, steps=5, anti_anneal=0.0).settings()["steps"] == 5
    assert [c.num_atoms for c in method.generate([[8, 8, 22]], 2)[0]] == [3, 3]
    with pytest.raises(XtalforgeError, match="does not fit"):
        DAOGMethod(model, sampler="pc")
    with pytest.raises(XtalforgeError, match="does not fit"):
        DAOGMethod(DAOG(TINY), sampler="flow")
    with pytest.raises(XtalforgeError, match="guidance"):
        DAOGMethod(model, guidance=1.0)


def test_sampler_options_are_checked_and_recorded(weights):
    model = DAOG.load(weights)
    assert "coord_scale" not in DAOGMethod(model).settings()  # defaults leave older run folders' settings alone
    assert DAOGMethod(model, coord_scale=1.5, eta=0.0).settings()["coord_scale"] == 1.5
    for bad in ({"coord_scale": 0.0}, {"eta": 2.0}, {"coord_scale": float("nan")}, {"anti_anneal": 1.0},
                {"sampler": "ode", "eta": 0.5}):
        with pytest.raises(XtalforgeError):
            DAOGMethod(model, **bad)
