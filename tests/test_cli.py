"""The command line: one-line errors with exit code 2 and no partial output for bad input."""

import subprocess
import sys

import pytest

from xtalforge.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", ""], "empty formula"),
        (["predict", "Xx2O"], "unknown element 'Xx'"),
        (["predict", "Na(Cl"], "unbalanced"),
        (["predict", "NaCl", "--n", "0"], "n must be at least 1"),
        (["predict", "C200"], "limit"),
        (["evaluate", "--data", "nonexistent_set"], "no such data file"),
        (["predict", "NaCl", "--method", "template", "--guidance", "1"], "does not take guidance"),
        (["predict", "NaCl", "--method", "dao-g", "--guidance", "-1"], "guidance strength"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtalforge: error:") and message in err and "\n" not in err
    assert not list(tmp_path.iterdir()), "no output may be left behind after an error"


def test_relax_of_malformed_cif(tmp_path, capsys):
    bad = tmp_path / "bad.cif"
    bad.write_text("data_bad\n_cell_length_a 3.0\n_cell_length_b abc\n")
    assert main(["relax", str(bad)]) == 2
    assert "malformed CIF" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.cif"]


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "xtalforge.cli", "datasets"], capture_output=True, text=True)
    assert out.returncode == 0 and "mp_20_biternary" in out.stdout and "missing" not in out.stdout


def test_python_api_predicts_twice_and_writes_outputs(tmp_path):
    import xtalforge
    from xtalforge.prediction import write_candidates

    first = xtalforge.predict("NaCl", n=3)
    second = xtalforge.predict("KBr", n=3)  # the API stays callable after the first call
    assert second[0].structure.composition.reduced_formula == "KBr"
    assert [c.rank for c in first] == [1, 2, 3] and first[0].formula.startswith("Na")
    out = write_candidates(second, tmp_path / "kbr", {"formula": "KBr"})
    names = sorted(p.name for p in out.iterdir())
    assert names[:3] == ["01_" + second[0].formula + ".cif", "02_" + second[1].formula + ".cif",
                         "03_" + second[2].formula + ".cif"]
    assert {"run.json", "summary.csv", "summary.md"} <= set(names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_auto_fills_slots_templates_cannot_fill_with_dao_g():
    import xtalforge

    cands = xtalforge.predict("Ba2Mn3Sb2O2", n=16, seed=1)  # the shipped library holds fewer than 16 templates
    methods = [c.info["method"] for c in cands]
    assert len(cands) == 16 and methods[0] == "template" and methods[-1] == "dao-g"
    assert methods == sorted(methods, key=lambda m: m != "template"), "generated candidates rank after templates"
    assert all(c.crystal.to_structure().composition.reduced_formula == "Ba2Mn3(SbO)2" for c in cands)
