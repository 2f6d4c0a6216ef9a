"""Property prediction: structure -> scalar with fine-tuned DAO-P backbones, plus a composition-only baseline.

    from xtalforge.properties import predict_property, available_properties
    predict_property("GaTe.cif", "band_gap")  # eV

Shipped weights live in ``weights/dao_p_<property>.pt`` (fine-tuned DAO-P) or ``weights/composition_<property>.npz``
(composition-only gradient boosting, shipped where it measured better, e.g. Tc), each with a model card ``.md``.
``PropertySpec.model`` says which kind ``predict_property`` uses; the other kind can be asked for explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from xtalforge.checkpoints import WEIGHTS_DIR
from xtalforge.crystal import Crystal
from xtalforge.errors import XtalforgeError
from xtalforge.properties.baseline import CompositionPropertyModel
from xtalforge.properties.regressor import PropertyRegressor

#: Model kinds and their weight files (``{name}`` = property name).
MODEL_FILES = {"dao_p": "dao_p_{name}.pt", "composition": "composition_{name}.npz"}


@dataclass(frozen=True)
class PropertySpec:
    """A predictable property: the dataset column it is trained on, its unit and the kind of model shipped for it.

    ``model`` is ``dao_p`` (fine-tuned structure model) or ``composition`` (composition-only gradient boosting,
    used where it measured better than DAO-P).
    """

    name: str
    label: str
    unit: str
    description: str
    model: str = "dao_p"


PROPERTIES: dict[str, PropertySpec] = {
    p.name: p
    for p in [
        PropertySpec("formation_energy", "formation_energy_per_atom", "eV/atom", "DFT (PBE) formation energy per atom"),
        PropertySpec("band_gap", "band_gap", "eV", "DFT (PBE) band gap"),
        # composition model: 5-fold CV on SuperCon3D, MAE ~6 K vs 10.0 K for fine-tuned DAO-P (composition_tc.md)
        PropertySpec("tc", "tc", "K", "superconducting critical temperature", model="composition"),
        # AFLOW AEL-AGL property sets (WyckoffTransformer's copies; the exact AFLOW keywords are not documented
        # upstream, units inferred from the value ranges), fine-tuned with bench/properties.py
        PropertySpec("bulk_modulus", "bulk_modulus", "GPa", "AFLOW bulk modulus"),
        PropertySpec("shear_modulus", "shear_modulus", "GPa", "AFLOW shear modulus"),
        PropertySpec("debye_temperature", "debye_temperature", "K", "AFLOW (AGL) Debye temperature"),
        PropertySpec("thermal_conductivity", "thermal_conductivity", "W/(m K)",
                     "AFLOW (AGL) lattice thermal conductivity"),
        PropertySpec("thermal_expansion", "thermal_expansion", "1/K", "AFLOW (AGL) thermal expansion coefficient"),
    ]
}


def _spec(name: str) -> PropertySpec:
    if name not in PROPERTIES:
        raise XtalforgeError(f"unknown property '{name}' (choose from {', '.join(PROPERTIES)})")
    return PROPERTIES[name]


def weights_path(name: str, model: str | None = None) -> Path:
    """Weight file of property ``name``; ``model`` (``dao_p`` / ``composition``) defaults to the shipped kind."""
    kind = model or (PROPERTIES[name].model if name in PROPERTIES else "dao_p")
    if kind not in MODEL_FILES:
        raise XtalforgeError(f"unknown property model '{kind}' (choose from {', '.join(MODEL_FILES)})")
    return WEIGHTS_DIR / MODEL_FILES[kind].format(name=name)


def available_properties() -> list[str]:
    """Names of the properties with shipped weights (usable with :func:`predict_property`)."""
    return [name for name in PROPERTIES if weights_path(name).is_file()]


@lru_cache(maxsize=16)
def load_property_model(name: str, model: str | None = None) -> PropertyRegressor | CompositionPropertyModel:
    """The shipped model of one property (cached); ``model`` picks the kind (default ``PROPERTIES[name].model``)."""
    _spec(name)
    path = weights_path(name, model)
    if not path.is_file():
        raise XtalforgeError(f"no shipped weights for property '{name}' ({path.name}; available: "
                             f"{', '.join(available_properties()) or 'none'})")
    if path.suffix == ".npz":
        return CompositionPropertyModel.load(path)
    return PropertyRegressor.load(path)


def resolve_structure(source: Crystal | str | os.PathLike, method: str = "auto", seed: int = 0) -> Crystal:
    """The crystal whose property is predicted.

    A :class:`~xtalforge.crystal.Crystal` is used as it is and an existing file is read; any other string is taken as
    a composition and replaced by the best candidate of ``xtalforge.predict(source, n=1, method=method, seed=seed)``
    (as the DAO paper does for superconductors known only by their formula). The candidate's
    ``properties["generated_by"]`` names the method.
    """
    if isinstance(source, Crystal):
        return _supported(source, "the crystal")
    if Path(source).is_file():
        return _supported(Crystal.read(source), Path(source).name)
    from xtalforge.composition import Target
    from xtalforge.prediction import predict

    try:
        Target.parse(str(source))
    except XtalforgeError as exc:
        raise XtalforgeError(f"'{source}' is neither a structure file nor a composition ({exc})") from None
    crystal = predict(str(source), n=1, method=method, seed=seed)[0].crystal
    crystal.properties["generated_by"] = method
    return _supported(crystal, f"'{source}'")


def _supported(crystal: Crystal, name: str) -> Crystal:
    """``crystal``, if the property models know its elements (their tables stop at Z = NUM_ELEMENTS; heavier atoms
    were silently read as the last one)."""
    from xtalforge.backbone.elements import NUM_ELEMENTS

    heavy = sorted({int(z) for z in crystal.numbers if z > NUM_ELEMENTS})
    if heavy:
        raise XtalforgeError(f"{name} has elements with Z = {', '.join(map(str, heavy))}; the property models cover "
                             f"Z <= {NUM_ELEMENTS}")
    return crystal


def predict_property(crystal_or_path: Crystal | str | os.PathLike, name: str, model: str | None = None,
                     method: str = "auto", seed: int = 0) -> float:
    """Predict one property of one crystal.

    Args:
        crystal_or_path: a :class:`~xtalforge.crystal.Crystal`, a CIF / POSCAR / extxyz file, or a composition
            (a structure is generated first, see :func:`resolve_structure`).
        name: ``formation_energy`` (eV/atom), ``band_gap`` (eV), ``tc`` (K) or another entry of
            :data:`PROPERTIES`, if shipped (see :func:`available_properties`).
        model: ``dao_p`` or ``composition`` to override the shipped kind (its weights must exist).
        method, seed: how a structure is generated for a composition.

    Returns:
        the prediction in the property's unit (``PROPERTIES[name].unit``).
    """
    regressor = load_property_model(name, model)
    crystal = resolve_structure(crystal_or_path, method=method, seed=seed)
    return float(regressor.predict([crystal])[0])


__all__ = ["MODEL_FILES", "PROPERTIES", "CompositionPropertyModel", "PropertyRegressor", "PropertySpec",
           "available_properties", "load_property_model", "predict_property", "resolve_structure", "weights_path"]
