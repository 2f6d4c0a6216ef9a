"""How a crystal's symmetry becomes a token sequence for the proposer, and the grammar that keeps decoding valid.

A crystal is read as: its composition (prefix, not predicted): each element with its count in the *reduced* formula,
in order of atomic number, then one bin per target property; then the predicted part: ``Z`` (formula units in the
primitive cell), the space group, and one Wyckoff position per orbit, element by element (order of atomic number),
within an element in alphabetical order of the letter (pyxtal's Wyckoff index descending). Which element an orbit
belongs to, and how many atoms of it are still to place, follow from the prefix and the letters so far, so they are
inputs, not predictions; :func:`letter_mask` allows only positions that fit (multiplicity, a fixed position used at
most once, the order above, and a remainder that the rest of the group's positions can still fill).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

from xtalforge.data.symmetric import PROPERTIES, SymmetricDataset
from xtalforge.symmetry.wyckoff import position_table

MAX_Z = 24  # formula units per primitive cell (Carbon-24 has up to 24)
MAX_COUNT = 52  # atoms of one element in a primitive cell
MAX_LETTERS = 27  # Wyckoff positions of a group (a..z, alpha)
#: Bin edges of the property tokens (eV/atom for formation energy, eV for band gap); a value below the first edge
#: goes in bin 0, above the last in the last bin; bin ``len(edges) + 1`` means "no target".
PROPERTY_BINS = {
    "formation_energy_per_atom": np.arange(-4.0, 0.76, 0.25),
    "band_gap": np.array([0.01, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0]),
}
NULL_BIN = {p: len(edges) + 1 for p, edges in PROPERTY_BINS.items()}


def property_bins(values: np.ndarray) -> np.ndarray:
    """(..., len(PROPERTIES)) values, NaN = no target -> (..., P) bin indices."""
    values = np.asarray(values, dtype=float)
    out = np.empty(values.shape, dtype=np.int64)
    for j, name in enumerate(PROPERTIES):
        col = values[..., j]
        out[..., j] = np.where(np.isfinite(col), np.searchsorted(PROPERTY_BINS[name], np.nan_to_num(col)),
                               NULL_BIN[name])
    return out


def group_tables(spacegroup: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The group's :func:`~xtalforge.symmetry.wyckoff.position_table` at the vocabulary's ``MAX_COUNT``."""
    return position_table(spacegroup, MAX_COUNT)


@dataclass
class Decoded:
    """The state after some letters: which element is asked next and how many of its atoms remain."""

    element: int  # position in the prefix (0-based); == number of elements when done
    remaining: int
    last_index: int  # Wyckoff index of the previous orbit of this element (MAX_LETTERS = none yet)
    used_fixed: frozenset


def start_state(counts: list[int]) -> Decoded:
    return Decoded(0, counts[0], MAX_LETTERS, frozenset())


def advance(state: Decoded, index: int, counts: list[int], spacegroup: int) -> Decoded:
    """The state after placing one orbit at Wyckoff ``index``."""
    mult, dof, _ = group_tables(spacegroup)
    used = state.used_fixed | {index} if dof[index] == 0 else state.used_fixed
    remaining = state.remaining - int(mult[index])
    if remaining > 0:
        return Decoded(state.element, remaining, index, used)
    nxt = state.element + 1
    return Decoded(nxt, counts[nxt] if nxt < len(counts) else 0, MAX_LETTERS, used)


def letter_mask(state: Decoded, spacegroup: int) -> np.ndarray:
    """(MAX_LETTERS,) bool: the Wyckoff indices the next orbit may take."""
    mult, dof, fill = group_tables(spacegroup)
    w = len(mult)
    idx = np.arange(w)
    rest = state.remaining - mult
    ok = (rest >= 0) & (idx <= state.last_index) & ~((dof == 0) & np.isin(idx, list(state.used_fixed)))
    ok &= (idx < state.last_index) | (dof > 0)  # a fixed position cannot repeat
    ok[ok] = fill[idx[ok], np.clip(rest[ok], 0, MAX_COUNT)]  # the rest must stay fillable by indices <= j
    out = np.zeros(MAX_LETTERS, dtype=bool)
    out[:w] = ok
    return out


@dataclass
class Sequences:
    """N crystals as padded arrays (what :class:`~.model.SymmetryProposer` trains on).

    Attributes:
        elements, counts: (N, E) atomic numbers and reduced-formula counts (0 = padding).
        z, spacegroup: (N,) formula units per primitive cell, ITA number.
        letters: (N, T) Wyckoff index of each orbit in decoding order (-1 = padding).
        query_element, query_remaining: (N, T) the element (atomic number) asked at step t and its atoms left.
        letter_mult, letter_dof: (N, T) primitive multiplicity and dof of the letter at step t.
        masks: (N, T, MAX_LETTERS) the grammar's allowed indices at step t.
        properties: (N, P) raw property values (NaN = unknown).
    """

    elements: np.ndarray
    counts: np.ndarray
    z: np.ndarray
    spacegroup: np.ndarray
    letters: np.ndarray
    query_element: np.ndarray
    query_remaining: np.ndarray
    letter_mult: np.ndarray
    letter_dof: np.ndarray
    masks: np.ndarray
    properties: np.ndarray

    def __len__(self) -> int:
        return len(self.z)

    @property
    def num_atoms(self) -> np.ndarray:
        """(N,) sequence lengths, for the training loop's size-bucketed batches."""
        return (self.letters >= 0).sum(1) + (self.elements > 0).sum(1) + 3


def reduced(counts: dict[int, int]) -> tuple[list[int], list[int], int]:
    """Primitive-cell counts -> (elements by atomic number, reduced counts, Z)."""
    elements = sorted(counts)
    z = 0
    for e in elements:
        z = gcd(z, int(counts[e]))
    return elements, [int(counts[e]) // z for e in elements], z


def orbit_order(orbits: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Decoding order: by atomic number, then alphabetical letter (Wyckoff index descending)."""
    return sorted(orbits, key=lambda o: (o[0], -o[1]))


def encode(data: SymmetricDataset) -> Sequences:
    """Every crystal of ``data`` that fits the vocabulary (Z <= MAX_Z, counts <= MAX_COUNT) as :class:`Sequences`."""
    rows = []
    for i in range(len(data)):
        a, b = data.orbit_offsets[i], data.orbit_offsets[i + 1]
        g = int(data.spacegroup[i])
        orbits = orbit_order([(int(z), int(w)) for z, w in zip(data.orbit_number[a:b], data.orbit_index[a:b])])
        mult, dof, _ = group_tables(g)
        counts: dict[int, int] = {}
        for z, w in orbits:
            counts[z] = counts.get(z, 0) + int(mult[w])
        elements, red, zf = reduced(counts)
        if zf > MAX_Z or max(counts.values()) > MAX_COUNT:
            continue
        full = [counts[e] for e in elements]
        state = start_state(full)
        q_el, q_rem, masks = [], [], []
        for _, w in orbits:
            q_el.append(elements[state.element])
            q_rem.append(state.remaining)
            masks.append(letter_mask(state, g))
            state = advance(state, w, full, g)
        rows.append((elements, red, zf, g, [w for _, w in orbits], q_el, q_rem, [mult[w] for _, w in orbits],
                     [dof[w] for _, w in orbits], masks, data.properties[i]))
    n, e_max = len(rows), max(len(r[0]) for r in rows)
    t_max = max(len(r[4]) for r in rows)

    def pad(k: int, width: int, fill: int) -> np.ndarray:
        out = np.full((n, width), fill, dtype=np.int64)
        for j, r in enumerate(rows):
            out[j, : len(r[k])] = r[k]
        return out

    masks = np.zeros((n, t_max, MAX_LETTERS), dtype=bool)
    for j, r in enumerate(rows):
        masks[j, : len(r[9])] = np.array(r[9])
    return Sequences(pad(0, e_max, 0), pad(1, e_max, 0), np.array([r[2] for r in rows]),
                     np.array([r[3] for r in rows]), pad(4, t_max, -1), pad(5, t_max, 0), pad(6, t_max, 0),
                     pad(7, t_max, 0), pad(8, t_max, 0), masks, np.array([r[10] for r in rows], dtype=float))
