import numpy as np
import pytest

from xtalforge.crystal import Crystal
from xtalforge.errors import StructureError


def _same(a: Crystal, b: Crystal) -> None:
    np.testing.assert_allclose(a.lattice, b.lattice, atol=1e-6)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    d = (a.frac_coords - b.frac_coords + 0.5) % 1.0 - 0.5  # compare modulo lattice translations
    np.testing.assert_allclose(d, 0.0, atol=1e-6)


def _canonical(c: Crystal) -> Crystal:
    order = np.lexsort((c.frac_coords[:, 2], c.frac_coords[:, 1], c.frac_coords[:, 0], c.numbers))
    return Crystal(c.lattice, c.frac_coords[order], c.numbers[order])


def test_pymatgen_round_trip(triclinic):
    _same(triclinic, Crystal.from_structure(triclinic.to_structure()))


def test_ase_round_trip(triclinic):
    atoms = triclinic.to_atoms()
    assert atoms.pbc.all() and len(atoms) == 5
    _same(triclinic, Crystal.from_atoms(atoms))


@pytest.mark.parametrize("name", ["x.cif", "POSCAR", "x.vasp", "x.extxyz"])
def test_file_round_trip(tmp_path, triclinic, name):
    path = triclinic.write(tmp_path / name)
    back = Crystal.read(path)
    if name.endswith(".cif"):  # CIF groups sites by species: compare in a canonical atom order
        back, triclinic = _canonical(back), _canonical(triclinic)
    # CIF stores 8 decimals of the cell parameters; the lattice may be re-oriented, so compare the Gram matrix
    np.testing.assert_allclose(back.lattice @ back.lattice.T, triclinic.lattice @ triclinic.lattice.T, atol=1e-4)
    np.testing.assert_array_equal(back.numbers, triclinic.numbers)
    d = (back.frac_coords - triclinic.frac_coords + 0.5) % 1.0 - 0.5
    np.testing.assert_allclose(d, 0.0, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_coordinates_are_wrapped():
    c = Crystal(np.eye(3) * 4, [[1.25, -0.25, 2.0]], [26])
    np.testing.assert_allclose(c.frac_coords, [[0.25, 0.75, 0.0]])
    assert (c.frac_coords < 1).all() and (c.frac_coords >= 0).all()


@pytest.mark.parametrize(
    "lattice, coords, numbers, message",
    [
        (np.full((3, 3), np.nan), [[0, 0, 0]], [1], "NaN"),
        (np.diag([4.0, 4.0, 0.0]), [[0, 0, 0]], [1], "degenerate"),
        (np.eye(3) * 4, [[0, 0, 0], [0.5, 0.5, 0.5]], [1], "2 coordinates but 1"),
        (np.eye(3) * 4, [[np.nan, 0, 0]], [1], "NaN"),
        (np.eye(3) * 4, [[0, 0, 0]], [0], "atomic numbers"),
    ],
)
def test_bad_arrays_name_the_problem(lattice, coords, numbers, message):
    with pytest.raises(StructureError, match=message):
        Crystal(lattice, coords, numbers)


def test_malformed_cif_is_a_clear_error(tmp_path):
    with pytest.raises(StructureError, match="malformed CIF|empty"):
        Crystal.from_cif_string("data_x\n_cell_length_a 3\nnonsense")
    with pytest.raises(StructureError, match="no such file"):
        Crystal.read(tmp_path / "missing.cif")
    with pytest.raises(StructureError, match="unknown structure file type"):
        Crystal.read(__file__)


def test_disordered_structure_is_refused():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    with pytest.raises(StructureError, match="partial occupancies"):
        Crystal.from_structure(s)
