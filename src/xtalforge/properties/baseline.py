"""Composition-only baseline for property prediction: element fractions + elemental-property statistics, then
gradient boosting (scikit-learn ``HistGradientBoostingRegressor``).

It sees no structure at all, so the gap between it and a structure model is what the structure adds.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from xtalforge.backbone.elements import NUM_ELEMENTS

_ELEMENT_PROPERTIES = ("Z", "row", "group", "X", "atomic_radius", "atomic_mass", "mendeleev_no",
                       "ionization_energy", "electron_affinity", "molar_volume")


@lru_cache(maxsize=1)
def elemental_table() -> np.ndarray:
    """(NUM_ELEMENTS + 1, 10) numeric element properties (row Z; missing values = the column mean; row 0 unused)."""
    from pymatgen.core import Element

    table = np.full((NUM_ELEMENTS + 1, len(_ELEMENT_PROPERTIES)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, NUM_ELEMENTS + 1):
            el = Element.from_Z(z)
            for j, name in enumerate(_ELEMENT_PROPERTIES):
                try:
                    value = getattr(el, name)
                    table[z, j] = float(value) if value is not None else np.nan
                except (AttributeError, TypeError, ValueError):
                    pass
    means = np.nanmean(table[1:], axis=0)
    rows, cols = np.nonzero(np.isnan(table))
    table[rows, cols] = means[cols]
    return table


def composition_features(numbers: Sequence[int]) -> np.ndarray:
    """Features of one composition (atomic numbers of all atoms of a cell, or any multiple of it).

    Returns (NUM_ELEMENTS + 4 * 10 + 1,): element fractions, then the fraction-weighted mean, mean absolute
    deviation, min and max of each elemental property, then the number of distinct elements.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    z, counts = np.unique(numbers, return_counts=True)
    frac = counts / counts.sum()
    fractions = np.zeros(NUM_ELEMENTS)
    fractions[z - 1] = frac
    props = elemental_table()[z]  # (E, P)
    mean = frac @ props
    dev = frac @ np.abs(props - mean)
    return np.concatenate([fractions, mean, dev, props.min(0), props.max(0), [len(z)]])


def composition_matrix(cells: Sequence[Sequence[int]]) -> np.ndarray:
    """(M, F) features of many compositions."""
    return np.stack([composition_features(c) for c in cells])


class CompositionBaseline:
    """Gradient boosting on :func:`composition_features` (fit on cells + labels, predict on cells)."""

    def __init__(self, seed: int = 0, max_iter: int = 500) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.model = HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=0.05, random_state=seed,
                                                   early_stopping=True, validation_fraction=0.1)

    def fit(self, cells: Sequence[Sequence[int]], y: np.ndarray) -> CompositionBaseline:
        self.model.fit(composition_matrix(cells), np.asarray(y, dtype=np.float64))
        return self

    def predict(self, cells: Sequence[Sequence[int]]) -> np.ndarray:
        return self.model.predict(composition_matrix(cells))
