"""``predict`` and ``evaluate`` run one object (:func:`xtalforge.prediction.predictor`), so a benchmark measures what a
user gets; each candidate's Z is reported."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import xtalforge
from xtalforge.cli import main
from xtalforge.prediction import predictor


def _one_cell_csv(path, species):
    from pymatgen.core import Lattice, Structure

    coords = [[0, 0, 0], [0.5, 0.5, 0.25], [0.5, 0, 0.5], [0, 0.5, 0.75]][: len(species)]
    s = Structure(Lattice.tetragonal(4.2, 6.1), species, coords)
    pd.DataFrame({"material_id": ["one-1"], "cif": [s.to(fmt="cif")]}).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_evaluate_returns_the_candidates_predict_returns(tmp_path, one_thread):
    # atoms in the order predict builds the cell of Ga2Te2, so both sample the same cell
    csv = _one_cell_csv(tmp_path / "one.csv", ["Ga", "Ga", "Te", "Te"])
    run = tmp_path / "run"
    argv = ["evaluate", "--data", str(csv), "--method", "dao-g", "--pool", "8", "--steps", "5", "--k", "1,4",
            "--workers", "1", "--out", str(run)]
    assert main(argv) == 0
    evaluated = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    predicted = xtalforge.predict("Ga2Te2", n=4, method="dao-g", pool=8, steps=5, seed=0)
    assert len(evaluated) == 1 and len(evaluated[0]["candidates"]) == len(predicted) == 4
    for record, cand in zip(evaluated[0]["candidates"], predicted):
        assert record["numbers"] == cand.crystal.numbers.tolist()
        np.testing.assert_allclose(record["lattice"], cand.crystal.lattice, atol=2e-6)
        np.testing.assert_allclose(record["frac"], cand.crystal.frac_coords, atol=2e-6)
    assert all(c.info["rank_by"] == "consensus" and c.info["ranked_among"] == 8 for c in predicted)
    settings = json.loads((run / "settings.json").read_text())
    assert "consensus" in json.dumps(settings) and (run / "match_rate.png").is_file()


def test_predictor_ranks_generators_by_consensus_and_templates_in_their_order():
    assert predictor("template", n=5).by == "score" and predictor("template", n=5).pool == 5
    dao_g = predictor("dao-g", n=5, steps=2)
    assert dao_g.by == "consensus" and dao_g.pool == 60
    assert predictor("dao-g", n=5, rank_by="score", steps=2).pool == 5
    with pytest.raises(xtalforge.XtalforgeError, match="pool"):
        predictor("template", n=5, pool=2)


def test_each_candidate_states_its_z():
    cands = xtalforge.predict("GaTe", n=8, method="template")
    counts = {c.z for c in cands}
    assert all(c.z == np.gcd.reduce(np.unique(c.crystal.numbers, return_counts=True)[1]) for c in cands)
    assert all(c.row()["z"] == c.z for c in cands) and counts <= {1, 2, 3, 4, 5, 6, 7, 8}
    assert all(c.z == 2 for c in xtalforge.predict("GaTe", n=3, method="template", z=2))


def test_predict_refuses_to_overwrite_a_folder_of_other_files(tmp_path):
    from xtalforge.prediction import write_candidates

    cands = xtalforge.predict("NaCl", n=2, method="template")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(xtalforge.XtalforgeError, match="notes.txt"):
        write_candidates(cands, out, {"formula": "NaCl"}, report=False)
    (out / "notes.txt").unlink()
    write_candidates(cands, out, {"formula": "NaCl"}, report=False)
    write_candidates(cands[:1], out, {"formula": "NaCl"}, report=False)  # an earlier run's folder is replaced
    assert sorted(p.name for p in out.iterdir()) == ["01_" + cands[0].formula + ".cif", "run.json", "summary.csv",
                                                     "summary.md"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
