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
    auto = get_method("auto", steps=5, redecorate_candidates=0)  # templates + DAO-G only (test_redecorate)
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
    auto = get_method("auto", steps=5, redecorate_candidates=0)  # without re-decorated templates (test_redecorate)
    cell = _cell({"Li": 1, "Fe": 2, "O": 13})  # no library structure has counts (1, 2, 13)
    assert not auto.templates.has_template(cell)
    (row,) = auto.generate([cell], n=6, seed=0)
    assert [c.properties["method"] for c in row] == ["template", "dao-g"] * 3
    scores = [c.properties["score"] for c in row]
    assert scores == sorted(scores, reverse=True), "scores decrease down the list"


def test_default_dao_g_samples_cells_above_20_atoms_with_the_mpts52_weights():
    dao_g = get_method("dao-g", steps=2)
    assert dao_g.max_atoms == 52
    small, large = dao_g.sample_cells([_cell({"Na": 2, "Cl": 2}), _cell({"Zr": 16, "Rh": 8, "O": 4})], seed=0)
    assert small.properties["weights"] == "mp20_flow" and large.properties["weights"] == "mpts52"
    assert large.num_atoms == 28 and large.volume / large.num_atoms > 3.0


def test_auto_generates_for_cells_above_20_atoms_only_with_the_mpts52_weights():
    cell = _cell({"Li": 1, "Fe": 4, "O": 17})  # 22 atoms, counts (1, 4, 17) in no library structure
    default = get_method("auto", steps=2, redecorate_candidates=10)
    assert not default.templates.has_template(cell)
    (row,) = default.generate([cell], n=4, seed=0)
    assert {c.properties["method"] for c in row} <= {"template", "redecorate"}, "the generator stops at 20 atoms"
    (row,) = get_method("auto", weights="mpts52", steps=2, redecorate_candidates=0).generate([cell], n=4, seed=0)
    generated = [c for c in row if c.properties["method"] == "dao-g"]
    assert generated and {c.properties["weights"] for c in generated} == {"mpts52"}
    assert all(sorted(c.numbers.tolist()) == sorted(cell) for c in generated)


def test_default_dao_g_is_the_flow_model_and_guidance_falls_back_to_the_diffusion_weights():
    """Energy guidance needs a score, which the flow-matching default weights do not have."""
    plain, guided = get_method("dao-g", steps=2), get_method("dao-g", steps=2, guidance=1.0)
    assert [m.sampler for m in plain.methods] == ["flow", "pc"]
    assert [m.model.meta["name"] for m in guided.methods] == ["mp20", "mpts52"]
    assert guided.methods[0].guidance == 1.0
