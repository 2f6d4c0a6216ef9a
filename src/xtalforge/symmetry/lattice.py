"""Lattices in a crystal system's own coordinates: six coefficients ``k`` of the log of the metric (DiffCSP++).

The symmetric factor of the conventional lattice, ``S = log((L L^T)^(1/2))``, is written in a fixed basis of
symmetric matrices, ``S = sum_i k_i B_i``. Each crystal system fixes some ``k_i`` (to 0, or to ``-log(3)/4`` for the
120 degree angle of hexagonal cells) and leaves the rest free, so a lattice built from any free values has that
system's metric exactly, and ``exp(S)`` is always a valid (positive definite) lattice. ``k_6 = log(V) / 3``.
"""

from __future__ import annotations

import math

import numpy as np

#: B_1..B_6 (symmetric 3 x 3): xy, xz, yz shears, then diag(1, -1, 0), diag(1, 1, -2), the identity.
BASIS = np.array([
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]],
    [[0, 0, 1], [0, 0, 0], [1, 0, 0]],
    [[0, 0, 0], [0, 0, 1], [0, 1, 0]],
    [[1, 0, 0], [0, -1, 0], [0, 0, 0]],
    [[1, 0, 0], [0, 1, 0], [0, 0, -2]],
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
], dtype=float)

#: Free coefficients per crystal system (monoclinic: unique axis b, the standard setting).
FREE = {
    "triclinic": (1, 1, 1, 1, 1, 1),
    "monoclinic": (0, 1, 0, 1, 1, 1),
    "orthorhombic": (0, 0, 0, 1, 1, 1),
    "tetragonal": (0, 0, 0, 0, 1, 1),
    "hexagonal": (0, 0, 0, 0, 1, 1),
    "cubic": (0, 0, 0, 0, 0, 1),
}
HEX_SHEAR = -math.log(3.0) / 4.0  # k_1 of a = b, gamma = 120 degrees


def crystal_system(spacegroup: int) -> str:
    """The lattice system of an ITA number (trigonal groups, R ones in their hexagonal setting, are hexagonal)."""
    for last, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                       (194, "hexagonal"), (230, "cubic")):
        if spacegroup <= last:
            return name
    raise ValueError(f"space group {spacegroup} does not exist")


def free_mask(system: str) -> np.ndarray:
    """(6,) bool: which ``k`` a system leaves free."""
    return np.array(FREE[system], dtype=bool)


def fixed_values(system: str) -> np.ndarray:
    """(6,) the values of the fixed ``k`` (free entries 0)."""
    k = np.zeros(6)
    if system == "hexagonal":
        k[0] = HEX_SHEAR
    return k


def gram_to_k(gram: np.ndarray, system: str | None = None) -> np.ndarray:
    """(6,) coefficients of ``0.5 log(gram)``; with ``system`` the fixed ones are set exactly."""
    w, v = np.linalg.eigh(np.asarray(gram, dtype=float))
    s = (v * (0.5 * np.log(w))) @ v.T
    k = np.array([s[0, 1], s[0, 2], s[1, 2], (s[0, 0] - s[1, 1]) / 2, (s[0, 0] + s[1, 1] - 2 * s[2, 2]) / 6,
                  np.trace(s) / 3])
    if system is not None:
        free = free_mask(system)
        k = np.where(free, k, fixed_values(system))
    return k


def k_to_lattice(k: np.ndarray) -> np.ndarray:
    """(3, 3) lattice ``exp(sum_i k_i B_i)`` (symmetric; its Gram matrix is ``exp(2 S)``)."""
    s = np.tensordot(np.asarray(k, dtype=float), BASIS, axes=1)
    w, v = np.linalg.eigh(s)
    return (v * np.exp(w)) @ v.T
