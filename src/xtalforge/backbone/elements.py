"""A fixed 92-d element feature table (the frozen node input of Crysformer).

CGCNN's ``atom_init.json`` is not available offline and no installed package ships a CGCNN-style table, so this one is
built the same way from pymatgen element data: one-hot codes of group (18), period (7) and block (4), 10-bin one-hots
of Pauling electronegativity, atomic radius, first ionisation energy, electron affinity and molar volume, a 12-bin
one-hot of valence electrons, and a metal flag: 18 + 7 + 4 + 5 * 10 + 12 + 1 = 92. Missing values (noble-gas
electronegativity, ...) leave their block all zero. Row 0 (padding) is zero. The table is stored as a buffer in every
checkpoint, so shipped weights do not depend on the installed pymatgen's data.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

NUM_ELEMENTS = 100
ELEMENT_DIM = 92

# bin edges chosen to spread elements 1-100 roughly evenly over the bins
_BINS = {
    "X": np.linspace(0.7, 4.0, 11),  # Pauling electronegativity
    "atomic_radius": np.linspace(0.25, 2.6, 11),  # Angstrom
    "ionization_energy": np.linspace(3.8, 25.0, 11),  # eV
    "electron_affinity": np.linspace(-1.0, 3.7, 11),  # eV
    "molar_volume": np.log(np.logspace(np.log10(4.0), np.log10(72.0), 11)),  # ln(cm^3/mol)
}


def _one_hot_bin(value: float | None, edges: np.ndarray) -> np.ndarray:
    out = np.zeros(len(edges) - 1)
    if value is None or not np.isfinite(value):
        return out
    out[int(np.clip(np.searchsorted(edges, value) - 1, 0, len(out) - 1))] = 1.0
    return out


def _valence(el) -> int:
    """Valence electrons counted from the group (s/p/d blocks) or 3 for f-block elements."""
    if el.block == "f":
        return 3
    g = int(el.group)
    return g if g <= 12 else g - 10


@lru_cache(maxsize=1)
def element_table() -> np.ndarray:
    """(101, 92) float32 features; row Z is element Z, row 0 is padding (zeros)."""
    from pymatgen.core.periodic_table import Element

    table = np.zeros((NUM_ELEMENTS + 1, ELEMENT_DIM), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing data for heavy elements
        for z in range(1, NUM_ELEMENTS + 1):
            el = Element.from_Z(z)
            group = np.zeros(18)
            group[int(el.group) - 1] = 1.0
            period = np.zeros(7)
            period[int(el.row) - 1] = 1.0
            block = np.zeros(4)
            block["spdf".index(el.block)] = 1.0
            values = {
                "X": float(el.X),
                "atomic_radius": None if el.atomic_radius is None else float(el.atomic_radius),
                "ionization_energy": None if el.ionization_energy is None else float(el.ionization_energy),
                "electron_affinity": None if el.electron_affinity is None else float(el.electron_affinity),
                "molar_volume": None if el.molar_volume is None else float(np.log(float(el.molar_volume))),
            }
            binned = [_one_hot_bin(values[k], _BINS[k]) for k in _BINS]
            valence = np.zeros(12)
            valence[min(_valence(el), 12) - 1] = 1.0
            table[z] = np.concatenate([group, period, block, *binned, valence, [float(el.is_metal)]])
    return table
