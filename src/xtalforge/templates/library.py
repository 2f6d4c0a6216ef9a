"""A library of known crystals used as structural templates, indexed by anonymised formula.

Entries are stored as concatenated arrays (like :class:`~xtalforge.data.CrystalDataset`) plus what ranking needs:
the material id (so :func:`~xtalforge.data.protocol.check_no_leak` can refuse a library for a benchmark whose test
split it would leak), a per-atom energy label, the space group and Wyckoff letters found by spglib, and a per-element
volume model fitted on the library. A library saves to and loads from one compressed ``.npz``.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xtalforge.crystal import Crystal, atomic_save_npz
from xtalforge.data.dataset import CrystalDataset
from xtalforge.errors import XtalforgeError

#: The shipped library (pooled val splits of the four benchmarks; see template_library.md beside it).
SHIPPED_LIBRARY = Path(__file__).resolve().parent.parent / "weights" / "template_library.npz"

#: Per-atom energy labels (eV/atom) taken from a dataset, first present column wins. Which one an entry used is kept,
#: because their zero points differ (formation energy vs total energy).
ENERGY_COLUMNS = ("formation_energy_per_atom", "heat_ref", "energy_per_atom")
#: Energy above the convex hull (eV/atom), when the dataset has it.
HULL_COLUMNS = ("e_above_hull", "energy_above_hull")
#: Symmetry tolerance (Angstrom) for the space group / Wyckoff letters that name an entry's prototype.
SYMPREC = 0.1
_FORMAT_VERSION = 1
_MAX_Z = 104  # element tables are indexed by atomic number 0..103


def anonymous_key(numbers: np.ndarray) -> tuple[int, ...]:
    """Exact-count anonymised formula as sorted counts (``Ga4Te4`` -> ``(4, 4)``)."""
    return tuple(sorted(Counter(np.asarray(numbers).tolist()).values()))


def reduced_key(key: tuple[int, ...]) -> tuple[int, ...]:
    """Anonymised formula divided by the gcd of its counts (``(2, 4)`` -> ``(1, 2)``)."""
    g = int(np.gcd.reduce(np.asarray(key))) if key else 1
    return tuple(c // g for c in key)


@dataclass
class TemplateLibrary:
    """Template crystals as concatenated arrays.

    Attributes:
        lattices: (M, 3, 3) Angstrom, rows are lattice vectors.
        frac_coords: (total_atoms, 3) fractional coordinates.
        numbers: (total_atoms,) atomic numbers.
        offsets: (M + 1,) start of each entry's atoms.
        ids: (M,) ``material_id`` of each entry.
        energy: (M,) per-atom energy label in eV/atom (NaN where the source had none).
        energy_source: (M,) index into ``energy_columns`` of the column the label came from (-1: none).
        e_above_hull: (M,) energy above hull in eV/atom (NaN where unknown).
        spacegroup: (M,) international space group number found with ``SYMPREC`` (0 if spglib failed).
        wyckoffs: (total_atoms,) Wyckoff letter of each atom (``"?"`` if spglib failed).
        energy_columns: names of the energy columns ``energy_source`` refers to.
        source: where the entries came from.
    """

    lattices: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    energy: np.ndarray
    energy_source: np.ndarray
    e_above_hull: np.ndarray
    spacegroup: np.ndarray
    wyckoffs: np.ndarray
    energy_columns: tuple[str, ...] = ENERGY_COLUMNS
    source: str = ""
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # float32 precision, as a saved library stores it: a freshly built library and its cached copy then give
        # the same candidates to the last decimal (a resumed evaluation must not depend on which one it got)
        self.lattices = np.asarray(self.lattices, dtype=np.float32).astype(np.float64).reshape(-1, 3, 3)
        self.frac_coords = np.asarray(self.frac_coords, dtype=np.float32).astype(np.float64).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=np.int64)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.ids = np.asarray(self.ids).astype(str)
        self.energy = np.asarray(self.energy, dtype=np.float32).astype(np.float64)
        self.energy_source = np.asarray(self.energy_source, dtype=np.int64)
        self.e_above_hull = np.asarray(self.e_above_hull, dtype=np.float32).astype(np.float64)
        self.spacegroup = np.asarray(self.spacegroup, dtype=np.int64)
        self.wyckoffs = np.asarray(self.wyckoffs).astype("<U1")
        self.energy_columns = tuple(self.energy_columns)
        m = len(self.lattices)
        for name in ("ids", "energy", "energy_source", "e_above_hull", "spacegroup"):
            if len(getattr(self, name)) != m:
                raise XtalforgeError(f"template library: '{name}' has {len(getattr(self, name))} rows, expected {m}")
        n_atoms = len(self.numbers)
        if len(self.offsets) != m + 1 or self.offsets[-1] != n_atoms or len(self.wyckoffs) != n_atoms:
            raise XtalforgeError("template library: atom arrays do not match the offsets")
        self._build_index()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset(
        cls, data: CrystalDataset, symprec: float = SYMPREC, known: TemplateLibrary | None = None
    ) -> TemplateLibrary:
        """Library of every row of ``data``; energy labels are read from ``ENERGY_COLUMNS`` / ``HULL_COLUMNS``.

        ``known``: a library whose symmetry labels are reused for identical crystals (spglib is the slow part)."""
        m = len(data)
        energy = np.full(m, np.nan)
        energy_source = np.full(m, -1, dtype=np.int64)
        for k, col in enumerate(ENERGY_COLUMNS):
            if col in data.meta:
                values = np.asarray(data.meta[col], dtype=np.float64)
                take = np.isnan(energy) & np.isfinite(values)
                energy[take] = values[take]
                energy_source[take] = k
        hull = np.full(m, np.nan)
        for col in HULL_COLUMNS:
            if col in data.meta:
                values = np.asarray(data.meta[col], dtype=np.float64)
                take = np.isnan(hull) & np.isfinite(values)
                hull[take] = values[take]
        spacegroup, wyckoffs = _symmetry(data.lattices, data.frac_coords, data.numbers, data.offsets, symprec, known)
        return cls(
            data.lattices.copy(),
            data.frac_coords.copy(),
            data.numbers.copy(),
            data.offsets.copy(),
            np.asarray(data.ids),
            energy,
            energy_source,
            hull,
            spacegroup,
            wyckoffs,
            ENERGY_COLUMNS,
            data.source,
        )

    @classmethod
    def from_crystals(cls, crystals: list[Crystal], source: str = "") -> TemplateLibrary:
        """Library from crystals; ``properties`` may hold ``material_id`` and the energy columns."""
        return cls.from_dataset(CrystalDataset.from_crystals(crystals, source=source))

    def subset(self, indices) -> TemplateLibrary:
        """A library of entries ``indices`` (e.g. leave-one-out on a validation split)."""
        indices = np.asarray(indices, dtype=np.int64)
        counts = np.diff(self.offsets)[indices]
        atom_idx = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices])
            if len(indices)
            else np.zeros(0, np.int64)
        )
        return TemplateLibrary(
            self.lattices[indices],
            self.frac_coords[atom_idx],
            self.numbers[atom_idx],
            np.concatenate([[0], np.cumsum(counts)]),
            self.ids[indices],
            self.energy[indices],
            self.energy_source[indices],
            self.e_above_hull[indices],
            self.spacegroup[indices],
            self.wyckoffs[atom_idx],
            self.energy_columns,
            self.source,
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` atomically (temporary name in the same folder, then rename)."""
        return atomic_save_npz(
            path,
            format_version=np.int64(_FORMAT_VERSION),
            lattices=self.lattices.astype(np.float32),
            frac_coords=self.frac_coords.astype(np.float32),
            numbers=self.numbers.astype(np.uint8),
            offsets=self.offsets.astype(np.int32),
            ids=self.ids,
            energy=self.energy.astype(np.float32),
            energy_source=self.energy_source.astype(np.int8),
            e_above_hull=self.e_above_hull.astype(np.float32),
            spacegroup=self.spacegroup.astype(np.int16),
            wyckoffs=self.wyckoffs,
            energy_columns=np.asarray(self.energy_columns),
            source=np.asarray(self.source),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TemplateLibrary:
        """Read a library written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise XtalforgeError(f"no template library at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise XtalforgeError(f"cannot read template library {path}: {exc}") from None
        if int(arrays.get("format_version", -1)) != _FORMAT_VERSION:
            raise XtalforgeError(f"{path} is not a version-{_FORMAT_VERSION} template library")
        return cls(
            arrays["lattices"],
            arrays["frac_coords"],
            arrays["numbers"],
            arrays["offsets"],
            arrays["ids"],
            arrays["energy"],
            arrays["energy_source"],
            arrays["e_above_hull"],
            arrays["spacegroup"],
            arrays["wyckoffs"],
            tuple(str(x) for x in arrays["energy_columns"]),
            str(arrays["source"]),
        )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.lattices.shape[0])

    @property
    def num_atoms(self) -> np.ndarray:
        """(M,) atoms per entry."""
        return np.diff(self.offsets)

    def atoms_of(self, i: int) -> np.ndarray:
        return self.numbers[self.offsets[i] : self.offsets[i + 1]]

    def crystal(self, i: int) -> Crystal:
        """Entry ``i`` as a :class:`Crystal` (``material_id``, ``spacegroup`` and energy labels in properties)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        props = {"material_id": str(self.ids[i]), "spacegroup": int(self.spacegroup[i])}
        if self.energy_source[i] >= 0:
            props[self.energy_columns[self.energy_source[i]]] = float(self.energy[i])
        if np.isfinite(self.e_above_hull[i]):
            props["e_above_hull"] = float(self.e_above_hull[i])
        return Crystal(self.lattices[i], self.frac_coords[a:b], self.numbers[a:b], props)

    def lookup(self, key: tuple[int, ...]) -> np.ndarray:
        """Indices of the entries whose exact-count anonymised formula is ``key`` (empty if none)."""
        group = self._index["by_key"].get(tuple(key))
        return group.indices if group is not None else np.zeros(0, np.int64)

    def keys(self) -> list[tuple[int, ...]]:
        """Every exact-count anonymised formula in the library."""
        return list(self._index["by_key"])

    def keys_with_reduced(self, reduced: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Exact-count anonymised formulas whose reduced form is ``reduced`` (the Z variants of one formula type)."""
        return list(self._index["by_reduced"].get(tuple(reduced), []))

    def group(self, key: tuple[int, ...]) -> KeyGroup | None:
        """Precomputed arrays of the entries with anonymised formula ``key`` (None if there are none)."""
        return self._index["by_key"].get(tuple(key))

    @property
    def prototype(self) -> np.ndarray:
        """(M,) integer id of each entry's prototype: anonymised formula, space group, and the Wyckoff letters of
        each species (ids are only meaningful within one library)."""
        return self._index["prototype"]

    @property
    def prototype_counts(self) -> np.ndarray:
        """(M,) number of library entries sharing each entry's prototype (anonymised formula, space group and the
        Wyckoff letters of each species)."""
        return self._index["prototype_counts"]

    @property
    def atomic_volumes(self) -> np.ndarray:
        """(104,) per-element atomic volumes in Angstrom^3 fitted on this library (cell volume ~ their sum)."""
        if "atomic_volumes" not in self._index:
            from xtalforge.templates.chemistry import fit_atomic_volumes

            self._index["atomic_volumes"] = fit_atomic_volumes(self.lattices, self.numbers, self.offsets)
        return self._index["atomic_volumes"]

    @property
    def stability(self) -> np.ndarray:
        """(M,) eV/atom above the most stable entry of the same chemical system and energy label (the hull energy
        itself where the data had one; 0 where nothing is known)."""
        return self._index["stability"]

    # ------------------------------------------------------------------ index
    def _build_index(self) -> None:
        """Group entries by anonymised formula and prototype, and derive stability (vectorised: loads stay fast)."""
        m = len(self)
        entry_of_atom = np.repeat(np.arange(m), np.diff(self.offsets))
        # one row per (entry, element): its atom count and the multiset of its Wyckoff letters
        pair, pair_of_atom, pair_count = np.unique(
            entry_of_atom * 128 + self.numbers, return_inverse=True, return_counts=True
        )
        pair_entry, pair_z = pair // 128, pair % 128
        letters = self.wyckoffs.view(np.int32).astype(np.int64) - ord("a")  # '<U1' is one UCS-4 code point
        letters = np.where((letters >= 0) & (letters < 26), letters, 26)
        histogram = np.bincount(pair_of_atom.reshape(-1) * 27 + letters, minlength=len(pair) * 27).reshape(-1, 27)
        site_id = row_ids(histogram) + 1  # 0 pads
        # slot order (count, site set, element): slot j of two entries of one prototype is the same site set
        order = np.lexsort((pair_z, site_id, pair_count, pair_entry))
        n_species = np.bincount(pair_entry, minlength=m)
        start = np.concatenate([[0], np.cumsum(n_species)])
        width = int(n_species.max()) if m else 1
        row, col = pair_entry[order], np.arange(len(order)) - start[pair_entry[order]]
        counts, slots, sites = (np.zeros((m, width), np.int64) for _ in range(3))
        counts[row, col], slots[row, col], sites[row, col] = pair_count[order], pair_z[order], site_id[order]
        key_rows = np.column_stack([n_species, counts])
        key_id = row_ids(key_rows)
        prototype = row_ids(np.column_stack([key_id, self.spacegroup, sites]))
        by_key: dict[tuple[int, ...], KeyGroup] = {}
        by_reduced: dict[tuple[int, ...], list[tuple[int, ...]]] = defaultdict(list)
        grouped = np.argsort(key_id, kind="stable")
        for idx in np.split(grouped, np.cumsum(np.bincount(key_id))[:-1]):
            k = int(n_species[idx[0]])
            key = tuple(int(c) for c in counts[idx[0], :k])
            by_key[key] = KeyGroup(idx, slots[idx, :k])
            by_reduced[reduced_key(key)].append(key)
        self._index = {
            "by_key": by_key,
            "by_reduced": dict(by_reduced),
            "prototype": prototype,
            "prototype_counts": np.bincount(prototype)[prototype],
            "stability": self._stability(pair_entry, pair_z, n_species, width),
        }

    def _stability(self, pair_entry: np.ndarray, pair_z: np.ndarray, n_species: np.ndarray, width: int) -> np.ndarray:
        """eV/atom above the lowest entry of the same chemical system and label (hull energy where known)."""
        m = len(self)
        system = np.zeros((m, width), np.int64)  # elements sorted by atomic number (pairs are already in that order)
        start = np.concatenate([[0], np.cumsum(n_species)])
        system[pair_entry, np.arange(len(pair_entry)) - start[pair_entry]] = pair_z
        group = row_ids(np.column_stack([self.energy_source, system]))
        known = np.isfinite(self.energy)
        lowest = np.full(int(group.max()) + 1 if m else 0, np.inf)
        np.minimum.at(lowest, group[known], self.energy[known])
        above = np.where(known, self.energy - lowest[group], np.nan)
        stability = np.where(np.isfinite(self.e_above_hull), self.e_above_hull, above)
        return np.nan_to_num(np.maximum(stability, 0.0), nan=0.0)


@dataclass
class KeyGroup:
    """Entries sharing one anonymised formula.

    Attributes:
        indices: (G,) library rows.
        slots: (G, S) elements of each entry ordered by (count, Wyckoff letters, atomic number): slot j of every
            entry has the same count (and, within one prototype, the same sites), so a target maps onto a template
            slot by slot.
    """

    indices: np.ndarray
    slots: np.ndarray


def row_ids(rows: np.ndarray) -> np.ndarray:
    """(R,) dense ids of the distinct rows of an (R, C) integer array (``np.unique(axis=0)`` is 10x slower)."""
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    new = np.ones(len(rows), bool)
    new[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    ids = np.empty(len(rows), np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids


def _fingerprint(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray) -> bytes:
    """Identity of a crystal's arrays that survives the float32 round trip of a saved library."""
    return b"".join(
        [np.round(lattice.astype(np.float32), 3).tobytes(), np.round(frac.astype(np.float32), 4).tobytes(),
         np.asarray(numbers, np.int64).tobytes()]
    )


def _symmetry(
    lattices, frac_coords, numbers, offsets, symprec: float, known: TemplateLibrary | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Space group number per crystal and Wyckoff letter per atom (0 / '?' where spglib fails)."""
    import spglib

    memo = {}
    if known is not None:
        for j in range(len(known)):
            a, b = known.offsets[j], known.offsets[j + 1]
            fp = _fingerprint(known.lattices[j], known.frac_coords[a:b], known.numbers[a:b])
            memo[fp] = (known.spacegroup[j], known.wyckoffs[a:b])
    spacegroup = np.zeros(len(lattices), dtype=np.int64)
    wyckoffs = np.full(len(numbers), "?", dtype="<U1")
    for i in range(len(lattices)):
        a, b = offsets[i], offsets[i + 1]
        hit = memo.get(_fingerprint(lattices[i], frac_coords[a:b], numbers[a:b])) if memo else None
        if hit is not None:
            spacegroup[i], wyckoffs[a:b] = hit
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # spglib's notice about its error handling
                data = spglib.get_symmetry_dataset((lattices[i], frac_coords[a:b], numbers[a:b]), symprec=symprec)
        except Exception:  # spglib raises on degenerate cells; the entry simply has no symmetry label
            data = None
        if data is not None:
            spacegroup[i] = data.number
            wyckoffs[a:b] = data.wyckoffs
    return spacegroup, wyckoffs


def benchmark_library(benchmark: str, pooled: bool = False, use_cache: bool = True,
                      aflow: bool = False) -> TemplateLibrary:
    """The template library allowed when ``benchmark``'s test split is reported:
    ``training_set(benchmark, pooled, aflow)``.

    Symmetry analysis of ~10k entries takes a minute, so the library is cached under the dataset cache folder,
    keyed by the training set's hash.
    """
    from xtalforge.data.dataset import cache_dir
    from xtalforge.data.protocol import training_set

    data = training_set(benchmark, pooled=pooled, aflow=aflow)
    kind = f"{'_pooled' if pooled else ''}{'_aflow' if aflow else ''}"
    name = f"{benchmark}{kind}.{data.sha256[:16]}.v{_FORMAT_VERSION}.npz"
    path = cache_dir() / "templates" / name
    if use_cache and path.is_file():
        return TemplateLibrary.load(path)

    # the shipped library holds every val split: reuse its symmetry labels
    known = TemplateLibrary.load(SHIPPED_LIBRARY) if SHIPPED_LIBRARY.is_file() else None
    library = TemplateLibrary.from_dataset(data, known=known)
    library.source = f"training_set({benchmark!r}, pooled={pooled}, aflow={aflow})"
    if use_cache:
        library.save(path)
    return library
