"""Crystals as space group + Wyckoff orbits + free parameters, and back (the representation of DiffCSP++ / Uni-MDM).

A :class:`SymmetricCrystal` holds the space group (ITA number, standard setting), one entry per occupied Wyckoff
orbit (element, Wyckoff index, the orbit's free coordinates ``u``) and the lattice as the six coefficients ``k`` of
:mod:`xtalforge.symmetry.lattice`. Only ``u`` (0-3 numbers per orbit) and the crystal system's free ``k`` are free,
so a 52-atom cell may have a handful of numbers to generate, and every structure built from them has the group.

Tables come from pyxtal (the Wyckoff operations of each group in the standard setting); nothing here is a
hand-written table. Structures are built as **primitive** cells: the centring copies of the conventional cell are
dropped (:data:`CENTRING`), which is what the generator's network sees and what the benchmarks hold.

Coordinates of orbit atom k: ``x_k = G_k u + g_k (mod 1)`` in the primitive cell's fractional coordinates, with
``u`` a 3-vector whose frozen entries are 0 (:meth:`SiteTable`). Integer steps of ``u`` move every atom by lattice
vectors, so ``u`` lives on the unit torus like any fractional coordinate.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from xtalforge.composition import symbol_to_number
from xtalforge.crystal import Crystal
from xtalforge.errors import StructureError, XtalforgeError
from xtalforge.symmetry.lattice import crystal_system, gram_to_k, k_to_lattice

#: Rows = primitive lattice vectors in the conventional cell's fractional coordinates (``L_p = T @ L_c``), per
#: centring letter of the Hermann-Mauguin symbol (R in the hexagonal setting, obverse).
CENTRING = {
    "P": np.eye(3),
    "A": np.array([[1, 0, 0], [0, 0.5, 0.5], [0, -0.5, 0.5]]),
    "B": np.array([[0.5, 0, 0.5], [0, 1, 0], [-0.5, 0, 0.5]]),
    "C": np.array([[0.5, 0.5, 0], [-0.5, 0.5, 0], [0, 0, 1]]),
    "I": np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]),
    "F": np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
    "R": np.array([[2, 1, 1], [-1, 1, 1], [-1, -2, 1]]) / 3.0,
}
#: Default tolerance (Angstrom) for finding the symmetry of a structure (pyxtal / spglib ``symprec``).
SYMPREC = 0.01
#: Most search steps of :func:`assignments` (about a second).
SEARCH_NODES = 200_000
NUM_GROUPS = 230


def check_group(spacegroup: int) -> int:
    """The ITA number as an int, or a one-line error."""
    try:
        number = int(spacegroup)
    except (TypeError, ValueError):
        raise XtalforgeError(f"space group '{spacegroup}' is not a number 1-230") from None
    if not 1 <= number <= NUM_GROUPS or number != float(spacegroup):
        raise XtalforgeError(f"space group {spacegroup} does not exist (the ITA numbers are 1-230)")
    return number


@lru_cache(maxsize=NUM_GROUPS)
def _group(spacegroup: int):
    from pyxtal.symmetry import Group

    return Group(check_group(spacegroup))


@dataclass(frozen=True)
class GroupInfo:
    """What the generator needs of a space group: symbol, crystal system, centring and its Wyckoff positions."""

    number: int
    symbol: str
    system: str
    centring: str
    letters: tuple[str, ...]  # by Wyckoff index (pyxtal order: 0 = general position)
    multiplicities: tuple[int, ...]  # conventional cell
    dofs: tuple[int, ...]

    @property
    def n_centring(self) -> int:
        """Lattice points per conventional cell (conventional atoms / primitive atoms)."""
        return int(round(1.0 / abs(np.linalg.det(CENTRING[self.centring]))))

    def index_of(self, letter: str) -> int:
        if letter not in self.letters:
            raise XtalforgeError(f"space group {self.number} ({self.symbol}) has no Wyckoff position '{letter}' "
                                 f"(it has {', '.join(sorted(self.letters))})")
        return self.letters.index(letter)


@lru_cache(maxsize=NUM_GROUPS)
def group_info(spacegroup: int) -> GroupInfo:
    """Facts of one group (cached)."""
    g = _group(spacegroup)
    wps = g.Wyckoff_positions
    return GroupInfo(g.number, g.symbol, crystal_system(g.number), g.symbol[0], tuple(w.letter for w in wps),
                     tuple(int(w.multiplicity) for w in wps), tuple(int(w.get_dof()) for w in wps))


@dataclass(frozen=True)
class SiteTable:
    """The primitive-cell atoms of one Wyckoff orbit as affine maps of its free coordinates ``u`` (3,).

    Attributes:
        G: (m, 3, 3) linear parts (columns of frozen axes are 0), m = multiplicity / centring points.
        g: (m, 3) offsets; ``x_k = G_k u + g_k (mod 1)``.
        H: (m, 3, 3) least-squares projection of per-atom displacements onto ``u``:
            ``du = sum_k H_k dx_k`` (``H_k = (sum_j G_j^T G_j)^+ G_k^T``).
        free: (3,) bool, the free axes of ``u``.
    """

    G: np.ndarray
    g: np.ndarray
    H: np.ndarray
    free: np.ndarray

    @property
    def size(self) -> int:
        return int(self.G.shape[0])


@lru_cache(maxsize=4096)
def site_table(spacegroup: int, index: int) -> SiteTable:
    """The :class:`SiteTable` of Wyckoff position ``index`` of a group (cached)."""
    info = group_info(spacegroup)
    wp = _group(spacegroup).Wyckoff_positions[index]
    free = np.ones(3, dtype=bool)
    free[list(wp.get_frozen_axis())] = False
    select = np.diag(free.astype(float))
    rep = wp.ops[0]
    rot0, tr0 = rep.rotation_matrix @ select, rep.translation_vector
    inv_t = np.linalg.inv(CENTRING[info.centring]).T  # conventional -> primitive fractional coordinates
    lin = np.stack([inv_t @ op.rotation_matrix @ rot0 for op in wp.ops])
    off = np.stack([inv_t @ (op.rotation_matrix @ tr0 + op.translation_vector) for op in wp.ops])
    # drop centring copies: ops that give the same primitive position (mod 1) for a generic u
    probe = np.array([0.1234, 0.3571, 0.7319])
    pos = (lin @ probe + off) % 1.0
    keep: list[int] = []
    for k in range(len(pos)):
        if not any(_same_mod1(pos[k], pos[j]) for j in keep):
            keep.append(k)
    lin, off = lin[keep], off[keep]
    if len(keep) * info.n_centring != wp.multiplicity:
        raise RuntimeError(f"group {spacegroup} position {wp.letter}: {len(keep)} primitive atoms for multiplicity "
                           f"{wp.multiplicity}")
    proj = np.linalg.pinv(np.einsum("kij,kil->jl", lin, lin))
    return SiteTable(lin, off, proj @ lin.transpose(0, 2, 1), free)


def _same_mod1(a: np.ndarray, b: np.ndarray, tol: float = 1e-6) -> bool:
    d = (a - b) % 1.0
    return bool(np.all(np.minimum(d, 1.0 - d) < tol))


@dataclass(frozen=True)
class Orbit:
    """One occupied Wyckoff orbit: element (atomic number), Wyckoff index, free coordinates ``u`` (3,)."""

    number: int
    index: int
    u: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class SymmetricCrystal:
    """A crystal as its space group, orbits and lattice coefficients.

    Attributes:
        spacegroup: ITA number (standard setting).
        orbits: one :class:`Orbit` per occupied Wyckoff orbit.
        k: (6,) lattice coefficients of the conventional cell (:mod:`xtalforge.symmetry.lattice`).
        properties: free-form labels carried along.
    """

    spacegroup: int
    orbits: list[Orbit]
    k: np.ndarray
    properties: dict = field(default_factory=dict)

    @property
    def info(self) -> GroupInfo:
        return group_info(self.spacegroup)

    @property
    def wyckoff(self) -> list[str]:
        """``['Na 4a', 'Cl 4b']``: element, conventional multiplicity and letter of each orbit."""
        from pymatgen.core import Element

        info = self.info
        return [f"{Element.from_Z(o.number).symbol} {info.multiplicities[o.index]}{info.letters[o.index]}"
                for o in self.orbits]

    def to_crystal(self) -> Crystal:
        """The primitive cell (lattice ``T @ L_c``; atoms orbit by orbit)."""
        frac = np.concatenate([_orbit_positions(self.spacegroup, o) for o in self.orbits])
        numbers = np.concatenate([[o.number] * site_table(self.spacegroup, o.index).size for o in self.orbits])
        lattice = CENTRING[self.info.centring] @ k_to_lattice(self.k)
        props = {**self.properties, "spacegroup": self.spacegroup, "wyckoff": " ".join(self.wyckoff)}
        return Crystal(lattice, frac, numbers, props)


    def conventional(self) -> Crystal:
        """The conventional cell in the group's standard setting (every multiplicity atom, lattice ``exp(S)``)."""
        frac, numbers = [], []
        for o in self.orbits:
            wp = _group(self.spacegroup).Wyckoff_positions[o.index]
            table = site_table(self.spacegroup, o.index)
            rep = wp.ops[0].operate(np.where(table.free, np.asarray(o.u, dtype=float), 0.0))
            frac.append(np.array([op.operate(rep) for op in wp.ops]) % 1.0)
            numbers += [o.number] * len(wp.ops)
        return Crystal(k_to_lattice(self.k), np.concatenate(frac), numbers)


def has_group(crystal: Crystal, spacegroup: int, tol: float = 1e-4) -> bool:
    """Whether every operation of the group (standard setting) maps a conventional cell onto itself: the crystal has
    this group or a supergroup of it. ``tol``: fractional tolerance of a position."""
    frac, numbers = crystal.frac_coords, crystal.numbers
    for op in _group(spacegroup).Wyckoff_positions[0].ops:
        moved = (frac @ op.rotation_matrix.T + op.translation_vector) % 1.0
        d = (moved[:, None, :] - frac[None, :, :]) % 1.0
        close = np.all(np.minimum(d, 1.0 - d) < tol, axis=-1) & (numbers[:, None] == numbers[None, :])
        if not close.any(axis=1).all():
            return False
    return True


def _orbit_positions(spacegroup: int, orbit: Orbit) -> np.ndarray:
    table = site_table(spacegroup, orbit.index)
    u = np.where(table.free, np.asarray(orbit.u, dtype=float), 0.0)
    return (table.G @ u + table.g) % 1.0


def from_structure(structure, symprec: float = SYMPREC) -> SymmetricCrystal:
    """The symmetric description of a pymatgen ``Structure`` (or :class:`Crystal`) found by pyxtal at ``symprec``
    (Angstrom), in the group's standard setting. Conventional or primitive input give the same result."""
    from pyxtal import pyxtal

    if isinstance(structure, Crystal):
        structure = structure.to_structure()
    xtal = pyxtal()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xtal.from_seed(structure, tol=symprec, standard=True)
    except Exception as exc:  # pyxtal raises bare exceptions of many kinds for cells it cannot symmetrise
        raise StructureError(f"no symmetry description found at symprec {symprec}: {str(exc).splitlines()[0]}"
                             ) from None
    number = int(xtal.group.number)
    info = group_info(number)
    orbits = []
    for site in xtal.atom_sites:
        wp = site.wp
        if wp.hall_number != _group(number).hall_number:
            raise StructureError(f"pyxtal returned a non-standard setting (Hall {wp.hall_number}) of group {number}")
        index = info.index_of(wp.letter)
        pos = np.asarray(site.position, dtype=float)
        free = site_table(number, index).free
        u = np.zeros(3)
        u[free] = wp.get_free_xyzs(pos)
        orbits.append(Orbit(symbol_to_number(str(site.specie)), index, tuple(float(x) for x in u)))
    matrix = np.asarray(xtal.lattice.matrix, dtype=float)
    k = gram_to_k(matrix @ matrix.T, info.system)
    return SymmetricCrystal(number, orbits, k)


@lru_cache(maxsize=512)
def position_table(spacegroup: int, max_count: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(primitive multiplicity (W,), dof (W,), fillable (W, max_count + 1) bool) of a group's Wyckoff positions:
    ``fillable[j, r]``: r atoms of one element fit on positions of index <= j (free ones any number of times, fixed
    ones once)."""
    info = group_info(spacegroup)
    mult = np.array([site_table(spacegroup, w).size for w in range(len(info.letters))])
    dof = np.array(info.dofs)
    fill = np.zeros((len(mult), max_count + 1), dtype=bool)
    reach = np.zeros(max_count + 1, dtype=bool)
    reach[0] = True
    for j, m in enumerate(mult):  # add position j to the set {0..j}
        if m <= max_count:
            if dof[j] > 0:  # any number of orbits
                for r in range(m, max_count + 1):
                    reach[r] |= reach[r - m]
            else:  # at most one
                reach[m:] = reach[m:] | reach[:-m]
        fill[j] = reach
    return mult, dof, fill


def assignments(spacegroup: int, counts: dict[int, int], limit: int = 1000) -> list[list[tuple[int, int]]]:
    """Wyckoff assignments of a group that hold a **primitive** cell's composition exactly, as lists of (atomic
    number, Wyckoff index) orbits, fewest orbits first (at most ``limit``). An exact depth-first search over the
    group's positions (a position without free parameters holds one orbit at most), by increasing orbit count.

    ``counts``: atoms of each element in the primitive cell (the conventional cell holds ``n_centring`` times as
    many). Raises a one-line error when none exists.
    """
    info = group_info(spacegroup)
    numbers = sorted(counts)
    need = [int(counts[z]) for z in numbers]
    if min(need, default=0) < 1:
        raise XtalforgeError("a composition needs at least one atom of each element")
    mult, dof, fill = position_table(spacegroup, max(64, max(need)))
    top = int(mult.max())
    out: list[list[tuple[int, int]]] = []
    nodes = [0]  # the search is exponential where fixed positions conflict: stop after SEARCH_NODES steps

    def search(e: int, left: int, last: int, used: frozenset, budget: int, orbits: list) -> None:
        nodes[0] += 1
        if len(out) >= limit or nodes[0] > SEARCH_NODES:
            return
        if left == 0:
            if e + 1 == len(need):
                if budget == 0:
                    out.append(list(orbits))
                return
            e, left, last = e + 1, need[e + 1], len(mult) - 1
        if budget < -(-left // top) + sum(-(-n // top) for n in need[e + 1:]):
            return
        for j in range(last, -1, -1):
            m = int(mult[j])
            if m > left or (dof[j] == 0 and j in used) or not fill[j, left - m]:
                continue
            orbits.append((numbers[e], j))
            search(e, left - m, j if dof[j] > 0 else j - 1, used | {j} if dof[j] == 0 else used, budget - 1, orbits)
            orbits.pop()

    if all(fill[-1, n] for n in need):
        for size in range(len(need), sum(need) + 1):
            search(0, need[0], len(mult) - 1, frozenset(), size, [])
            if len(out) >= limit or nodes[0] > SEARCH_NODES:
                break
    if not out:
        searched = "" if nodes[0] <= SEARCH_NODES else f" (found none in a search of {SEARCH_NODES} steps)"
        raise XtalforgeError(f"space group {spacegroup} ({info.symbol}) has no Wyckoff positions that hold "
                             f"{formula_of(counts)} "
                             f"in a primitive cell ({info.n_centring} x that in the conventional cell){searched}")
    return out[:limit]


def formula_of(counts: dict[int, int]) -> str:
    """``{11: 1, 17: 1}`` -> ``"Na1Cl1"`` (in order of atomic number)."""
    from pymatgen.core import Element

    return "".join(f"{Element.from_Z(z).symbol}{counts[z]}" for z in sorted(counts))


def parse_wyckoff(spacegroup: int, text: str | Sequence[str]) -> list[tuple[int, int]]:
    """``"Na:a Cl:b"`` or ``["Na 4a", "Cl 4b"]`` -> [(atomic number, Wyckoff index), ...] (one entry per orbit)."""
    info = group_info(spacegroup)
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    if isinstance(text, str):  # "Na:a" tokens
        pairs = [item.split(":") for item in items]
    else:
        pairs = [item.split() for item in items]
    orbits = []
    for pair in pairs:
        if len(pair) != 2 or not pair[0] or not pair[1]:
            raise XtalforgeError(f"Wyckoff entry '{':'.join(pair)}' is not ELEMENT:LETTER (e.g. Na:a)")
        letter = pair[1].lstrip("0123456789")
        index = info.index_of(letter)
        if pair[1] != letter and int(pair[1][: len(pair[1]) - len(letter)]) != info.multiplicities[index]:
            raise XtalforgeError(f"Wyckoff position {letter} of group {spacegroup} has multiplicity "
                                 f"{info.multiplicities[index]}, not {pair[1][: len(pair[1]) - len(letter)]}")
        orbits.append((symbol_to_number(pair[0]), index))
    return orbits


def check_assignment(spacegroup: int, orbits: Sequence[tuple[int, int]]) -> Counter:
    """The primitive-cell composition of an assignment; an error if a position without free parameters is used
    twice (two orbits would coincide)."""
    info = group_info(spacegroup)
    fixed = Counter(index for _, index in orbits if info.dofs[index] == 0)
    for index, n in fixed.items():
        if n > 1:
            raise XtalforgeError(f"Wyckoff position {info.letters[index]} of group {spacegroup} has no free "
                                 "parameter, so it can hold only one orbit")
    comp: Counter = Counter()
    for z, index in orbits:
        comp[z] += site_table(spacegroup, index).size
    return comp
