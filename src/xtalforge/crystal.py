"""The one value type for a crystal, and lossless conversion to the ecosystem's types.

A :class:`Crystal` is a lattice (3 x 3, rows are lattice vectors, Angstrom), fractional coordinates (N x 3, wrapped
into [0, 1)) and atomic numbers (N,). It converts to and from pymatgen ``Structure``, ASE ``Atoms`` and CIF / POSCAR /
extxyz files; everything else in xtalforge speaks this type or pymatgen's.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xtalforge.errors import StructureError

#: Smallest cell volume per atom accepted as a real crystal (Angstrom^3); below it a lattice is called degenerate.
MIN_VOLUME_PER_ATOM = 0.1
#: Longest lattice vector accepted from a file (Angstrom): far above any inorganic cell; beyond it models return NaN
#: and neighbour searches try to allocate exabytes.
MAX_LATTICE_LENGTH = 1000.0
#: Closest two atoms of a file may be (Angstrom; the H-H bond is 0.74): closer is a duplicated or mistyped site.
MIN_DISTANCE = 0.5
#: Thinnest cell (volume / largest face area, Angstrom) accepted from a file.
MIN_CELL_HEIGHT = 0.1
#: Most atoms a structure file may declare (an xyz count line is checked before any parser trusts it).
MAX_FILE_ATOMS = 100_000


@dataclass(eq=False)
class Crystal:
    """A periodic crystal.

    Attributes:
        lattice: (3, 3) float64, rows are the lattice vectors a, b, c in Angstrom.
        frac_coords: (N, 3) float64 fractional coordinates in [0, 1).
        numbers: (N,) int64 atomic numbers.
        properties: free-form scalar labels (e.g. ``formation_energy_per_atom`` in eV/atom, ``material_id``).
    """

    lattice: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    properties: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lattice = np.asarray(self.lattice, dtype=np.float64)
        self.frac_coords = np.asarray(self.frac_coords, dtype=np.float64).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        validate_arrays(self.lattice, self.frac_coords, self.numbers)
        self.frac_coords = self.frac_coords % 1.0
        # x % 1.0 can return exactly 1.0 for tiny negative x in float arithmetic
        self.frac_coords[self.frac_coords >= 1.0] = 0.0

    # ------------------------------------------------------------------ basic properties
    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def volume(self) -> float:
        """Cell volume in Angstrom^3."""
        with np.errstate(over="ignore"):
            return float(abs(np.linalg.det(self.lattice)))

    @property
    def cart_coords(self) -> np.ndarray:
        """(N, 3) Cartesian coordinates in Angstrom."""
        return self.frac_coords @ self.lattice

    @property
    def formula(self) -> str:
        import warnings

        with warnings.catch_warnings():  # pymatgen warns about elements without electronegativity (Og, ...)
            warnings.simplefilter("ignore")
            return self.to_structure().composition.formula.replace(" ", "")

    def right_handed(self) -> Crystal:
        """The same crystal on a right-handed basis (det(lattice) > 0): a left-handed one has all three lattice
        vectors and fractional coordinates negated, which leaves every Cartesian position in place. Generated lattices
        are left-handed about half the time, and CHGNet divides its stress by the signed volume, so an ASE cell
        relaxation of a left-handed cell moves the cell uphill (it collapsed correct DAO-G structures)."""
        if np.linalg.det(self.lattice) > 0:
            return self
        return Crystal(-self.lattice, (-self.frac_coords) % 1.0, self.numbers.copy(), dict(self.properties))

    # ------------------------------------------------------------------ pymatgen
    @classmethod
    def from_structure(cls, structure: Any, properties: dict[str, Any] | None = None) -> Crystal:
        """From a pymatgen ``Structure``; disordered sites are refused (xtalforge models ordered crystals)."""
        if not structure.is_ordered:
            raise StructureError("structure has partial occupancies; xtalforge needs an ordered crystal")
        numbers = [site.specie.Z for site in structure]
        return cls(structure.lattice.matrix, structure.frac_coords, numbers, dict(properties or {}))

    def to_structure(self) -> Any:
        """A pymatgen ``Structure`` (same lattice, same fractional coordinates, same order of atoms)."""
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.numbers.tolist(), self.frac_coords, coords_are_cartesian=False)

    # ------------------------------------------------------------------ ASE
    @classmethod
    def from_atoms(cls, atoms: Any, properties: dict[str, Any] | None = None) -> Crystal:
        """From an ASE ``Atoms`` with a full 3-D periodic cell."""
        if not all(atoms.pbc):
            raise StructureError("ASE Atoms is not periodic in all three directions")
        return cls(np.array(atoms.cell), atoms.get_scaled_positions(wrap=True), atoms.numbers, dict(properties or {}))

    def to_atoms(self) -> Any:
        """An ASE ``Atoms`` with ``pbc=True``."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, cell=self.lattice, scaled_positions=self.frac_coords, pbc=True)

    # ------------------------------------------------------------------ text and files
    @classmethod
    def from_cif_string(cls, text: str, properties: dict[str, Any] | None = None) -> Crystal:
        """Parse the first structure of a CIF text (raises :class:`StructureError` if it cannot be read)."""
        import warnings

        from pymatgen.core import Structure

        if not isinstance(text, str) or not text.strip():
            raise StructureError("empty CIF text")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Structure.from_str(text, fmt="cif")
        except Exception as exc:  # pymatgen raises many types for malformed CIFs
            raise StructureError(f"malformed CIF: {one_line(exc)}") from None
        return cls.from_structure(structure, properties)

    def to_cif_string(self, symprec: float | None = None) -> str:
        """CIF text; with ``symprec`` (Angstrom) the symmetrised cell is written."""
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(self.to_structure(), symprec=symprec))

    @classmethod
    def read(cls, path: str | os.PathLike) -> Crystal:
        """Read a CIF, POSCAR/CONTCAR, or extxyz file (format chosen from the file name).

        Raises :class:`StructureError` naming the file and the problem: unreadable text, a NaN, singular or
        implausibly long lattice, atoms on top of each other (see :func:`check_plausible`).
        """
        path = Path(path)
        if not path.is_file():
            raise StructureError(f"no such file: {path}")
        fmt = _file_format(path)
        try:
            if fmt == "cif":
                crystal = cls.from_cif_string(path.read_text(errors="replace"))
            else:
                crystal = cls._read_with_library(path, fmt)
            check_plausible(crystal)
        except StructureError as exc:
            raise StructureError(f"{path.name}: {exc}") from None
        return crystal

    @classmethod
    def _read_with_library(cls, path: Path, fmt: str) -> Crystal:
        import warnings

        try:
            with warnings.catch_warnings():  # parser warnings would add lines to a one-line error
                warnings.simplefilter("ignore")
                if fmt == "poscar":
                    from pymatgen.io.vasp import Poscar

                    return cls.from_structure(Poscar.from_file(str(path)).structure)
                from ase.io import read

                _check_xyz_counts(path)
                return cls.from_atoms(read(str(path), format="extxyz"))
        except StructureError:
            raise
        except Exception as exc:  # pymatgen and ASE raise many types for malformed files
            raise StructureError(f"cannot read it as {fmt}: {one_line(exc)}") from None

    def write(self, path: str | os.PathLike) -> Path:
        """Write a CIF, POSCAR, or extxyz file atomically (temporary name, then rename)."""
        path = Path(path)
        fmt = _file_format(path)
        if fmt == "cif":
            text = self.to_cif_string()
        elif fmt == "poscar":
            from pymatgen.io.vasp import Poscar

            text = str(Poscar(self.to_structure()))
        else:
            import io

            from ase.io import write

            buf = io.StringIO()
            write(buf, self.to_atoms(), format="extxyz")
            text = buf.getvalue()
        atomic_write_text(path, text)
        return path

    def __repr__(self) -> str:
        return f"Crystal({self.formula}, natoms={self.num_atoms}, volume={self.volume:.2f} A^3)"


def validate_arrays(lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray) -> None:
    """Raise :class:`StructureError` naming the first problem with a crystal's arrays."""
    if lattice.shape != (3, 3):
        raise StructureError(f"lattice must be 3x3, got shape {lattice.shape}")
    if not np.all(np.isfinite(lattice)):
        raise StructureError("lattice contains NaN or infinite values")
    if frac_coords.shape[0] != numbers.shape[0]:
        raise StructureError(f"{frac_coords.shape[0]} coordinates but {numbers.shape[0]} atomic numbers")
    if numbers.shape[0] == 0:
        raise StructureError("crystal has no atoms")
    if not np.all(np.isfinite(frac_coords)):
        raise StructureError("fractional coordinates contain NaN or infinite values")
    if numbers.min() < 1 or numbers.max() > 118:
        raise StructureError(f"atomic numbers must be in 1..118, got {numbers.min()}..{numbers.max()}")
    with np.errstate(over="ignore"):  # a 1e200 A lattice overflows to an infinite volume; check_cell_size refuses it
        volume = abs(float(np.linalg.det(lattice)))
    if volume < MIN_VOLUME_PER_ATOM * numbers.shape[0]:
        raise StructureError(f"degenerate lattice: cell volume {volume:.3g} A^3 for {numbers.shape[0]} atoms")


def check_plausible(crystal: Crystal) -> None:
    """Raise :class:`StructureError` for a crystal no file of a real structure describes: a lattice vector longer
    than ``MAX_LATTICE_LENGTH``, a cell thinner than ``MIN_CELL_HEIGHT`` or two atoms closer than ``MIN_DISTANCE``
    (``Crystal`` itself accepts all three, since generated samples can be that bad before ranking)."""
    check_cell_size(crystal.lattice)
    structure = crystal.to_structure()
    centers, neighbors, _, distances = structure.get_neighbor_list(MIN_DISTANCE)
    if len(distances):
        i, j, d = int(centers[0]), int(neighbors[0]), float(distances[0])
        raise StructureError(f"atoms {i + 1} and {j + 1} ({structure[i].specie}, {structure[j].specie}) are "
                             f"{d:.3f} A apart (closer than {MIN_DISTANCE} A): duplicated or overlapping sites")


def check_cell_size(lattice: np.ndarray) -> None:
    """Raise :class:`StructureError` for a lattice vector longer than ``MAX_LATTICE_LENGTH`` or a cell thinner than
    ``MIN_CELL_HEIGHT`` (what neighbour searches cannot handle in bounded memory)."""
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 entries overflow to inf, which is then refused
        lengths = np.linalg.norm(lattice, axis=1)
        faces = np.linalg.norm(np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]]), axis=1)
        volume = abs(float(np.linalg.det(lattice)))
    if not lengths.max() <= MAX_LATTICE_LENGTH:
        raise StructureError(f"lattice vector of {lengths.max():.4g} A; at most {MAX_LATTICE_LENGTH:g} A is accepted")
    # heights of the cell (volume / face area): a near-flat cell makes neighbour searches enumerate millions of images
    height = volume / faces.max() if faces.max() > 0 else 0.0
    if not height >= MIN_CELL_HEIGHT:
        raise StructureError(f"degenerate lattice: the cell is {height:.3g} A thick (at least {MIN_CELL_HEIGHT} A)")


def _check_xyz_counts(path: Path) -> None:
    """Raise :class:`StructureError` unless every frame of an (ext)xyz file starts with an atom count from 1 to
    ``MAX_FILE_ATOMS`` followed by that many lines: ASE's reader hung on a 400-digit count."""
    with open(path, "rb") as fh:
        lines = fh.read().splitlines()
    pos = 0
    while pos < len(lines) and lines[pos].strip():
        head = lines[pos].strip()
        if not head.isdigit() or len(head) > len(str(MAX_FILE_ATOMS)) or not 1 <= int(head) <= MAX_FILE_ATOMS:
            raise StructureError(f"line {pos + 1} should be an atom count from 1 to {MAX_FILE_ATOMS}, got "
                                 f"'{head[:20].decode(errors='replace')}'")
        pos += int(head) + 2
        if pos > len(lines):
            raise StructureError(f"the file ends inside a frame of {int(head)} atoms")


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (whitespace runs collapsed) and at most ``limit`` characters, for errors
    that quote a library's multi-line message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` through a temporary file in the same folder, so no half-written file is ever seen."""
    _atomic_write(path, ".tmp", lambda fh: fh.write(text.encode()))


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``np.savez_compressed(path, **arrays)`` through a temporary file in the same folder (see
    :func:`atomic_write_text`)."""
    return _atomic_write(path, ".npz", lambda fh: np.savez_compressed(fh, **arrays))


def _atomic_write(path: str | os.PathLike, suffix: str, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".cif"):
        return "cif"
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if "poscar" in name or "contcar" in name or name.endswith(".vasp"):
        return "poscar"
    raise StructureError(f"unknown structure file type: {path.name} (use .cif, POSCAR/.vasp, or .extxyz)")
