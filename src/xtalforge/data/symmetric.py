"""Datasets and batches of crystals in their symmetric description (space group, Wyckoff orbits, lattice ``k``).

:func:`symmetrize` turns a :class:`~xtalforge.data.dataset.CrystalDataset` into a :class:`SymmetricDataset` once
(pyxtal, about 20 ms a crystal, in parallel, cached on disk); rows whose description does not rebuild the input
(StructureMatcher at the protocol tolerances) are dropped and counted. :func:`collate_symmetric` pads rows into a
:class:`SymmetricBatch` with per-atom affine maps, so the model never loops over atoms or orbits.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from xtalforge.data.dataset import CrystalDataset, cache_dir
from xtalforge.symmetry.lattice import fixed_values, free_mask
from xtalforge.symmetry.wyckoff import (
    CENTRING,
    SYMPREC,
    Orbit,
    SymmetricCrystal,
    from_structure,
    group_info,
    site_table,
)

#: Properties the generator can be conditioned on (eV/atom, eV), with the data columns that hold them.
PROPERTIES = ("formation_energy_per_atom", "band_gap")
_CACHE_VERSION = 1


@dataclass
class SymmetricDataset:
    """M crystals in symmetric form, as concatenated arrays.

    Attributes:
        spacegroup: (M,) ITA numbers.
        k: (M, 6) lattice coefficients of the conventional cell.
        orbit_offsets: (M + 1,) start of each crystal's orbits.
        orbit_number, orbit_index: (O,) element and Wyckoff index of each orbit.
        orbit_u: (O, 3) free coordinates (frozen axes 0).
        properties: (M, len(PROPERTIES)) labels, NaN where unknown.
        ids: material ids.
        source: where the rows came from; skipped: reason -> count of rows left out.
    """

    spacegroup: np.ndarray
    k: np.ndarray
    orbit_offsets: np.ndarray
    orbit_number: np.ndarray
    orbit_index: np.ndarray
    orbit_u: np.ndarray
    properties: np.ndarray
    ids: list[str]
    source: str = ""
    skipped: dict[str, int] | None = None

    def __len__(self) -> int:
        return int(self.spacegroup.shape[0])

    def __getitem__(self, i: int) -> SymmetricCrystal:
        a, b = self.orbit_offsets[i], self.orbit_offsets[i + 1]
        orbits = [Orbit(int(z), int(w), tuple(u)) for z, w, u in
                  zip(self.orbit_number[a:b], self.orbit_index[a:b], self.orbit_u[a:b].tolist())]
        return SymmetricCrystal(int(self.spacegroup[i]), orbits, self.k[i].copy())

    @cached_property
    def num_atoms(self) -> np.ndarray:
        """(M,) atoms of each primitive cell."""
        sizes = np.array([site_table(int(g), int(w)).size for g, w in
                          zip(np.repeat(self.spacegroup, np.diff(self.orbit_offsets)), self.orbit_index)])
        return np.add.reduceat(sizes, self.orbit_offsets[:-1]) if len(sizes) else np.zeros(0, int)

    @classmethod
    def from_crystals(cls, crystals: Sequence[SymmetricCrystal], properties: np.ndarray | None = None,
                      ids: Sequence[str] | None = None, source: str = "") -> SymmetricDataset:
        orbits = [o for c in crystals for o in c.orbits]
        return cls(
            np.array([c.spacegroup for c in crystals], dtype=np.int64),
            np.stack([c.k for c in crystals]) if crystals else np.zeros((0, 6)),
            np.concatenate([[0], np.cumsum([len(c.orbits) for c in crystals])]).astype(np.int64),
            np.array([o.number for o in orbits], dtype=np.int64),
            np.array([o.index for o in orbits], dtype=np.int64),
            np.array([o.u for o in orbits], dtype=float).reshape(-1, 3),
            properties if properties is not None else np.full((len(crystals), len(PROPERTIES)), np.nan),
            list(ids) if ids is not None else [str(i) for i in range(len(crystals))],
            source,
        )


def _describe(args: tuple) -> SymmetricCrystal | str:
    """One row: its symmetric description if it rebuilds the input, else a reason."""
    lattice, frac, numbers, symprec = args
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice(lattice), numbers.tolist(), frac)
    try:
        sym = from_structure(structure, symprec)
        rebuilt = sym.to_crystal().to_structure()
    except Exception as exc:  # any failure of one row is counted, never fatal for the dataset
        return f"no description ({type(exc).__name__})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(structure, rebuilt) is not None
    return sym if ok else "does not rebuild"


def symmetrize(data: CrystalDataset, symprec: float = SYMPREC, workers: int | None = None,
               use_cache: bool = True) -> SymmetricDataset:
    """The symmetric description of every row that round-trips (cached by the rows' hash and ``symprec``)."""
    key = hashlib.sha256(f"{data.rows_sha256()}:{symprec}:{_CACHE_VERSION}".encode()).hexdigest()[:20]
    cache_file = cache_dir() / f"symmetric.{key}.pkl"
    if use_cache and cache_file.is_file():
        with open(cache_file, "rb") as fh:
            return pickle.load(fh)
    jobs = [(data.lattices[i], data.frac_coords[data.offsets[i]:data.offsets[i + 1]], data.atoms_of(i), symprec)
            for i in range(len(data))]
    workers = workers or os.cpu_count() or 1
    from tqdm import tqdm

    if workers > 1 and len(jobs) > 50:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_describe, jobs, chunksize=32), total=len(jobs), desc="symmetrize",
                                mininterval=10))
    else:
        results = [_describe(j) for j in tqdm(jobs, desc="symmetrize", mininterval=10, disable=len(jobs) < 200)]
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    props = np.full((len(data), len(PROPERTIES)), np.nan)
    for j, name in enumerate(PROPERTIES):
        if name in data.meta:
            props[:, j] = data.meta[name].to_numpy(dtype=float)
    out = SymmetricDataset.from_crystals([results[i] for i in keep], props[keep], [data.ids[i] for i in keep],
                                         f"{data.source} (symmetrised at {symprec} A)")
    out.skipped = dict(Counter(r for r in results if isinstance(r, str)))
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(out, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cache_file)
    return out


@dataclass
class SymmetricBatch:
    """B crystals padded to N primitive-cell atoms and O orbits.

    Per crystal: ``spacegroup`` (B,), ``k`` (B, 6) conventional lattice coefficients, ``k_free`` (B, 6) bool,
    ``k_fixed`` (B, 6), ``centring`` (B, 3, 3) conventional -> primitive rows, ``n_conventional`` (B,) atoms of the
    conventional cell, ``properties`` (B, P) with NaN where unknown.
    Per orbit: ``u`` (B, O, 3), ``u_free`` (B, O, 3) bool, ``orbit_mask`` (B, O).
    Per atom: ``types`` (B, N), ``mask`` (B, N), ``orbit`` (B, N) index into O, ``letter`` (B, N) Wyckoff index,
    ``G`` (B, N, 3, 3), ``g`` (B, N, 3), ``H`` (B, N, 3, 3) as in :class:`~xtalforge.symmetry.wyckoff.SiteTable`.
    """

    spacegroup: torch.Tensor
    k: torch.Tensor
    k_free: torch.Tensor
    k_fixed: torch.Tensor
    centring: torch.Tensor
    n_conventional: torch.Tensor
    properties: torch.Tensor
    u: torch.Tensor
    u_free: torch.Tensor
    orbit_mask: torch.Tensor
    types: torch.Tensor
    mask: torch.Tensor
    orbit: torch.Tensor
    letter: torch.Tensor
    G: torch.Tensor
    g: torch.Tensor
    H: torch.Tensor

    def to(self, device: torch.device | str) -> SymmetricBatch:
        return SymmetricBatch(**{k: v.to(device) for k, v in vars(self).items()})

    def replace(self, **changes: torch.Tensor) -> SymmetricBatch:
        return SymmetricBatch(**{**vars(self), **changes})

    def positions(self, u: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) primitive fractional coordinates of every atom for orbit coordinates ``u`` (B, O, 3)."""
        u_atom = torch.gather(u, 1, self.orbit[..., None].expand(-1, -1, 3))
        x = (self.G @ u_atom[..., None]).squeeze(-1) + self.g
        return torch.remainder(x, 1.0) * self.mask[..., None].to(x.dtype)

    def orbit_velocity(self, v: torch.Tensor) -> torch.Tensor:
        """Per-atom displacements (B, N, 3) -> their least-squares orbit coordinate change (B, O, 3) (free axes)."""
        per_atom = (self.H @ v[..., None]).squeeze(-1) * self.mask[..., None].to(v.dtype)
        out = torch.zeros_like(self.u).scatter_add_(1, self.orbit[..., None].expand(-1, -1, 3), per_atom)
        return out * self.u_free.to(v.dtype)

    def crystals(self, u: torch.Tensor | None = None, k: torch.Tensor | None = None) -> list[SymmetricCrystal]:
        """Back to :class:`SymmetricCrystal` objects (with the given or the batch's own ``u`` and ``k``)."""
        u = (self.u if u is None else u).detach().double().cpu().numpy()
        k = (self.k if k is None else k).detach().double().cpu().numpy()
        out = []
        for b in range(len(k)):
            first = self.orbit[b][self.mask[b]].cpu().numpy()
            order, idx = np.unique(first, return_index=True)
            types = self.types[b][self.mask[b]].cpu().numpy()[idx]
            letters = self.letter[b][self.mask[b]].cpu().numpy()[idx]
            orbits = [Orbit(int(z), int(w), tuple(u[b, o])) for z, w, o in zip(types, letters, order)]
            out.append(SymmetricCrystal(int(self.spacegroup[b]), orbits, k[b]))
        return out


def collate_symmetric(crystals: Sequence[SymmetricCrystal], properties: np.ndarray | None = None,
                      dtype: torch.dtype = torch.float32) -> SymmetricBatch:
    """Pad symmetric crystals into a :class:`SymmetricBatch` (``properties`` (B, P), NaN = unknown)."""
    b = len(crystals)
    n_orbits = max(len(c.orbits) for c in crystals)
    tables = [[site_table(c.spacegroup, o.index) for o in c.orbits] for c in crystals]
    sizes = [sum(t.size for t in ts) for ts in tables]
    n = max(sizes)
    u = np.zeros((b, n_orbits, 3))
    u_free = np.zeros((b, n_orbits, 3), dtype=bool)
    orbit_mask = np.zeros((b, n_orbits), dtype=bool)
    types = np.zeros((b, n), dtype=np.int64)
    orbit = np.zeros((b, n), dtype=np.int64)
    letter = np.zeros((b, n), dtype=np.int64)
    G = np.zeros((b, n, 3, 3))
    g = np.zeros((b, n, 3))
    H = np.zeros((b, n, 3, 3))
    for i, (c, ts) in enumerate(zip(crystals, tables)):  # set-up only: a few orbits per crystal
        a = 0
        for j, (o, t) in enumerate(zip(c.orbits, ts)):
            u[i, j] = np.where(t.free, o.u, 0.0)
            u_free[i, j] = t.free
            orbit_mask[i, j] = True
            sl = slice(a, a + t.size)
            types[i, sl], orbit[i, sl], letter[i, sl] = o.number, j, o.index
            G[i, sl], g[i, sl], H[i, sl] = t.G, t.g, t.H
            a += t.size
    infos = [group_info(c.spacegroup) for c in crystals]
    k_free = np.stack([free_mask(inf.system) for inf in infos])
    k_fixed = np.stack([fixed_values(inf.system) for inf in infos])
    k = np.stack([np.where(f, c.k, x) for c, f, x in zip(crystals, k_free, k_fixed)])
    props = np.full((b, len(PROPERTIES)), np.nan) if properties is None else np.asarray(properties, dtype=float)
    as_t = lambda x: torch.as_tensor(x, dtype=dtype)  # noqa: E731
    return SymmetricBatch(
        torch.as_tensor([c.spacegroup for c in crystals]), as_t(k), torch.as_tensor(k_free), as_t(k_fixed),
        as_t(np.stack([CENTRING[inf.centring] for inf in infos])),
        torch.as_tensor([s * inf.n_centring for s, inf in zip(sizes, infos)]), as_t(props),
        as_t(u), torch.as_tensor(u_free), torch.as_tensor(orbit_mask), torch.as_tensor(types),
        torch.as_tensor(np.arange(n)[None, :] < np.array(sizes)[:, None]), torch.as_tensor(orbit),
        torch.as_tensor(letter), as_t(G), as_t(g), as_t(H))


def collate_rows(data: SymmetricDataset, indices, dtype: torch.dtype = torch.float32) -> SymmetricBatch:
    """Rows ``indices`` of a dataset as a batch (the training loop's collate)."""
    indices = np.asarray(indices, dtype=np.int64)
    return collate_symmetric([data[int(i)] for i in indices], data.properties[indices], dtype)
