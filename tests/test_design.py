"""Design by property: charge-balanced compositions, the ranking of generated structures by their predicted
properties and energy, and one-line errors. A tiny untrained generator stands in for the shipped one; the property
heads and CHGNet are the shipped ones."""

from collections import Counter

import numpy as np
import pytest
import torch

from xtalforge.design import WINDOW, check_targets, compositions, design, hit_rate
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.denovo import smact_validity


def test_compositions_are_charge_balanced_and_reduced():
    comps = compositions(["Li", "Fe", "P", "O"], formula_atoms=7)
    assert {"Li": 1, "Fe": 1, "P": 1, "O": 4} in comps
    for c in comps:
        assert set(c) == {"Li", "Fe", "P", "O"} and sum(c.values()) <= 7
        assert smact_validity([n for n, k in zip((3, 26, 15, 8), c.values()) for _ in range(k)])
    sizes = [sum(c.values()) for c in comps]
    assert sizes == sorted(sizes)


def test_bad_requests_are_one_line_errors():
    with pytest.raises(XtalforgeError, match="unknown property"):
        check_targets({"density": 3.0})
    with pytest.raises(XtalforgeError, match="negative"):
        check_targets({"band_gap": -1.0})
    with pytest.raises(XtalforgeError, match="at least one target"):
        check_targets({})
    with pytest.raises(XtalforgeError, match="no charge-balanced"):
        compositions(["F", "Ne"], formula_atoms=4)
    with pytest.raises(XtalforgeError, match="Xx"):
        compositions(["Na", "Xx"])


def test_design_ranks_generated_structures_by_target_and_energy(one_thread):
    from xtalforge.backbone.crysformer import CrysformerConfig
    from xtalforge.models.symmetry_proposer import ProposerConfig, SymmetryProposer
    from xtalforge.models.wyckoff_flow import SymmetryMethod, WyckoffFlow

    torch.manual_seed(0)
    flow = WyckoffFlow(CrysformerConfig(hidden=16, layers=1, heads=2, n_freq=2, time_dim=8),
                       property_mean=[-1.0, 1.0], property_std=[1.0, 1.0], meta={"max_atoms": 60}).eval()
    proposer = SymmetryProposer(ProposerConfig(hidden=16, layers=1, heads=2)).eval()
    method = SymmetryMethod(flow, steps=4, source="proposer", proposer=proposer, max_requests=2,
                            properties={"band_gap": 4.0})
    targets = {"band_gap": 4.0}
    found = design(["Na", "Cl"], targets, max_atoms=8, n=5, compositions_tried=1, samples=4, method=method)
    assert 1 <= len(found) <= 4
    scores = [d.score for d in found]
    assert scores == sorted(scores)
    allowed = [(c["Na"], c["Cl"]) for c in compositions(["Na", "Cl"])]
    for d in found:
        counts = Counter(d.crystal.numbers.tolist())
        g = np.gcd(counts[11], counts[17])
        assert (counts[11] // g, counts[17] // g) in allowed and d.crystal.num_atoms <= 8
        assert set(d.predicted) == {"band_gap", "formation_energy"} and d.above_lowest >= 0
        miss = abs(d.predicted["band_gap"] - 4.0) / WINDOW["band_gap"]
        assert d.score == pytest.approx(miss + d.above_lowest / 0.1)
    rate = hit_rate(found, targets)["band_gap"]
    assert 0.0 <= rate <= 100.0


def test_design_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    from xtalforge.cli import main

    for args, message in ((["--elements", "Mg,O"], "at least one target"),
                          (["--elements", "F,Ne", "--band-gap", "1"], "no charge-balanced"),
                          (["--elements", "Mg,Qq", "--band-gap", "1"], "unknown element"),
                          (["--elements", "Mg,O", "--band-gap", "-2"], "negative")):
        out = tmp_path / "d"
        assert main(["design", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not out.exists()


def test_screening_puts_compositions_near_the_target_first(one_thread):
    from xtalforge.design import screen_compositions

    comps = compositions(["Li", "Fe", "P", "O"])
    screened = screen_compositions(comps, {"band_gap": 3.5}, limit=24)
    assert sorted(map(str, screened[:24])) == sorted(map(str, comps[:24])) and screened[24:] == comps[24:]
    assert {"Li": 1, "Fe": 1, "P": 1, "O": 4} in screened[:3]  # LiFePO4: an insulator of ~3.7 eV
    assert screen_compositions(comps, {"band_gap": 0.0}, limit=24)[:3] != screened[:3]  # the target steers it
