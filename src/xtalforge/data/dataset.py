"""CDVAE/DiffCSP-style CSV(.gz) datasets of crystals, parsed once and cached on disk.

Any CSV with a ``cif`` column loads; the other columns become per-row metadata (``material_id``, energies, ...).
Rows whose CIF cannot be read, or that hold a disordered structure, are skipped and counted, never a crash.
Parsed arrays are cached under ``$XTALFORGE_CACHE`` (default ``~/.cache/xtalforge``) keyed by the file's sha256, so a
second load of a 7k-row split takes well under a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xtalforge.crystal import Crystal
from xtalforge.errors import StructureError, XtalforgeError

log = logging.getLogger(__name__)
_CACHE_VERSION = 1


@dataclass
class CrystalDataset:
    """Crystals stored as concatenated arrays (fast to cache, slice and batch).

    Attributes:
        lattices: (M, 3, 3) Angstrom.
        frac_coords: (total_atoms, 3) fractional coordinates.
        numbers: (total_atoms,) atomic numbers.
        offsets: (M + 1,) start of each crystal's atoms in the concatenated arrays.
        meta: one row per crystal: the CSV's columns except ``cif``.
        source: where the data came from (a path or a name).
        sha256: hash of the source file (recorded in evaluation reports).
        skipped: reason -> number of rows that could not be used.
    """

    lattices: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    offsets: np.ndarray
    meta: pd.DataFrame
    source: str = ""
    sha256: str = ""
    skipped: dict[str, int] | None = None

    def __len__(self) -> int:
        return int(self.lattices.shape[0])

    def __getitem__(self, i: int) -> Crystal:
        a, b = self.offsets[i], self.offsets[i + 1]
        props = {k: v for k, v in self.meta.iloc[i].items()}
        return Crystal(self.lattices[i], self.frac_coords[a:b], self.numbers[a:b], props)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def num_atoms(self) -> np.ndarray:
        """(M,) atoms per crystal."""
        return np.diff(self.offsets)

    @property
    def ids(self) -> list[str]:
        """``material_id`` of each row (the row index as a string when the CSV has none)."""
        if "material_id" in self.meta:
            return [str(x) for x in self.meta["material_id"]]
        return [str(x) for x in self.meta.index]

    def rows_sha256(self) -> str:
        """Hash of these rows' ids and structures, in order: tells two subsets of one file apart (``sha256`` is the
        file's, and a subset keeps it)."""
        h = hashlib.sha256("\n".join(self.ids).encode())
        for array in (self.lattices, self.frac_coords, self.numbers, self.offsets):
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()

    def atoms_of(self, i: int) -> np.ndarray:
        return self.numbers[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, indices) -> CrystalDataset:
        """A new dataset holding rows ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        counts = self.num_atoms[indices]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # atom rows of the kept crystals, vectorised: start of each crystal repeated, plus a running index within it
        starts = np.repeat(self.offsets[indices], counts)
        within = np.arange(int(counts.sum())) - np.repeat(offsets[:-1], counts)
        atom_idx = starts + within
        return CrystalDataset(
            self.lattices[indices],
            self.frac_coords[atom_idx],
            self.numbers[atom_idx],
            offsets,
            self.meta.iloc[indices].reset_index(drop=True),
            self.source,
            self.sha256,
            dict(self.skipped or {}),
        )

    @classmethod
    def concat(cls, parts: list[CrystalDataset], source: str = "") -> CrystalDataset:
        offsets = [np.zeros(1, np.int64)]
        total = 0
        for p in parts:
            offsets.append(p.offsets[1:] + total)
            total += int(p.offsets[-1])
        return cls(
            np.concatenate([p.lattices for p in parts]),
            np.concatenate([p.frac_coords for p in parts]),
            np.concatenate([p.numbers for p in parts]),
            np.concatenate(offsets),
            pd.concat([p.meta for p in parts], ignore_index=True),
            source or "+".join(p.source for p in parts),
            hashlib.sha256("".join(p.sha256 for p in parts).encode()).hexdigest(),
            dict(sum((Counter(p.skipped or {}) for p in parts), Counter())),
        )

    @classmethod
    def from_crystals(cls, crystals: list[Crystal], meta: pd.DataFrame | None = None,
                      source: str = "") -> CrystalDataset:
        counts = [c.num_atoms for c in crystals]
        return cls(
            np.stack([c.lattice for c in crystals]) if crystals else np.zeros((0, 3, 3)),
            np.concatenate([c.frac_coords for c in crystals]) if crystals else np.zeros((0, 3)),
            np.concatenate([c.numbers for c in crystals]) if crystals else np.zeros(0, np.int64),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            meta if meta is not None else pd.DataFrame([c.properties for c in crystals]),
            source,
        )


def cache_dir() -> Path:
    return Path(os.environ.get("XTALFORGE_CACHE", Path.home() / ".cache" / "xtalforge"))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_csv(path: str | os.PathLike, workers: int | None = None, use_cache: bool = True) -> CrystalDataset:
    """Load a CSV(.gz) with a ``cif`` column into a :class:`CrystalDataset` (cached after the first call).

    Args:
        path: the CSV file.
        workers: processes used to parse CIFs on the first load (default: all cores).
        use_cache: read and write the on-disk cache.
    """
    path = Path(path)
    if not path.is_file():
        raise XtalforgeError(f"no such data file: {path}")
    digest = file_sha256(path)
    cache_file = cache_dir() / f"{path.name}.{digest[:16]}.v{_CACHE_VERSION}.pkl"
    if use_cache and cache_file.is_file():
        try:
            with open(cache_file, "rb") as fh:
                data = pickle.load(fh)
            data.source = str(path)
            return data
        except Exception:  # a stale or truncated cache is rebuilt, not trusted
            log.warning("ignoring unreadable cache %s", cache_file)
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise XtalforgeError(f"cannot read {path} as CSV: {exc}") from None
    if "cif" not in frame.columns:
        raise XtalforgeError(f"{path} has no 'cif' column (columns: {', '.join(map(str, frame.columns))})")
    first = frame.columns[0]
    if str(first).startswith("Unnamed"):
        frame = frame.rename(columns={first: "row"})
    texts = frame["cif"].tolist()
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(texts) > 200:
        with ProcessPoolExecutor(workers) as pool:
            parsed = list(pool.map(_parse_cif, texts, chunksize=64))
    else:
        parsed = [_parse_cif(t) for t in texts]
    keep = [i for i, p in enumerate(parsed) if not isinstance(p, str)]
    skipped = dict(Counter(p for p in parsed if isinstance(p, str)))
    if skipped:
        log.warning("%s: skipped %d rows (%s)", path.name, sum(skipped.values()), skipped)
    good = [parsed[i] for i in keep]
    meta = frame.drop(columns=["cif"]).iloc[keep].reset_index(drop=True)
    data = CrystalDataset(
        np.stack([g[0] for g in good]) if good else np.zeros((0, 3, 3)),
        np.concatenate([g[1] for g in good]) if good else np.zeros((0, 3)),
        np.concatenate([g[2] for g in good]) if good else np.zeros(0, np.int64),
        np.concatenate([[0], np.cumsum([len(g[2]) for g in good])]).astype(np.int64),
        meta,
        str(path),
        digest,
        skipped,
    )
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # a per-process name: DDP ranks parse the same file at once and must not rename each other's temp file
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cache_file)
    return data


def _parse_cif(text) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """(lattice, frac, numbers), or a short reason string for a row that cannot be used."""
    try:
        c = Crystal.from_cif_string(text if isinstance(text, str) else "")
    except StructureError as exc:
        msg = str(exc)
        return "disordered" if "partial occupancies" in msg else ("empty" if "empty" in msg else "malformed CIF")
    return c.lattice, c.frac_coords, c.numbers
