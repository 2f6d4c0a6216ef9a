"""Ranking candidate structures of one composition without knowing the answer (issue 4, "ranking without an oracle").

Each scorer maps a list of candidate :class:`~xtalforge.crystal.Crystal` objects to a (k,) array where **lower is
better**; :func:`rank` turns it into an order (stable, non-finite values last):

* ``score``: the generating method's own score (negated, so lower is better); no extra model.
* ``dao-p``: DAO-P's predicted energy in eV/atom at the clean time ``CLEAN_T`` (shipped ``dao_p_energy_mp20.pt``,
  formation energy label), one batched forward pass.
* ``chgnet``: CHGNet energy in eV/atom of the unrelaxed candidates (batched).
* ``chgnet-relax``: CHGNet energy in eV/atom after a short FIRE relaxation (:func:`chgnet_relaxed_energy`); the
  relaxed structures, not the inputs, are the candidates then.

Measured rank-1 match rates of each ranking next to oracle-of-20: ``bench/ranking.py`` ->
``bench/results/ranking_mp20.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from xtalforge.crystal import Crystal
from xtalforge.errors import StructureError, XtalforgeError
from xtalforge.relax.chgnet import MIN_VOLUME_PER_ATOM

if TYPE_CHECKING:
    from xtalforge.models.dao_p import DAOP

#: Rankings :func:`rank` understands (lower value = better candidate for every one of them).
RANKINGS = ("score", "dao-p", "chgnet", "chgnet-relax")
#: Shipped DAO-P weights used for ``dao-p`` ranking.
DAO_P_WEIGHTS = "energy_mp20"
#: ... nor about cells with two atoms closer than this (Angstrom; CDVAE/DiffCSP structural validity).
MIN_DISTANCE = 0.5


def plausible(crystal: Crystal) -> bool:
    """True if the crystal is dense enough to be safe for CHGNet and physically possible: volume per atom at least
    :data:`MIN_VOLUME_PER_ATOM` A^3 and every interatomic distance at least :data:`MIN_DISTANCE` A."""
    from xtalforge.evaluation.matching import structure_is_valid

    if crystal.volume / crystal.num_atoms < MIN_VOLUME_PER_ATOM:
        return False
    return structure_is_valid(crystal.lattice, crystal.frac_coords, MIN_DISTANCE)


@lru_cache(maxsize=2)
def load_dao_p(weights: str = DAO_P_WEIGHTS) -> DAOP:
    """The DAO-P energy model on CPU, loaded once per process (a shipped name or a file path)."""
    from xtalforge.models.dao_p import DAOP

    return DAOP.load(weights, "cpu")


def method_score(crystals: Sequence[Crystal]) -> np.ndarray:
    """(k,) negated method score ``-properties["score"]`` (lower is better; a missing score counts as 0)."""
    return np.array([-float(c.properties.get("score", 0.0) or 0.0) for c in crystals], dtype=np.float64)


def dao_p_energy(crystals: Sequence[Crystal], weights: str = DAO_P_WEIGHTS, threads: int | None = None) -> np.ndarray:
    """(k,) DAO-P predicted energy in eV/atom (its training label) of clean crystals, at ``t = CLEAN_T``, batched."""
    from xtalforge.relax.chgnet import torch_threads

    if not crystals:
        return np.zeros(0)
    with torch_threads(threads):
        return load_dao_p(weights).predict_energy(list(crystals))


def chgnet_energy(crystals: Sequence[Crystal], batch_size: int = 16, threads: int | None = None,
                  desc: str | None = None) -> np.ndarray:
    """(k,) CHGNet energy in eV/atom of the crystals as given (no relaxation), batched; ``desc`` labels a progress
    bar (terminal only).

    NaN where CHGNet fails or the crystal is not :func:`plausible` (not evaluated, see :data:`MIN_VOLUME_PER_ATOM`).
    """
    from xtalforge.relax import chgnet_energies

    out = np.full(len(crystals), np.nan)
    ok = [i for i, c in enumerate(crystals) if plausible(c)]
    if ok:
        out[ok] = chgnet_energies([crystals[i] for i in ok], batch_size=batch_size, threads=threads, desc=desc)
    return out


def chgnet_relaxed_energy(
    crystals: Sequence[Crystal], steps: int = 20, fmax: float = 0.1, threads: int | None = None
) -> tuple[list[Crystal | None], np.ndarray]:
    """Short CHGNet FIRE relaxation (atoms + cell) of every crystal, at most ``steps`` steps each.

    Returns:
        (relaxed crystals, (k,) energies in eV/atom after relaxation). A crystal CHGNet cannot relax (e.g. an isolated
        atom) or that is not :func:`plausible` gives None and NaN, so one bad candidate never sinks the set.
    """
    from xtalforge.relax import relax

    relaxed: list[Crystal | None] = []
    energies = np.full(len(crystals), np.nan)
    for i, c in enumerate(crystals):
        if not plausible(c):
            relaxed.append(None)
            continue
        try:
            r = relax(c, potential="chgnet", fmax=fmax, steps=steps, threads=threads).crystal
        except StructureError:
            relaxed.append(None)
            continue
        relaxed.append(r)
        energies[i] = float(r.properties["energy_per_atom"])
    return relaxed, energies


def check_ranking(by: str) -> str:
    """``by`` if it is a known ranking, else a one-line :class:`XtalforgeError`."""
    if by not in RANKINGS:
        raise XtalforgeError(f"unknown ranking '{by}' (choose from {', '.join(RANKINGS)})")
    return by


def order_of(values: np.ndarray) -> np.ndarray:
    """Indices sorting ``values`` ascending; stable (ties keep the input order), NaN and +-inf last."""
    values = np.asarray(values, dtype=np.float64)
    key = np.where(np.isfinite(values), values, np.inf)
    return np.argsort(key, kind="stable")


def rank_values(crystals: Sequence[Crystal], by: str = "score", steps: int = 20,
                threads: int | None = None) -> tuple[np.ndarray, list[Crystal | None] | None]:
    """(k,) ranking values (lower is better) under ``by``; for ``chgnet-relax`` also the relaxed crystals."""
    check_ranking(by)
    if by == "score":
        return method_score(crystals), None
    if by == "dao-p":
        return dao_p_energy(crystals, threads=threads), None
    if by == "chgnet":
        return chgnet_energy(crystals, threads=threads), None
    relaxed, energies = chgnet_relaxed_energy(crystals, steps=steps, threads=threads)
    return energies, relaxed


def rank(crystals: Sequence[Crystal], by: str = "score", steps: int = 20, threads: int | None = None) -> np.ndarray:
    """Order (indices into ``crystals``, best first) under the ranking ``by`` (one of :data:`RANKINGS`).

    Energies are per atom, so candidates of different Z are comparable. Candidates an energy model cannot evaluate
    (NaN) come last. ``steps`` is the FIRE step budget of ``chgnet-relax`` (whose order refers to the relaxed
    crystals; use :func:`chgnet_relaxed_energy` to get them).
    """
    return order_of(rank_values(crystals, by, steps, threads)[0])
