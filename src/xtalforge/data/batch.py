"""Batching variable-size crystals for the models: padded tensors with an atom mask (pure torch, no scatter).

Padding is cheap because Crysformer attends over all atoms of one cell (N^2 pairs per cell) and batches are
bucketed by size (:func:`size_bucketed_batches`), so little compute is spent on padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtalforge.data.dataset import CrystalDataset


@dataclass
class CrystalBatch:
    """B crystals padded to N atoms.

    Attributes:
        lattice: (B, 3, 3) Angstrom, rows are lattice vectors.
        frac: (B, N, 3) fractional coordinates in [0, 1) (0 at padding).
        types: (B, N) atomic numbers (0 at padding).
        mask: (B, N) True for real atoms.
        energy: optional (B,) per-crystal label (eV/atom) for energy / property models; None for generators.
    """

    lattice: torch.Tensor
    frac: torch.Tensor
    types: torch.Tensor
    mask: torch.Tensor
    energy: torch.Tensor | None = None

    @property
    def num_atoms(self) -> torch.Tensor:
        """(B,) atoms per crystal."""
        return self.mask.sum(dim=1)

    def to(self, device: torch.device | str) -> CrystalBatch:
        energy = None if self.energy is None else self.energy.to(device)
        return CrystalBatch(self.lattice.to(device), self.frac.to(device), self.types.to(device), self.mask.to(device),
                            energy)

    def replace(self, **changes: torch.Tensor) -> CrystalBatch:
        fields = {"lattice": self.lattice, "frac": self.frac, "types": self.types, "mask": self.mask,
                  "energy": self.energy}
        fields.update(changes)
        return CrystalBatch(**fields)

    def crystals(self) -> list:
        """Back to :class:`~xtalforge.crystal.Crystal` objects (padding removed)."""
        from xtalforge.crystal import Crystal

        lat = self.lattice.detach().double().cpu().numpy()
        frac = self.frac.detach().double().cpu().numpy()
        types = self.types.cpu().numpy()
        mask = self.mask.cpu().numpy()
        return [Crystal(lat[b], frac[b][mask[b]], types[b][mask[b]]) for b in range(lat.shape[0])]


def collate(data: CrystalDataset, indices, dtype: torch.dtype = torch.float32,
            energy_column: str | None = None) -> CrystalBatch:
    """Pad rows ``indices`` of a dataset into one :class:`CrystalBatch` (vectorised, no per-atom loop).

    ``energy_column``: a column of ``data.meta`` copied into ``batch.energy`` (B,) (e.g. eV/atom labels).
    """
    indices = np.asarray(indices, dtype=np.int64)
    counts = data.num_atoms[indices]
    n_max = int(counts.max())
    starts = data.offsets[indices]
    slot = np.arange(n_max)[None, :]
    mask = slot < counts[:, None]
    src = (starts[:, None] + slot)[mask]
    frac = np.zeros((len(indices), n_max, 3))
    types = np.zeros((len(indices), n_max), dtype=np.int64)
    frac[mask] = data.frac_coords[src]
    types[mask] = data.numbers[src]
    return CrystalBatch(
        torch.as_tensor(data.lattices[indices], dtype=dtype),
        torch.as_tensor(frac, dtype=dtype),
        torch.as_tensor(types),
        torch.as_tensor(mask),
        None if energy_column is None else torch.as_tensor(data.meta[energy_column].to_numpy()[indices], dtype=dtype),
    )


def collate_numbers(numbers_list: list[list[int]], dtype: torch.dtype = torch.float32) -> CrystalBatch:
    """A batch holding only compositions (lattice = identity, coordinates 0): the starting point of CSP sampling."""
    n_max = max(len(n) for n in numbers_list)
    types = torch.zeros(len(numbers_list), n_max, dtype=torch.long)
    mask = torch.zeros(len(numbers_list), n_max, dtype=torch.bool)
    for b, nums in enumerate(numbers_list):  # one loop over crystals at set-up, not in the model
        types[b, : len(nums)] = torch.as_tensor(nums)
        mask[b, : len(nums)] = True
    lattice = torch.eye(3, dtype=dtype).expand(len(numbers_list), 3, 3).clone()
    return CrystalBatch(lattice, torch.zeros(len(numbers_list), n_max, 3, dtype=dtype), types, mask)


def size_bucketed_batches(num_atoms: np.ndarray, max_atoms_per_batch: int, rng: np.random.Generator | None = None,
                          max_crystals: int = 512) -> list[np.ndarray]:
    """Split row indices into batches of similar size, each holding at most ``max_atoms_per_batch`` padded atoms.

    With ``rng`` the rows are shuffled within size chunks and the batch order is shuffled (for training).
    """
    order = np.argsort(num_atoms, kind="stable")
    if rng is not None:
        # shuffle within windows of similar size so batches differ between epochs but stay tight
        noise = rng.uniform(0, 1.5, size=len(num_atoms))
        order = np.argsort(num_atoms + noise, kind="stable")
    batches, current, current_max = [], [], 0
    for idx in order:
        n = int(num_atoms[idx])
        new_max = max(current_max, n)
        if current and (new_max * (len(current) + 1) > max_atoms_per_batch or len(current) >= max_crystals):
            batches.append(np.array(current))
            current, new_max = [], n
        current.append(idx)
        current_max = new_max
    if current:
        batches.append(np.array(current))
    if rng is not None:
        rng.shuffle(batches)
    return batches
