import pytest

from xtalforge.composition import Target, anonymous_formula, parse_formula
from xtalforge.errors import AtomLimitError, FormulaError


def test_parse_counts_and_parentheses():
    assert parse_formula("CsV3Sb5") == {"Cs": 1, "V": 3, "Sb": 5}
    assert parse_formula("Ca(OH)2") == {"Ca": 1, "O": 2, "H": 2}
    assert parse_formula("Ga4Te4") == {"Ga": 4, "Te": 4}


@pytest.mark.parametrize(
    "formula, message",
    [("", "empty"), ("   ", "empty"), ("Xx2", "unknown element 'Xx'"), ("Na$Cl", "malformed"),
     ("(NaCl", "unbalanced"), ("NaCl)", "unbalanced"), ("Fe0.5Co0.5", "fractional"), ("nacl", "malformed")],
)
def test_bad_formulas(formula, message):
    with pytest.raises(FormulaError, match=message):
        Target.parse(formula)


def test_exact_cell_vs_reduced_formula():
    exact = Target.parse("Ga4Te4")
    assert exact.exact and exact.cells(20) == [[31] * 4 + [52] * 4]
    reduced = Target.parse("GaTe")
    assert not reduced.exact
    cells = reduced.cells(8)
    assert [len(c) for c in cells] == [2, 4, 6, 8]
    assert Target.parse("GaTe", z=3).cells(20) == [[31, 31, 31, 52, 52, 52]]


def test_atom_limit():
    with pytest.raises(AtomLimitError, match="limit is 20"):
        Target.parse("Ga40Te40").cells(20)
    with pytest.raises(AtomLimitError, match="per formula unit"):
        Target.parse("CsV30Sb51").cells(20)


def test_anonymous_formula():
    assert anonymous_formula([55, 23, 23, 23, 51, 51, 51, 51, 51]) == (1, 3, 5)
