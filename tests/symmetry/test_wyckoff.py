"""The Wyckoff layer: descriptions that rebuild their crystal, exact symmetry of built cells, assignments, errors."""

import numpy as np
import pytest
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from xtalforge.crystal import Crystal
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.matching import MatchTolerance
from xtalforge.symmetry import (
    Orbit,
    SymmetricCrystal,
    assignments,
    check_assignment,
    check_group,
    from_structure,
    gram_to_k,
    group_info,
    has_group,
    k_to_lattice,
    parse_wyckoff,
)
from xtalforge.symmetry.lattice import crystal_system, fixed_values, free_mask

#: low and high symmetry, every centring (P, C, I, F, R) and every crystal system
GROUPS = [1, 2, 14, 12, 15, 62, 63, 70, 139, 141, 148, 166, 186, 191, 194, 216, 221, 225, 227, 229, 230]


def test_rock_salt_is_fm3m_with_a_and_b(nacl):
    sym = from_structure(nacl)
    assert sym.spacegroup == 225 and sorted(sym.wyckoff) in (["Cl 4b", "Na 4a"], ["Cl 4a", "Na 4b"])
    prim = sym.to_crystal()
    assert prim.num_atoms == 2 and abs(prim.volume - nacl.volume / 4) < 1e-6
    # conventional or primitive input: the same description
    again = from_structure(prim)
    assert again.spacegroup == 225 and np.allclose(again.k, sym.k)


def test_descriptions_rebuild_their_crystal(nacl, triclinic):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    tol = MatchTolerance()
    matcher = StructureMatcher(stol=tol.stol, ltol=tol.ltol, angle_tol=tol.angle_tol)
    for crystal in (nacl, triclinic):
        sym = from_structure(crystal)
        rebuilt = sym.to_crystal()
        assert matcher.get_rms_dist(crystal.to_structure(), rebuilt.to_structure())[0] < 1e-4
        assert has_group(sym.conventional(), sym.spacegroup)


@pytest.mark.parametrize("spacegroup", GROUPS)
def test_built_cells_have_exactly_the_requested_group(spacegroup):
    rng = np.random.default_rng(spacegroup)
    info = group_info(spacegroup)
    # one orbit of the general position and one of the most special one, two elements
    orbits = [Orbit(8, 0, tuple(rng.uniform(size=3))), Orbit(26, len(info.letters) - 1, tuple(rng.uniform(size=3)))]
    system = crystal_system(spacegroup)
    k = np.where(free_mask(system), rng.normal(0, 0.2, 6), fixed_values(system))
    k[5] = np.log(6.0)
    sym = SymmetricCrystal(spacegroup, orbits, k)
    crystal = sym.to_crystal()
    counts = check_assignment(spacegroup, [(o.number, o.index) for o in orbits])
    assert dict(zip(*np.unique(crystal.numbers, return_counts=True))) == dict(counts)
    assert crystal.num_atoms * info.n_centring == info.multiplicities[0] + info.multiplicities[-1]
    assert has_group(sym.conventional(), spacegroup)
    found = SpacegroupAnalyzer(crystal.to_structure(), symprec=1e-3).get_space_group_number()
    assert found == spacegroup


@pytest.mark.parametrize("system", ["triclinic", "monoclinic", "orthorhombic", "tetragonal", "hexagonal", "cubic"])
def test_lattice_coefficients_round_trip_and_keep_the_metric(system):
    rng = np.random.default_rng(3)
    k = np.where(free_mask(system), rng.normal(0, 0.3, 6), fixed_values(system))
    lattice = k_to_lattice(k)
    assert np.allclose(gram_to_k(lattice @ lattice.T, system), k)
    from pymatgen.core import Lattice

    a, b, c, alpha, beta, gamma = Lattice(lattice).parameters
    if system in ("tetragonal", "hexagonal", "cubic"):
        assert np.isclose(a, b)
    if system == "hexagonal":
        assert np.isclose(gamma, 120) and np.isclose(alpha, 90)
    if system == "cubic":
        assert np.isclose(a, c) and np.allclose([alpha, beta, gamma], 90)
    if system == "monoclinic":
        assert np.isclose(alpha, 90) and np.isclose(gamma, 90)


def test_assignments_hold_the_composition_exactly():
    found = assignments(225, {11: 1, 17: 1})
    assert sorted(sorted(a) for a in found) == sorted([sorted([(11, 11), (17, 10)]), sorted([(11, 10), (17, 11)])])
    for a in assignments(194, {12: 2, 5: 4}):
        assert check_assignment(194, a) == {12: 2, 5: 4}
    with pytest.raises(XtalforgeError, match="no Wyckoff positions that hold Na1Cl1"):
        assignments(230, {11: 1, 17: 1})


def test_bad_requests_are_one_line_errors():
    for bad, message in [(0, "does not exist"), (231, "does not exist"), ("x", "not a number")]:
        with pytest.raises(XtalforgeError, match=message):
            check_group(bad)
    with pytest.raises(XtalforgeError, match="has no Wyckoff position 'q'"):
        parse_wyckoff(225, "Na:q")
    with pytest.raises(XtalforgeError, match="multiplicity 4, not 8"):
        parse_wyckoff(225, ["Na 8a"])
    with pytest.raises(XtalforgeError, match="ELEMENT:LETTER"):
        parse_wyckoff(225, "Na")
    with pytest.raises(XtalforgeError, match="only one orbit"):
        check_assignment(225, parse_wyckoff(225, "Na:a Cl:a"))
    assert parse_wyckoff(225, "Na:4a Cl:b") == [(11, 11), (17, 10)]


def test_a_structure_pyxtal_cannot_describe_is_a_structure_error():
    crystal = Crystal(np.eye(3) * 3, [[0, 0, 0], [0.0001, 0, 0]], [1, 1])
    with pytest.raises(XtalforgeError):
        from_structure(crystal)
