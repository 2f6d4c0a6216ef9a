"""Property prediction: structure -> scalar with fine-tuned DAO-P backbones, plus a composition-only baseline.

    from xtalforge.properties import predict_property, available_properties
    predict_property("GaTe.cif", "band_gap")  # eV

Shipped weights live in ``weights/dao_p_<property>.pt`` (each with a model card ``dao_p_<property>.md``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from xtalforge.crystal import Crystal
from xtalforge.errors import XtalforgeError
from xtalforge.models.dao_g import WEIGHTS_DIR
from xtalforge.properties.regressor import PropertyRegressor


@dataclass(frozen=True)
class PropertySpec:
    """A predictable property: the dataset column it is trained on and its unit."""

    name: str
    label: str
    unit: str
    description: str


PROPERTIES: dict[str, PropertySpec] = {
    p.name: p
    for p in [
        PropertySpec("formation_energy", "formation_energy_per_atom", "eV/atom", "DFT (PBE) formation energy per atom"),
        PropertySpec("band_gap", "band_gap", "eV", "DFT (PBE) band gap"),
        PropertySpec("tc", "tc", "K", "superconducting critical temperature"),
    ]
}


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"dao_p_{name}.pt"


def available_properties() -> list[str]:
    """Names of the properties with shipped weights (usable with :func:`predict_property`)."""
    return [name for name in PROPERTIES if weights_path(name).is_file()]


@lru_cache(maxsize=8)
def load_property_model(name: str) -> PropertyRegressor:
    """The shipped regressor of one property (cached)."""
    if name not in PROPERTIES:
        raise XtalforgeError(f"unknown property '{name}' (choose from {', '.join(PROPERTIES)})")
    path = weights_path(name)
    if not path.is_file():
        raise XtalforgeError(f"no shipped weights for property '{name}' (available: "
                             f"{', '.join(available_properties()) or 'none'})")
    return PropertyRegressor.load(path)


def predict_property(crystal_or_path: Crystal | str | os.PathLike, name: str) -> float:
    """Predict one property of one crystal.

    Args:
        crystal_or_path: a :class:`~xtalforge.crystal.Crystal` or a CIF / POSCAR / extxyz file.
        name: ``formation_energy`` (eV/atom), ``band_gap`` (eV) or ``tc`` (K), if shipped
            (see :func:`available_properties`).

    Returns:
        the prediction in the property's unit (``PROPERTIES[name].unit``).
    """
    model = load_property_model(name)
    crystal = crystal_or_path if isinstance(crystal_or_path, Crystal) else Crystal.read(crystal_or_path)
    return float(model.predict([crystal])[0])


__all__ = ["PROPERTIES", "PropertyRegressor", "PropertySpec", "available_properties", "load_property_model",
           "predict_property"]
