"""Ranking candidate structures of one composition without knowing the answer (issue 4, "ranking without an oracle").

Each scorer maps a list of candidate :class:`~xtalforge.crystal.Crystal` objects to a (k,) array where **lower is
better**; :func:`rank` turns it into an order (stable, non-finite values last):

* ``score``: the generating method's own score (negated, so lower is better); no extra model.
* ``dao-p``: DAO-P's predicted energy in eV/atom at the clean time ``CLEAN_T`` (shipped ``dao_p_energy_mp20.pt``,
  formation energy label), one batched forward pass.
* ``chgnet``: CHGNet energy in eV/atom of the unrelaxed candidates (batched).
* ``chgnet-relax``: CHGNet energy in eV/atom after a short FIRE relaxation (:func:`chgnet_relaxed_energy`); the
  relaxed structures, not the inputs, are the candidates then.
* ``consensus``: for samples of a generative model. The structure drawn most often comes first: candidates are
  ordered by how many of the others they match (``StructureMatcher``, benchmark tolerances), ties by CHGNet energy,
  one candidate of each matching group before the repeats (:func:`consensus_order`); implausible candidates match
  nothing. Its value is the position.

:class:`RankedPool` is a method drawing a pool of candidates and returning the best ``n`` under one ranking: what
``predict`` and ``evaluate`` both run. Measured rank-1 match rates of each ranking: ``bench/ranking.py``,
docs/results.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from xtalforge.composition import Target
from xtalforge.crystal import Crystal
from xtalforge.errors import StructureError, XtalforgeError
from xtalforge.methods import CSPMethod
from xtalforge.relax.chgnet import MIN_VOLUME_PER_ATOM

if TYPE_CHECKING:
    from xtalforge.models.dao_p import DAOP

#: Rankings :func:`rank` understands (lower value = better candidate for every one of them).
RANKINGS = ("score", "dao-p", "chgnet", "chgnet-relax", "consensus")
#: Samples a generator draws per composition before consensus picks the best ``n`` (chosen on MP-20 tune rows,
#: docs/methods.md).
GENERATOR_POOL = 60
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


def consensus_order(matches: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Order of k candidates by consensus, best first.

    Args:
        matches: (k, k) bool, which candidates match each other (diagonal ignored).
        energies: (k,) tie-break, lower first (NaN last), e.g. CHGNet eV/atom.

    Candidates are preferred by the number of others they match, then by energy, and grouped by
    :func:`leaders_first`. (Trading votes against energy did not rank better; docs/methods.md.)
    """
    matches = np.asarray(matches, dtype=bool) & ~np.eye(len(energies), dtype=bool)
    energy = np.where(np.isfinite(energies), energies, np.inf)
    return leaders_first(np.lexsort((energy, -matches.sum(axis=1))), matches)


def leaders_first(preference: np.ndarray, matches: np.ndarray) -> np.ndarray:
    """Reorder ``preference`` (candidate indices, best first) so that distinct structures come first: walking it, a
    candidate that matches none of the leaders taken so far (``matches``, (k, k) bool) is the next leader; the
    leaders come first, then the repeats in the same preference, so none is dropped."""
    covered = np.zeros(len(matches), dtype=bool)
    leaders, repeats = [], []
    for j in preference:  # k <= a few hundred candidates: a plain loop
        if covered[j]:
            repeats.append(int(j))
        else:
            leaders.append(int(j))
            covered |= matches[j]
    return np.array(leaders + repeats, dtype=np.int64)


def consensus_position(matches: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """(k,) position of each candidate in :func:`consensus_order` (0 = best): ranking values, lower is better."""
    position = np.empty(len(energies))
    position[consensus_order(matches, energies)] = np.arange(len(energies))
    return position


def plausible_matches(crystals: Sequence[Crystal]) -> np.ndarray:
    """(k, k) bool: which crystals match each other (:func:`~xtalforge.evaluation.workers.pairwise_matches`, benchmark
    tolerances, diagonal False); crystals that are not :func:`plausible` match nothing: they should not win a vote,
    and the skewed cells of a failed sample can take a second per pair to reduce, which in a pool of 60 adds up to
    minutes."""
    from xtalforge.evaluation.workers import pairwise_matches

    ok = [i for i, c in enumerate(crystals) if plausible(c)]
    matches = np.zeros((len(crystals), len(crystals)), dtype=bool)
    matches[np.ix_(ok, ok)] = pairwise_matches([(crystals[i].lattice, crystals[i].frac_coords, crystals[i].numbers)
                                                for i in ok])
    return matches


def _record_votes(crystals: Sequence[Crystal], matches: np.ndarray, energies: np.ndarray) -> None:
    """``consensus_matches`` (how many others each matches) and ``static_energy_per_atom`` (CHGNet eV/atom or None)
    in every crystal's ``properties``, so an output shows why it was ranked where it is."""
    for c, m, e in zip(crystals, matches.sum(axis=1), energies):
        c.properties["consensus_matches"] = int(m)
        c.properties["static_energy_per_atom"] = float(e) if np.isfinite(e) else None


def consensus(crystals: Sequence[Crystal], threads: int | None = None) -> np.ndarray:
    """(k,) position of each crystal in :func:`consensus_order` (0 = best), with the matches of
    :func:`plausible_matches` and CHGNet static energies as the tie-break; records each crystal's votes and energy in
    its ``properties`` (``consensus_matches``, ``static_energy_per_atom``)."""
    energies = chgnet_energy(crystals, threads=threads)
    matches = plausible_matches(crystals)
    _record_votes(crystals, matches, energies)
    return consensus_position(matches, energies)


def consensus_leaders(pool: Sequence[Crystal], k: int, exclude: Sequence[Crystal] = (),
                      threads: int | None = None) -> list[Crystal]:
    """Up to ``k`` crystals of ``pool`` (samples of a generator) in :func:`consensus_order`, the most agreed-on
    distinct structures first, passing over the samples that match a crystal of ``exclude`` (candidates another
    method already offers) or are not :func:`plausible`; those fill the list only if the others run out.

    Votes are counted among the pool's samples alone (``exclude`` only removes); each returned crystal's
    ``properties`` records its votes and CHGNet energy as :func:`consensus` does.
    """
    pool, exclude = list(pool), list(exclude)
    if not pool or k < 1:
        return []
    energies = chgnet_energy(pool, threads=threads)
    matches = plausible_matches(exclude + pool)
    ne = len(exclude)
    votes = matches[ne:, ne:]
    _record_votes(pool, votes, energies)
    passed = matches[ne:, :ne].any(axis=1) | ~np.array([plausible(c) for c in pool], dtype=bool)
    order = consensus_order(votes, energies)
    order = [j for j in order if not passed[j]] + [j for j in order if passed[j]]
    return [pool[j] for j in order[:k]]


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
    if by == "consensus":
        return consensus(crystals, threads=threads), None
    relaxed, energies = chgnet_relaxed_energy(crystals, steps=steps, threads=threads)
    return energies, relaxed


def rank(crystals: Sequence[Crystal], by: str = "score", steps: int = 20, threads: int | None = None) -> np.ndarray:
    """Order (indices into ``crystals``, best first) under the ranking ``by`` (one of :data:`RANKINGS`).

    Energies are per atom, so candidates of different Z are comparable. Candidates an energy model cannot evaluate
    (NaN) come last. ``steps`` is the FIRE step budget of ``chgnet-relax`` (whose order refers to the relaxed
    crystals; use :func:`chgnet_relaxed_energy` to get them).
    """
    return order_of(rank_values(crystals, by, steps, threads)[0])


def rank_crystals(crystals: Sequence[Crystal], by: str, values: Sequence[float] | None = None) -> list[Crystal]:
    """The crystals in the order of the ranking ``by``, each with ``properties["rank_by"]`` and ``["rank_value"]``
    (lower is better; None where the ranking could not evaluate it). ``score`` keeps the method's own order, which
    is not always a plain sort by score (e.g. template candidates re-ranked inside the method). ``values``: ranking
    values already at hand (e.g. relaxed CHGNet energies), instead of computing them under ``by``."""
    crystals = list(crystals)
    values = rank_values(crystals, by)[0] if values is None else np.asarray(values, dtype=np.float64)
    order = np.arange(len(crystals)) if by == "score" else order_of(values)
    for c, v in zip(crystals, values):
        c.properties["rank_by"], c.properties["rank_value"] = by, float(v) if np.isfinite(v) else None
    return [crystals[i] for i in order]


class RankedPool(CSPMethod):
    """A method that draws ``pool`` candidates of ``inner`` per target and returns the best ``n`` under ``by``.

    Every candidate records the ranking (``rank_by``, ``rank_value``) and the size of the pool it was chosen from
    (``ranked_among``), so an output shows why it is where it is.
    """

    def __init__(self, inner: CSPMethod, by: str, pool: int) -> None:
        if check_ranking(by) == "chgnet-relax":
            raise XtalforgeError("a ranked pool orders candidates as drawn; relax them afterwards")
        self.inner, self.by, self.pool = inner, by, int(pool)
        self.name, self.max_atoms = inner.name, inner.max_atoms
        self.accepts_structures = getattr(inner, "accepts_structures", False)

    def settings(self) -> dict:
        return {**self.inner.settings(), "rank_by": self.by, "pool": self.pool}

    def _best(self, crystals: list[Crystal], n: int) -> list[Crystal]:
        drawn = len(crystals)
        best = rank_crystals(crystals, self.by)[:n] if crystals else []
        for c in best:
            c.properties["ranked_among"] = drawn
        return best

    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        return [self._best(row, n) for row in self.inner.generate(targets, max(n, self.pool), seed)]

    def predict_target(self, target: Target, n: int, seed: int = 0) -> list[Crystal]:
        return self._best(self.inner.predict_target(target, max(n, self.pool), seed), n)
