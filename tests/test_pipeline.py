"""The default pipeline (method "auto"): template candidates first, DAO-G samples only for the slots left empty."""

from pymatgen.core import Element

from xtalforge.methods import get_method


def _cell(formula: dict[str, int]) -> list[int]:
    return [Element(el).Z for el, count in formula.items() for _ in range(count)]


def test_templates_fill_without_loading_the_generator():
    auto = get_method("auto")
    (cands,) = auto.generate([_cell({"Na": 4, "Cl": 4})], n=3)
    assert len(cands) == 3 and {c.properties["method"] for c in cands} == {"template"}
    assert auto._generator is None, "a composition that templates fill must not load the network"


def test_generator_fills_short_rows_in_one_batch_and_ranks_them_last():
    auto = get_method("auto", steps=5)
    # the shipped library gives 8 template candidates for CsV3Sb5 and >= 12 for NaCl
    rows = auto.generate([_cell({"Na": 4, "Cl": 4}), _cell({"Cs": 1, "V": 3, "Sb": 5})], n=12, seed=1)
    assert [len(r) for r in rows] == [12, 12]
    assert {c.properties["method"] for c in rows[0]} == {"template"}
    methods = [c.properties["method"] for c in rows[1]]
    assert methods[0] == "template" and methods[-1] == "dao-g"
    assert methods == sorted(methods, key=lambda m: m != "template")
    scores = [c.properties["score"] for c in rows[1]]
    n_template = methods.count("template")
    assert max(scores[n_template:]) < min(scores[:n_template]), "generated candidates score below templates"
    assert all(sorted(c.numbers.tolist()) == sorted(_cell({"Cs": 1, "V": 3, "Sb": 5})) for c in rows[1])


def test_template_free_cells_alternate_templates_and_samples():
    auto = get_method("auto", steps=5)
    cell = _cell({"Li": 1, "Fe": 2, "O": 13})  # no library structure has counts (1, 2, 13)
    assert not auto.templates.has_template(cell)
    (row,) = auto.generate([cell], n=6, seed=0)
    assert [c.properties["method"] for c in row] == ["template", "dao-g"] * 3
    scores = [c.properties["score"] for c in row]
    assert scores == sorted(scores, reverse=True), "scores decrease down the list"
