"""Re-decorated templates: same-size structures with a few atoms' species changed, ranked by CHGNet energy."""

from __future__ import annotations

import numpy as np
import pytest

from xtalforge.crystal import Crystal
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.matching import PairMatcher
from xtalforge.methods import get_method
from xtalforge.ranking import GENERATOR_POOL
from xtalforge.templates import RedecoratedTemplates, TemplateLibrary


def _rocksalt(cations: list[str], a: float = 5.9, mid: str = "") -> Crystal:
    """The 8-atom conventional rock-salt cell with the given four cations on the Na sites (Cl on the others)."""
    from pymatgen.core import Lattice, Structure

    na = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    cl = [[0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
    s = Structure(Lattice.cubic(a), cations + ["Cl"] * 4, na + cl)
    return Crystal.from_structure(s, {"material_id": mid})


@pytest.fixture(scope="module")
def library() -> TemplateLibrary:
    # KNa3Cl4 (counts 1, 3, 4) and, as the exact-count template redecoration must leave alone, K2Na2Cl4's twin Rb2Na2Cl4
    return TemplateLibrary.from_crystals([_rocksalt(["K", "Na", "Na", "Na"], mid="knacl"),
                                          _rocksalt(["Rb", "Rb", "Na", "Na"], mid="rbnacl")])


def test_one_move_redecorations_contain_the_target(library: TemplateLibrary) -> None:
    method = RedecoratedTemplates(library)
    target = _rocksalt(["K", "K", "Na", "Na"])  # counts (2, 2, 4): one Na of KNa3Cl4 becomes K
    maps = method.mappings(target.numbers)
    assert maps and all(lib_row == 0 for _, _, lib_row, _ in maps), "only the non-exact template is re-decorated"
    assert maps[0][0] == 1  # one atom changes species
    cands = method.candidates(target.numbers)
    for c in cands:
        assert sorted(c.numbers.tolist()) == sorted(target.numbers.tolist())
        assert c.properties["template_id"] == "knacl" and 1 <= c.properties["moves"] <= method.max_moves
    # the three Na sites of KNa3Cl4 are one orbit: each of the two one-move mappings (K->K or K->Na) gives one
    # decoration, not one per Na atom
    assert [c.properties["moves"] for c in cands].count(1) == 2 and cands[0].properties["moves"] == 1
    matcher = PairMatcher()
    truth = matcher.prepare(target.to_structure())
    assert matcher.rms(matcher.prepare(cands[0].to_structure()), truth) is not None


def test_generate_ranks_by_chgnet_energy_and_skips_what_it_cannot_serve(library: TemplateLibrary) -> None:
    method = get_method("redecorate", library=library, threads=1)
    target = _rocksalt(["K", "K", "Na", "Na"])
    (row, none) = method.generate([target.numbers.tolist(), [11, 17]], n=5)
    assert none == [], "no same-size structure: no candidates"
    energies = [c.properties["energy_per_atom"] for c in row]
    assert row and energies == sorted(energies) and np.isfinite(energies).all()
    assert all(c.properties["score"] == -c.properties["energy_per_atom"] for c in row)
    with pytest.raises(XtalforgeError, match="positive"):
        RedecoratedTemplates(library, max_moves=0)


def test_predict_reports_the_static_energy_that_ordered_redecorated_candidates(library: TemplateLibrary) -> None:
    from xtalforge.prediction import format_table, predict

    cands = predict("K2Na2Cl4", n=3, method="redecorate", library=library, threads=1)
    static = [c.row()["static_energy_eV_per_atom"] for c in cands]
    assert all(e is not None for e in static) and static == sorted(static)
    assert all(c.row()["energy_eV_per_atom"] is None for c in cands), "not relaxed: no relaxed energy"
    assert str(static[0]) in format_table(cands)


def test_auto_takes_redecorated_template_and_generated_candidates_in_turn_for_template_free_cells() -> None:
    from pymatgen.core import Element

    auto = get_method("auto", steps=5, redecorate_candidates=20)
    cell = [Element(el).Z for el, count in {"Li": 1, "Fe": 2, "O": 13}.items() for _ in range(count)]
    assert not auto.templates.has_template(cell)
    (row,) = auto.generate([cell], n=6, seed=0)
    assert [c.properties["method"] for c in row] == ["redecorate", "template", "dao-g"] * 2
    scores = [c.properties["score"] for c in row]
    assert scores == sorted(scores, reverse=True), "scores decrease down the list"
    assert all(sorted(c.numbers.tolist()) == sorted(cell) for c in row)
    assert "redecorator_settings" in auto.settings()
    # the generated slots are consensus leaders of a pool of samples, as --method dao-g ranks them
    assert auto.settings()["generator_pool"] == GENERATOR_POOL
    assert all(c.properties["consensus_matches"] is not None for c in row if c.properties["method"] == "dao-g")


def test_auto_can_fill_short_template_lists_with_redecorated_and_generated_candidates_in_turn() -> None:
    from pymatgen.core import Element

    auto = get_method("auto", steps=5, redecorate_candidates=20, redecorate_short_lists=True)
    cell = [Element(el).Z for el, count in {"Cs": 1, "V": 3, "Sb": 5}.items() for _ in range(count)]
    assert auto.templates.has_template(cell)
    (row,) = auto.generate([cell], n=12, seed=0)
    methods = [c.properties["method"] for c in row]
    n_template = methods.count("template")
    assert 0 < n_template < 12 and methods[:n_template] == ["template"] * n_template, "template candidates first"
    rest = methods[n_template:]
    assert rest[:2] == ["redecorate", "dao-g"] and set(rest) == {"redecorate", "dao-g"}
    scores = [c.properties["score"] for c in row]
    assert scores == sorted(scores, reverse=True), "scores decrease down the list"
    assert auto.settings()["short_list_policy"].startswith("templates, then redecorated")
