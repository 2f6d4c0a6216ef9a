"""Composition-only baseline for property prediction: element fractions + elemental-property statistics, then
gradient boosting (scikit-learn ``HistGradientBoostingRegressor``).

It sees no structure at all, so the gap between it and a structure model is what the structure adds. A fitted
baseline can be shipped as a property model (:class:`CompositionPropertyModel`): the boosted trees are exported to
plain numpy arrays in an ``.npz`` (no pickle, no scikit-learn needed to predict) together with the elemental table
the features were computed from.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from xtalforge.backbone.elements import NUM_ELEMENTS
from xtalforge.crystal import Crystal, atomic_save_npz
from xtalforge.data.dataset import CrystalDataset
from xtalforge.errors import XtalforgeError

COMPOSITION_FORMAT = "xtalforge-composition-gbt-1"

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


def composition_features(numbers: Sequence[int], table: np.ndarray | None = None) -> np.ndarray:
    """Features of one composition (atomic numbers of all atoms of a cell, or any multiple of it).

    Args:
        numbers: atomic numbers.
        table: elemental properties as from :func:`elemental_table` (default: computed from pymatgen now).

    Returns (NUM_ELEMENTS + 4 * 10 + 1,): element fractions, then the fraction-weighted mean, mean absolute
    deviation, min and max of each elemental property, then the number of distinct elements.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    z, counts = np.unique(numbers, return_counts=True)
    frac = counts / counts.sum()
    fractions = np.zeros(NUM_ELEMENTS)
    fractions[z - 1] = frac
    props = (elemental_table() if table is None else table)[z]  # (E, P)
    mean = frac @ props
    dev = frac @ np.abs(props - mean)
    return np.concatenate([fractions, mean, dev, props.min(0), props.max(0), [len(z)]])


def composition_matrix(cells: Sequence[Sequence[int]], table: np.ndarray | None = None) -> np.ndarray:
    """(M, F) features of many compositions."""
    return np.stack([composition_features(c, table) for c in cells])


class CompositionBaseline:
    """Gradient boosting on :func:`composition_features` (fit on cells + labels, predict on cells)."""

    def __init__(self, seed: int = 0, max_iter: int = 500) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.model = HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=0.05, random_state=seed,
                                                   early_stopping=True, validation_fraction=0.1)

    def fit(self, cells: Sequence[Sequence[int]], y: np.ndarray) -> CompositionBaseline:
        y = np.asarray(y, dtype=np.float64)
        # standardised labels: the booster's early-stopping tolerance is absolute, so labels of scale 1e-5 (thermal
        # expansion in 1/K) would otherwise stop it after a few iterations
        self.shift, self.scale = float(y.mean()), float(y.std() or 1.0)
        self.model.fit(composition_matrix(cells), (y - self.shift) / self.scale)
        return self

    def predict(self, cells: Sequence[Sequence[int]]) -> np.ndarray:
        return self.shift + self.scale * self.model.predict(composition_matrix(cells))

    def trees(self) -> TreeEnsemble:
        """The fitted model as plain arrays (see :class:`TreeEnsemble`), label scaling folded in."""
        return TreeEnsemble.from_sklearn(self.model, self.shift, self.scale)


class TreeEnsemble:
    """A fitted ``HistGradientBoostingRegressor`` (squared error, numeric features) as plain numpy arrays.

    Prediction = ``baseline + sum over trees of the reached leaf value``; a node sends x left when
    ``x[feature] <= threshold``, or when x[feature] is NaN and ``missing_left`` (scikit-learn's rule).
    Node arrays hold all trees back to back; ``left`` / ``right`` are global node indices, ``roots`` the first node
    of each tree.
    """

    KEYS = ("feature", "threshold", "missing_left", "left", "right", "is_leaf", "value", "roots", "baseline")

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        missing = [k for k in self.KEYS if k not in arrays]
        if missing:
            raise XtalforgeError(f"tree ensemble lacks arrays {missing}")
        self.arrays = {k: np.asarray(arrays[k]) for k in self.KEYS}

    @classmethod
    def from_sklearn(cls, model, shift: float = 0.0, scale: float = 1.0) -> TreeEnsemble:
        """Export ``model``; predictions become ``shift + scale * model.predict(x)``."""
        loss = type(model._loss).__name__
        if loss != "HalfSquaredError":  # other losses need an inverse link on the raw prediction
            raise XtalforgeError(f"only squared-error boosting can be exported, not {loss}")
        parts, roots, offset = [], [], 0
        for (tree,) in model._predictors:
            nodes = tree.nodes
            if nodes["is_categorical"].any():
                raise XtalforgeError("categorical splits cannot be exported")
            roots.append(offset)
            parts.append((nodes, offset))
            offset += len(nodes)
        cat = lambda f: np.concatenate([n[f] for n, _ in parts])  # noqa: E731
        node_offset = np.concatenate([np.full(len(n), o, dtype=np.int64) for n, o in parts])
        return cls({
            "feature": cat("feature_idx").astype(np.int64), "threshold": cat("num_threshold").astype(np.float64),
            "missing_left": cat("missing_go_to_left").astype(bool),
            "left": cat("left").astype(np.int64) + node_offset, "right": cat("right").astype(np.int64) + node_offset,
            "is_leaf": cat("is_leaf").astype(bool), "value": scale * cat("value").astype(np.float64),
            "roots": np.asarray(roots, dtype=np.int64),
            "baseline": shift + scale * np.asarray(model._baseline_prediction, dtype=np.float64).reshape(1),
        })

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(M,) predictions of the (M, F) feature matrix ``x``."""
        a = self.arrays
        x = np.asarray(x, dtype=np.float64)
        node = np.broadcast_to(a["roots"], (len(x), len(a["roots"]))).copy()  # (M, T) current node per tree
        rows = np.arange(len(x))[:, None]
        while True:
            inner = ~a["is_leaf"][node]
            if not inner.any():
                break
            value = x[np.broadcast_to(rows, node.shape), a["feature"][node]]
            go_left = np.where(np.isnan(value), a["missing_left"][node], value <= a["threshold"][node])
            node = np.where(inner, np.where(go_left, a["left"][node], a["right"][node]), node)
        return a["baseline"][0] + a["value"][node].sum(axis=1)


def _cells(crystals: Sequence[Crystal] | CrystalDataset) -> list[np.ndarray]:
    if isinstance(crystals, CrystalDataset):
        return [crystals.atoms_of(i) for i in range(len(crystals))]
    return [np.asarray(c.numbers) for c in crystals]


class CompositionPropertyModel:
    """A shippable composition-only property model: exported boosted trees + the elemental table they were fit on.

    Same interface as :class:`~xtalforge.properties.regressor.PropertyRegressor` (``name``, ``label``, ``unit``,
    ``log_target``, ``meta``, ``predict``). Any cell size works: only the composition is read.
    """

    def __init__(self, trees: TreeEnsemble, name: str, label: str, unit: str, log_target: bool = False,
                 table: np.ndarray | None = None, meta: dict | None = None) -> None:
        self.trees, self.name, self.label, self.unit, self.log_target = trees, name, label, unit, log_target
        self.table = elemental_table() if table is None else np.asarray(table, dtype=np.float64)
        self.meta = dict(meta or {})

    @classmethod
    def fit(cls, cells: Sequence[Sequence[int]], y: np.ndarray, name: str, label: str, unit: str,
            log_target: bool = False, seed: int = 0, meta: dict | None = None) -> CompositionPropertyModel:
        """Fit a :class:`CompositionBaseline` on ``cells`` and labels ``y`` (in ``unit``; log taken if asked)."""
        y = np.asarray(y, dtype=np.float64)
        if log_target and (y <= 0).any():
            raise XtalforgeError(f"{name}: labels <= 0 with a log target")
        base = CompositionBaseline(seed=seed).fit(cells, np.log(y) if log_target else y)
        return cls(base.trees(), name, label, unit, log_target, elemental_table(),
                   {**(meta or {}), "n_train": len(y), "n_iter": int(base.model.n_iter_)})

    def predict(self, crystals: Sequence[Crystal] | CrystalDataset) -> np.ndarray:
        """(M,) predictions in ``self.unit``."""
        raw = self.trees.predict(composition_matrix(_cells(crystals), self.table))
        return np.exp(raw) if self.log_target else raw

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` of plain arrays (loadable with ``allow_pickle=False``), atomically."""
        header = {"format": COMPOSITION_FORMAT, "name": self.name, "label": self.label, "unit": self.unit,
                  "log_target": self.log_target, "meta": self.meta}
        atomic_save_npz(path, header=np.asarray(json.dumps(header, default=str)), table=self.table,
                        **self.trees.arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CompositionPropertyModel:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        header = json.loads(str(arrays.pop("header"))) if "header" in arrays else {}
        if header.get("format") != COMPOSITION_FORMAT:
            raise XtalforgeError(f"{path} is not a composition property model (format {header.get('format')!r})")
        return cls(TreeEnsemble(arrays), header["name"], header["label"], header["unit"], header["log_target"],
                   arrays["table"], header["meta"])
