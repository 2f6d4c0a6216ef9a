"""Template-based crystal structure prediction: put the target's elements on the sites of known crystals.

For a target cell the method

1. retrieves library entries with the same exact-count anonymised formula (then, if those give too few candidates,
   smaller cells of the same formula type as supercells, then entries with more species whose site sets are merged);
2. enumerates every mapping of the target's elements onto a template's element slots that keeps the counts, and
   scores it by the data-mined substitution log-odds summed over the element slots
   (:mod:`xtalforge.templates.chemistry`), optionally minus a stability penalty on templates above their hull;
3. groups mappings that give the same structure type (same prototype, same element on each site set) and scores
   the group by the log-sum-exp of its members: a structure many similar chemistries adopt is likelier than one
   seen once;
4. rescales the volume with per-element atomic volumes fitted on the library, drops duplicates with
   ``StructureMatcher`` (the evaluation's tolerances), and optionally relaxes the candidates with CHGNet and
   re-ranks them by energy.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from xtalforge.composition import Target
from xtalforge.crystal import Crystal
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.matching import MatchTolerance, Reduced, reduce_structure, rms_dist_reduced
from xtalforge.methods import CSPMethod, register
from xtalforge.templates.chemistry import NUM_ELEMENTS, substitution_log_prob
from xtalforge.templates.library import SHIPPED_LIBRARY, SYMPREC, TemplateLibrary, anonymous_key, row_ids
from xtalforge.templates.ranker import (
    TemplateRanker,
    candidate_features,
    first_shell_contacts,
    type_logsumexp,
)
from xtalforge.templates.scoring import RankWeights, StructureTypes, TemplatePool

log = logging.getLogger(__name__)

#: Most element-to-slot mappings tried per template group (a 5-element equiatomic cell has 120).
MAX_MAPPINGS = 720
#: Most StructureMatcher comparisons per target when removing duplicate candidates (each costs ~5-30 ms).
MAX_COMPARISONS = 12
#: The learned ranker re-orders this many best structure types of the hand-made score (the rest follow them).
RERANK_TOP = 40


class TemplateCSP(CSPMethod):
    """Template-based CSP over a :class:`TemplateLibrary`.

    Args:
        library: the templates (:meth:`TemplateLibrary.load` of the shipped file when None).
        weights: ranking weights.
        relax: ``"none"`` (raw template candidates) or ``"chgnet"`` (relax the best ``relax_top`` candidates with
            CHGNet and re-rank them by energy per atom).
        relax_steps: optimiser steps per candidate when relaxing.
        relax_top: relax only the best this many candidates (None: all); the rest follow them unrelaxed.
        dedupe: compare candidates with ``StructureMatcher`` and keep one of each matching set.
        pool_size: at most this many (template, mapping) pairs per target enter grouping (best first).
        ranker: re-order the best ``RERANK_TOP`` structure types with a learned :class:`TemplateRanker`: ``"shipped"``
            (the default: the weights shipped with xtalforge), a ranker, or None (hand-made score only).
    """

    name = "template"

    def __init__(
        self,
        library: TemplateLibrary | None = None,
        weights: RankWeights | None = None,
        relax: str = "none",
        relax_steps: int = 200,
        relax_top: int | None = None,
        dedupe: bool = True,
        pool_size: int = 4000,
        ranker: TemplateRanker | str | None = "shipped",
    ) -> None:
        if relax not in ("none", "chgnet"):
            raise XtalforgeError(f"unknown relax mode '{relax}' (choose 'none' or 'chgnet')")
        self.library = library if library is not None else load_shipped_library()
        self.weights = weights or RankWeights()
        self.relax = relax
        self.relax_steps = int(relax_steps)
        self.relax_top = relax_top
        self.dedupe = dedupe
        self.pool_size = int(pool_size)
        if isinstance(ranker, str):  # "shipped" or the path of a ranker file
            ranker = TemplateRanker.load() if ranker == "shipped" else TemplateRanker.load(ranker)
        self.ranker = ranker
        # larger cells than any template can still be built from supercells and merged sites
        self.max_atoms = max(52, int(self.library.num_atoms.max()) if len(self.library) else 0)
        self._substitution = substitution_log_prob()
        self._volumes = self.library.atomic_volumes
        self._tolerance = MatchTolerance()
        self._reduced_cache: dict[int, Reduced] = {}
        self._contact_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def settings(self) -> dict:
        return {
            "method": self.name,
            "library_entries": len(self.library),
            "library_source": self.library.source,
            "weights": asdict(self.weights),
            "relax": self.relax,
            "relaxed": self.relax != "none",
            "relax_steps": self.relax_steps if self.relax != "none" else 0,
            "relax_top": self.relax_top if self.relax != "none" else 0,
            "dedupe": self.dedupe,
            "ranker": f"learned:{self.ranker.digest}" if self.ranker is not None else "hand-made",
        }

    # ------------------------------------------------------------------ public
    def has_template(self, numbers: Sequence[int]) -> bool:
        """True if the library holds a structure with this cell's exact-count anonymised formula (otherwise every
        candidate comes from the supercell / merged-site fallbacks: the "template-free" case)."""
        return self.library.group(anonymous_key(np.asarray(numbers))) is not None

    def predict_target(self, target: Target, n: int, seed: int = 0) -> list[Crystal]:
        """Candidates for a composition whose Z may be unknown: every Z with a template of exactly that cell, merged
        by score (a Z without one would only repeat a smaller Z's templates as supercells); the fallbacks of
        :meth:`generate` only when no Z has a template."""
        cells = target.cells(self.max_atoms)
        merged = [c for cell in cells for c in self._generate_one(cell, n, exact_only=True)]
        if not merged:
            merged = [c for cands in self.generate(cells, n, seed) for c in cands]
        merged.sort(key=lambda c: -float(c.properties["score"]))
        return merged[:n]

    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        """Up to ``n`` candidates per target cell, best first (deterministic: ``seed`` is not used).

        Each candidate has ``properties``: ``score`` (log-score, higher is better; minus the CHGNet energy in eV/atom
        when relaxing), ``template_id`` (material_id of the template), ``template_score``, ``spacegroup`` of the
        template, and ``energy_per_atom`` (eV/atom) when relaxed. A target no template fits gets an empty list.
        """
        return [self._generate_one(numbers, n) for numbers in targets]

    def _generate_one(self, numbers: Sequence[int], n: int, exact_only: bool = False) -> list[Crystal]:
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        if numbers.size == 0:
            raise XtalforgeError("empty target cell")
        if numbers.min() < 1 or numbers.max() >= NUM_ELEMENTS:
            log.warning("no substitution data for atomic numbers outside 1..%d", NUM_ELEMENTS - 1)
            return []
        cands = self._candidates(numbers, int(n), exact_only)
        if self.relax == "chgnet" and cands:
            cands = self._relax_and_rerank(cands, int(n))
        return cands

    # ------------------------------------------------------------------ retrieval and scoring
    def _candidates(self, numbers: np.ndarray, n: int, exact_only: bool = False) -> list[Crystal]:
        pools = self._pools(numbers, n, exact_only)
        if not pools:
            return []
        types = self._structure_types(pools, self.weights)
        if self.ranker is not None:
            types = self._rerank(pools, types, numbers)
        return self._build_ranked(pools, types, numbers, n)

    def _rerank(self, pools: list[TemplatePool], types: StructureTypes, numbers: np.ndarray) -> StructureTypes:
        """Re-order the best ``RERANK_TOP`` types with the learned ranker; the others follow in hand-made order.

        The re-ordered types take over the hand-made scores of the places they move to, so scores stay comparable
        between cells (``predict_target`` merges the candidates of several Z by score)."""
        top = types.ranked[:RERANK_TOP]
        new = top[self.ranker.order(candidate_features(self, pools, types, top, numbers))]
        score = types.score.copy()
        score[new] = types.score[top]
        ranked = np.concatenate([new, types.ranked[RERANK_TOP:]])
        return StructureTypes(types.origin, types.type_of, score, types.representative, ranked, types.score)

    def _pools(self, numbers: np.ndarray, n: int, exact_only: bool = False) -> list[TemplatePool]:
        """Scored template groups for a target cell, widening retrieval level by level until ``n`` prototypes."""
        elements, counts = np.unique(numbers, return_counts=True)
        pools: list[TemplatePool] = []
        levels = list(self._retrieval_levels(counts))
        for level in levels[:1] if exact_only else levels:
            for key, multiplier, penalty in level:
                pool = self._score_group(key, multiplier, penalty, elements, counts)
                if pool is not None:
                    pools.append(pool)
            prototypes = {int(x) for p in pools for x in np.unique(self.library.prototype[p.template])}
            if len(prototypes) >= n:  # every prototype gives at least one distinct candidate: enough to choose from
                break
        return pools

    def _retrieval_levels(self, counts: np.ndarray):
        """Template groups in order of preference: exact formula, smaller cells as supercells, merged site sets.

        Yields lists of (anonymised formula, supercell multiplier, penalty)."""
        key = tuple(sorted(int(c) for c in counts))
        natoms = int(sum(key))
        g = int(np.gcd.reduce(counts))
        yield [(key, 1, 0.0)]
        yield [
            (tuple(c // d for c in key), d, self.weights.supercell)
            for d in range(2, g + 1)
            if g % d == 0
        ]
        merged = []
        for other in self.library.keys():
            extra = len(other) - len(key)
            if extra < 1 or extra > 2 or natoms % sum(other):
                continue
            d = natoms // sum(other)
            merged.append((other, d, self.weights.merge * extra + (self.weights.supercell if d > 1 else 0.0)))
        yield merged

    def _score_group(
        self, key: tuple[int, ...], multiplier: int, penalty: float, elements: np.ndarray, counts: np.ndarray
    ) -> TemplatePool | None:
        group = self.library.group(key)
        if group is None:
            return None
        maps = _slot_mappings(key, tuple(int(c) for c in counts), multiplier)
        if not maps:
            return None
        target_on_slot = elements[np.asarray(maps)]  # (F, S)
        # sub[f, g] = sum_j S[target element on slot j, template element on slot j]
        sub = self._substitution[target_on_slot[:, None, :], group.slots[None, :, :]].sum(axis=-1)
        f_idx, g_idx = (x.ravel() for x in np.indices(sub.shape))
        pool = TemplatePool(group.indices[g_idx], target_on_slot[f_idx], group.slots[g_idx], sub.ravel(),
                     self.library.stability[group.indices[g_idx]], penalty, multiplier,
                     np.asarray(key, np.int64) * multiplier)
        if len(pool.template) > self.pool_size:
            pool = pool.take(np.argsort(-pool.score(self.weights), kind="stable")[: self.pool_size])
        return pool

    def _structure_types(self, pools: list[TemplatePool], weights: RankWeights) -> StructureTypes:
        """Group pairs into structure types and score each type by the log-sum-exp of its members."""
        lib = self.library
        width = max(p.elements.shape[1] for p in pools)
        rows = []
        for p in pools:
            pad = np.zeros((len(p.template), width - p.elements.shape[1]), np.int64)
            rows.append(np.column_stack([lib.prototype[p.template], np.full(len(p.template), p.multiplier),
                                         p.elements, pad]))
        score = np.concatenate([p.score(weights) for p in pools])
        origin = np.concatenate([np.column_stack([np.full(len(p.template), k), np.arange(len(p.template))])
                                 for k, p in enumerate(pools)])
        type_of = row_ids(np.concatenate(rows))
        n_types = int(type_of.max()) + 1
        type_score = type_logsumexp(score, type_of, n_types, weights.temperature)
        by_type = np.lexsort((-score, type_of))  # members of each type together, best first
        first = np.ones(len(by_type), bool)
        first[1:] = type_of[by_type[1:]] != type_of[by_type[:-1]]
        representative = np.empty(n_types, np.int64)
        representative[type_of[by_type[first]]] = by_type[first]
        return StructureTypes(origin, type_of, type_score, representative, np.argsort(-type_score, kind="stable"))

    def _build_ranked(self, pools: list[TemplatePool], types: StructureTypes, numbers: np.ndarray,
                      n: int) -> list[Crystal]:
        """The best ``n`` structure types as crystals, dropping any that matches a better one.

        Only candidates whose templates share a space group are compared: that is where duplicates come from
        (symmetry-equivalent element arrangements, prototypes split by spglib's Wyckoff labels), and matching every
        pair would cost more than the rest of the method. At most ``MAX_COMPARISONS`` pairs are matched per target
        (grouping by structure type already removes most duplicates; leave-one-out on MP-20 val found no k = 20
        gain from matching more)."""
        out: list[Crystal] = []
        kept: dict[int, list[Reduced]] = {}
        comparisons = 0
        budget = max(3 * n, n + 20)  # structure types examined before giving up on filling n distinct candidates
        for type_id in types.ranked[:budget]:
            k, j = types.origin[types.representative[type_id]]
            pool = pools[k]
            crystal = self._build(pool, j, numbers)
            crystal.properties["score"] = float(types.score[type_id])
            crystal.properties["template_score"] = float(types.hand_score[type_id])
            if self.dedupe and comparisons < MAX_COMPARISONS:
                reduced = self._reduced_candidate(pool, j)
                same_group = kept.setdefault(crystal.properties["spacegroup"], [])
                duplicate = False
                for other in same_group[: MAX_COMPARISONS - comparisons]:
                    comparisons += 1
                    if self._match(reduced, other):
                        duplicate = True
                        break
                if duplicate:
                    continue
                same_group.append(reduced)
            out.append(crystal)
            if len(out) >= n:
                break
        return out

    def _build(self, pool: TemplatePool, j: int, numbers: np.ndarray) -> Crystal:
        """The candidate crystal of pair ``j`` of ``pool``: template atoms relabelled, volume rescaled."""
        lib = self.library
        i = int(pool.template[j])
        a, b = lib.offsets[i], lib.offsets[i + 1]
        template_atoms = lib.numbers[a:b]
        new_numbers = pool.target_atoms(j, template_atoms)
        lattice, frac = lib.lattices[i], lib.frac_coords[a:b]
        if pool.multiplier > 1:
            lattice, frac, new_numbers = _supercell(lattice, frac, new_numbers, pool.multiplier)
            template_atoms = np.tile(template_atoms, pool.multiplier)
        v = self._volumes
        volume_ratio = v[numbers].sum() / v[template_atoms].sum()
        lattice = lattice * volume_ratio ** (1.0 / 3.0)
        props = {"template_id": str(lib.ids[i]), "spacegroup": int(lib.spacegroup[i])}
        return Crystal(lattice, frac, new_numbers, props)

    def _reduced_candidate(self, pool: TemplatePool, j: int) -> Reduced:
        """Candidate ``j`` of ``pool`` after the matcher's preprocessing (Niggli cell, primitive cell).

        Relabelling a template keeps its sites, so the template's reduced cell (computed once per template) with the
        target's elements on it is the candidate's (the volume does not matter: the matcher rescales)."""
        i = int(pool.template[j])
        if i not in self._reduced_cache:
            self._reduced_cache[i] = _reduce_fast(self.library, i)
        r = self._reduced_cache[i]
        return Reduced(r.matrix, r.frac, pool.target_atoms(j, r.numbers))

    def template_contacts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """First-shell contacts of library entry ``i`` (:func:`~xtalforge.templates.ranker.first_shell_contacts`),
        computed once per template."""
        if i not in self._contact_cache:
            lib = self.library
            frac = lib.frac_coords[lib.offsets[i] : lib.offsets[i + 1]]
            self._contact_cache[i] = first_shell_contacts(lib.lattices[i], frac)
        return self._contact_cache[i]

    def _match(self, a: Reduced, b: Reduced) -> bool:
        """True if two reduced candidates match under the evaluation's tolerances."""
        return rms_dist_reduced(a, b, self._tolerance, first=True) is not None

    # ------------------------------------------------------------------ relaxation
    def _relax_and_rerank(self, cands: list[Crystal], n: int) -> list[Crystal]:
        """Relax the best ``relax_top`` candidates with CHGNet and order them by energy per atom (eV/atom).

        Their score becomes minus the energy; candidates beyond ``relax_top`` (and any CHGNet cannot handle) follow
        unrelaxed, in template order, scored just below the relaxed ones."""
        from xtalforge.errors import StructureError
        from xtalforge.relax import relax

        top = len(cands) if self.relax_top is None else min(self.relax_top, len(cands))
        relaxed, rest = [], []
        for c in cands[:top]:
            t0 = time.perf_counter()
            try:
                r = relax(c, potential="chgnet", steps=self.relax_steps).crystal
            except StructureError as exc:
                log.warning("keeping a candidate unrelaxed: %s", exc)
                rest.append(c)
                continue
            r.properties = {**c.properties, **r.properties, "relax_seconds": time.perf_counter() - t0}
            r.properties["score"] = -float(r.properties["energy_per_atom"])
            relaxed.append(r)
        relaxed.sort(key=lambda c: -c.properties["score"])
        if self.dedupe:  # relaxation can take two candidates to the same minimum
            relaxed = distinct_crystals(relaxed, self._tolerance)
        rest += cands[top:]
        floor = min((c.properties["score"] for c in relaxed), default=0.0)
        for rank, c in enumerate(rest):
            c.properties["score"] = floor - 1.0 - 1e-3 * rank
        return (relaxed + rest)[:n]


def distinct_crystals(crystals: Sequence[Crystal], tolerance: MatchTolerance,
                      limit: int | None = None) -> list[Crystal]:
    """The crystals in order, each dropped that matches an earlier kept one under ``tolerance``; at most ``limit``."""
    kept: list[Crystal] = []
    reduced_kept: list[Reduced] = []
    for c in crystals:
        if limit is not None and len(kept) >= limit:
            break
        reduced = reduce_structure(c.to_structure())
        if not any(rms_dist_reduced(reduced, o, tolerance, first=True) is not None for o in reduced_kept):
            reduced_kept.append(reduced)
            kept.append(c)
    return kept


def _reduce_fast(library: TemplateLibrary, i: int) -> Reduced:
    """Primitive, Niggli-reduced cell of library entry ``i`` with spglib (pymatgen's reduction, which the evaluation
    uses, costs ~20 ms per cell; the matcher searches all lattice mappings, so any reduced primitive cell will do).
    Atom positions are kept as they are, not symmetrised."""
    import spglib

    c = library.crystal(i)
    cell = (c.lattice, c.frac_coords, c.numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        prim = spglib.standardize_cell(cell, to_primitive=True, no_idealize=True, symprec=SYMPREC)
        niggli = spglib.niggli_reduce(prim[0]) if prim is not None else None
    if prim is None or niggli is None:  # spglib gave up: pymatgen's reduction always works
        return reduce_structure(c.to_structure())
    lattice, frac, numbers = prim
    frac = (frac @ lattice @ np.linalg.inv(niggli)) % 1.0
    return Reduced(np.asarray(niggli, float), frac, np.asarray(numbers, np.int64))


@lru_cache(maxsize=4096)
def _slot_mappings(template_counts: tuple[int, ...], target_counts: tuple[int, ...], multiplier: int) -> list:
    """Every map template slot -> target species such that each species' atoms exactly fill its slots.

    ``template_counts`` (S,) are per-slot atom counts of a template cell repeated ``multiplier`` times; the result is
    a list of length-S tuples of target-species indices (at most ``MAX_MAPPINGS``)."""
    slots = [c * multiplier for c in template_counts]
    remaining = list(target_counts)
    result: list[tuple[int, ...]] = []
    current: list[int] = []

    def place(j: int) -> None:
        if len(result) >= MAX_MAPPINGS:
            return
        if j == len(slots):
            if not any(remaining):
                result.append(tuple(current))
            return
        for t in range(len(remaining)):
            if remaining[t] >= slots[j]:
                remaining[t] -= slots[j]
                current.append(t)
                place(j + 1)
                current.pop()
                remaining[t] += slots[j]

    place(0)
    return result


def _supercell(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, d: int):
    """Repeat a cell ``d`` times along its shortest lattice vector (the most compact supercell of that size)."""
    axis = int(np.argmin(np.linalg.norm(lattice, axis=1)))
    shifts = np.zeros((d, 3))
    shifts[:, axis] = np.arange(d)
    new_frac = (frac[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    new_frac[:, axis] /= d
    new_lattice = lattice.copy()
    new_lattice[axis] *= d
    return new_lattice, new_frac, np.tile(numbers, d)


@lru_cache(maxsize=1)
def load_shipped_library() -> TemplateLibrary:
    """The library shipped with xtalforge (cached: loaded once per process)."""
    if not SHIPPED_LIBRARY.is_file():
        raise XtalforgeError(f"the shipped template library is missing ({SHIPPED_LIBRARY}); rebuild it with "
                             "`python bench/build_template_library.py`")
    return TemplateLibrary.load(SHIPPED_LIBRARY)


@register("template")
def _template_factory(library: TemplateLibrary | str | None = None, weights: RankWeights | None = None,
                      relax: str = "none", relax_steps: int = 200, relax_top: int | None = None, dedupe: bool = True,
                      pool_size: int = 4000, ranker: TemplateRanker | str | None = "shipped") -> TemplateCSP:
    """``get_method("template", library=None | path | TemplateLibrary, relax="none" | "chgnet", ranker=..., ...)``."""
    if isinstance(library, (str, Path)):
        library = TemplateLibrary.load(library)
    return TemplateCSP(library=library, weights=weights, relax=relax, relax_steps=relax_steps, relax_top=relax_top,
                       dedupe=dedupe, pool_size=pool_size, ranker=ranker)
