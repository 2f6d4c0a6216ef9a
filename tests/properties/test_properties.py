"""Property models: exported composition trees, the shipped Tc model, the registry, fine-tuning with a val set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xtalforge.crystal import Crystal
from xtalforge.errors import XtalforgeError
from xtalforge.properties import (
    PROPERTIES,
    CompositionPropertyModel,
    available_properties,
    load_property_model,
    predict_property,
    weights_path,
)
from xtalforge.properties.baseline import TreeEnsemble

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny fits on a shared CPU: more threads only contend


def random_cells(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice([3, 8, 13, 26, 29, 41, 52, 56], int(rng.integers(2, 9))) for _ in range(n)]


def test_tree_export_matches_sklearn_including_missing_values() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    x[rng.uniform(size=x.shape) < 0.05] = np.nan  # NaNs exercise the learned missing-value direction
    y = np.nan_to_num(x[:, 0]) * 2 + np.sin(np.nan_to_num(x[:, 1])) + rng.normal(0, 0.1, 400)
    model = HistGradientBoostingRegressor(max_iter=60, random_state=0).fit(x[:300], y[:300])
    trees = TreeEnsemble.from_sklearn(model)
    np.testing.assert_allclose(trees.predict(x[300:]), model.predict(x[300:]), rtol=0, atol=1e-10)


def test_baseline_standardises_tiny_labels_and_exports_the_scaling() -> None:
    from xtalforge.properties.baseline import CompositionBaseline, composition_matrix

    cells = random_cells(200, seed=4)
    y = 1e-5 * np.array([1.0 + 4.0 * np.mean(c == 26) + 0.2 * len(c) for c in cells])  # thermal-expansion scale
    base = CompositionBaseline(max_iter=100).fit(cells[:150], y[:150])
    pred = base.predict(cells[150:])
    # labels of scale 1e-5 stop an unscaled booster at its first iterations (absolute tolerance): the same booster
    # fitted on the raw labels stays near the mean predictor
    raw = CompositionBaseline(max_iter=100)
    raw.model.fit(composition_matrix(cells[:150]), y[:150])
    mae = np.abs(pred - y[150:]).mean()
    assert mae < 0.5 * np.abs(y[150:] - y[:150].mean()).mean()
    assert mae < 0.6 * np.abs(raw.model.predict(composition_matrix(cells[150:])) - y[150:]).mean()
    np.testing.assert_allclose(base.trees().predict(composition_matrix(cells[150:])), pred, rtol=1e-12, atol=0)


def test_composition_model_round_trip_without_pickle(tmp_path) -> None:
    cells = random_cells(150)
    y = np.array([1.0 + 3.0 * np.mean(c == 41) + 0.1 * len(c) for c in cells])  # positive: log target allowed
    model = CompositionPropertyModel.fit(cells, y, "tc", "tc", "K", log_target=True)
    crystals = [Crystal(np.eye(3) * 4.0, np.random.default_rng(i).uniform(size=(len(c), 3)), c)
                for i, c in enumerate(cells[:20])]
    pred = model.predict(crystals)
    assert pred.shape == (20,) and (pred > 0).all()
    assert np.abs(pred - y[:20]).mean() < 0.5 * np.abs(y[:20] - y.mean()).mean()  # it learned the training rows
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:  # plain arrays only
        assert "table" in f.files and "header" in f.files
    again = CompositionPropertyModel.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(again.predict(crystals), pred)
    assert (again.name, again.unit, again.log_target) == ("tc", "K", True)


def test_composition_model_rejects_nonpositive_log_labels_and_foreign_files(tmp_path) -> None:
    with pytest.raises(XtalforgeError):
        CompositionPropertyModel.fit(random_cells(30), np.zeros(30), "tc", "tc", "K", log_target=True)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(XtalforgeError):
        CompositionPropertyModel.load(tmp_path / "other.npz")


def test_shipped_tc_is_the_composition_model(tmp_path, nacl) -> None:
    if "tc" not in available_properties():
        pytest.skip("no shipped Tc model")
    model = load_property_model("tc")
    assert isinstance(model, CompositionPropertyModel) and model.unit == "K" and model.log_target
    assert weights_path("tc").name == "composition_tc.npz" and PROPERTIES["tc"].model == "composition"
    assert model.meta["cv"]["mae_K"] < 10.0  # the recorded CV that justified shipping it
    path = tmp_path / "NaCl.cif"
    nacl.write(path)
    value = predict_property(path, "tc")
    assert value > 0 and value == pytest.approx(float(model.predict([nacl])[0]))
    # composition only: a different cell of the same composition gets the same Tc
    strained = Crystal(nacl.lattice * 1.1, nacl.frac_coords, nacl.numbers)
    assert predict_property(strained, "tc") == pytest.approx(value)


def test_composition_gets_a_generated_structure(nacl) -> None:
    from xtalforge.properties import resolve_structure

    assert resolve_structure(nacl) is nacl
    crystal = resolve_structure("Na4Cl4", method="template")
    assert crystal.properties["generated_by"] == "template" and sorted(crystal.numbers.tolist()) == [11] * 4 + [17] * 4
    if "tc" in available_properties():
        assert predict_property("Na4Cl4", "tc", method="template") == pytest.approx(predict_property(crystal, "tc"))
    with pytest.raises(XtalforgeError, match="neither a structure file nor a composition"):
        resolve_structure("no/such/file.cif")


def test_unknown_property_and_missing_model_kind() -> None:
    with pytest.raises(XtalforgeError, match="unknown property"):
        load_property_model("colour")
    with pytest.raises(XtalforgeError, match="unknown property model"):
        weights_path("tc", "xgboost")
    if not weights_path("tc", "dao_p").is_file():
        with pytest.raises(XtalforgeError, match="no shipped weights"):
            load_property_model("tc", "dao_p")




def test_fine_tune_selects_on_a_given_val_set(tmp_path) -> None:
    from xtalforge.backbone.crysformer import CrysformerConfig
    from xtalforge.data.dataset import CrystalDataset
    from xtalforge.models.dao_p import DAOP
    from xtalforge.properties.regressor import FineTuneConfig, PropertyRegressor, fine_tune

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    cells = random_cells(14, seed=3)
    crystals = [Crystal(np.diag(rng.uniform(3.5, 5.0, 3)), rng.uniform(size=(len(c), 3)), c) for c in cells]
    y = rng.uniform(50.0, 200.0, 14)
    train, val = CrystalDataset.from_crystals(crystals[:10]), CrystalDataset.from_crystals(crystals[10:])
    tiny = CrysformerConfig(hidden=32, layers=2, heads=4, n_freq=4, time_dim=16)
    model = PropertyRegressor.from_dao_p(DAOP(tiny, timesteps=50), "bulk_modulus", "bulk_modulus", "GPa", y[:10])
    logs: list[str] = []
    model = fine_tune(model, train, y[:10], FineTuneConfig(max_epochs=3, warmup_steps=1), log=logs.append,
                      val=(val, y[10:]))
    # every training row is trained on; the epoch is picked on the val rows, whose MAE is the one recorded
    assert model.meta["n_train"] == 10 and model.meta["n_holdout"] == 4 and model.meta["holdout"] == "given val set"
    assert model.meta["holdout_mae"] == pytest.approx(np.abs(model.predict(val) - y[10:]).mean(), rel=1e-5)
    assert len(logs) == 3


def test_aflow_properties_are_registered_with_units() -> None:
    units = {"bulk_modulus": "GPa", "shear_modulus": "GPa", "debye_temperature": "K",
             "thermal_conductivity": "W/(m K)", "thermal_expansion": "1/K"}
    for name, unit in units.items():
        assert PROPERTIES[name].unit == unit and PROPERTIES[name].model == "dao_p"
        assert weights_path(name).name == f"dao_p_{name}.pt"
    for name in set(units) & set(available_properties()):  # shipped ones load and predict in their unit
        model = load_property_model(name)
        assert model.unit == units[name] and model.meta["data"] == f"aflow_properties/{name}"
