"""Re-decorated templates for compositions no template fits: same-size structures with a few atoms' species changed.

A template-free target (no library structure has its exact-count anonymised formula, e.g. ``Tb2Ga3Co14``) often
shares its *skeleton* with a library structure of the same number of atoms and species whose counts differ by a few
atoms (``Nd2Ga2Co15``: one Co site becomes Ga). This method

1. maps every such library structure's species onto the target's (each permutation), keeps the mappings that need
   at most ``max_moves`` atoms to change species, and orders them by moves, then by the mean substitution log-odds
   of the mapping (pymatgen's data-mined table, as :class:`~xtalforge.templates.TemplateCSP` uses);
2. for the best ``skeletons`` mappings, enumerates which atoms of the over-represented species take the missing
   species (one choice per symmetry orbit of the template, up to ``per_skeleton`` each, ``max_candidates`` in all),
   rescaling the cell with the library's per-element volumes;
3. ranks the candidates by CHGNet energy per atom of the unrelaxed cells (lower first) and drops any that matches a
   better one under the evaluation's tolerances.

Step 3 costs one CHGNet evaluation per candidate (~0.05 s for 20 atoms on one core), so a target with 1,000
candidates takes ~1 min: this is meant for the few compositions templates cannot serve, not for every target.
Measured by ``bench/redecorate.py``; see docs/results.md.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from xtalforge.crystal import Crystal
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.matching import MatchTolerance
from xtalforge.methods import CSPMethod, register
from xtalforge.templates.chemistry import substitution_log_prob
from xtalforge.templates.csp import distinct_crystals, load_shipped_library
from xtalforge.templates.library import SYMPREC, TemplateLibrary, anonymous_key


class RedecoratedTemplates(CSPMethod):
    """Candidates from same-size library structures re-decorated to the target's counts, ranked by CHGNet energy.

    Args:
        library: the templates (the shipped library when None).
        max_moves: at most this many atoms change species relative to the template's species mapping.
        skeletons: this many best (template, species mapping) pairs are decorated.
        per_skeleton: at most this many decorations of one mapping.
        max_candidates: at most this many candidates per target get a CHGNet energy.
        dedupe: drop a candidate that matches a lower-energy one (StructureMatcher tolerances of the evaluation).
        threads: torch threads for CHGNet (None: leave torch's setting alone).
    """

    name = "redecorate"

    def __init__(self, library: TemplateLibrary | None = None, max_moves: int = 4, skeletons: int = 200,
                 per_skeleton: int = 100, max_candidates: int = 1000, dedupe: bool = True,
                 threads: int | None = None) -> None:
        if min(max_moves, skeletons, per_skeleton, max_candidates) < 1:
            raise XtalforgeError("max_moves, skeletons, per_skeleton and max_candidates must be positive")
        self.library = library if library is not None else load_shipped_library()
        self.max_moves, self.skeletons, self.per_skeleton = int(max_moves), int(skeletons), int(per_skeleton)
        self.max_candidates, self.dedupe, self.threads = int(max_candidates), dedupe, threads
        self.max_atoms = int(self.library.num_atoms.max()) if len(self.library) else 0
        self._substitution = substitution_log_prob()
        self._volumes = self.library.atomic_volumes
        self._tolerance = MatchTolerance()

    def settings(self) -> dict:
        return {"method": self.name, "library_entries": len(self.library), "library_source": self.library.source,
                "max_moves": self.max_moves, "skeletons": self.skeletons, "per_skeleton": self.per_skeleton,
                "max_candidates": self.max_candidates, "rank_by": "chgnet", "dedupe": self.dedupe}

    # ------------------------------------------------------------------ candidates
    def mappings(self, numbers: Sequence[int]) -> list[tuple[int, float, int, np.ndarray]]:
        """(moves, mean substitution log-odds, library row, (S,) target element of each of the template's species
        in sorted order) of every usable mapping, best first."""
        numbers = np.asarray(numbers, dtype=np.int64)
        elements, counts = np.unique(numbers, return_counts=True)
        lib, n, s = self.library, len(numbers), len(elements)
        # same atom and species count, other counts (an exact-count template is TemplateCSP's business)
        keys = [k for k in lib.keys() if len(k) == s and sum(k) == n and k != anonymous_key(numbers)]
        out = []
        for i in np.concatenate([lib.lookup(k) for k in keys]) if keys else []:
            t_elements, t_counts = np.unique(lib.atoms_of(int(i)), return_counts=True)
            for perm in itertools.permutations(range(s)):
                target = elements[list(perm)]
                moves = int(np.maximum(t_counts - counts[list(perm)], 0).sum())
                if moves <= self.max_moves:
                    log_odds = float((self._substitution[t_elements, target] * t_counts).sum() / n)
                    out.append((moves, log_odds, int(i), target))
        out.sort(key=lambda m: (m[0], -m[1], m[2]))
        return out

    def candidates(self, numbers: Sequence[int]) -> list[Crystal]:
        """Unranked re-decorations of the best mappings (at most ``max_candidates``), in mapping order."""
        numbers = np.asarray(numbers, dtype=np.int64)
        out: list[Crystal] = []
        for moves, log_odds, i, target in self.mappings(numbers)[: self.skeletons]:
            for crystal in self._decorate(numbers, i, target):
                crystal.properties.update({"moves": moves, "substitution": log_odds})
                out.append(crystal)
                if len(out) >= self.max_candidates:
                    return out
        return out

    def _decorate(self, numbers: np.ndarray, i: int, target: np.ndarray) -> Iterator[Crystal]:
        """Decorations of library entry ``i`` under the species mapping ``target``: the surplus atoms of each
        species take the missing species, one choice per set of template orbits."""
        import spglib

        lib = self.library
        atoms = lib.atoms_of(i).astype(np.int64)
        t_elements, t_counts = np.unique(atoms, return_counts=True)
        want = np.array([int((numbers == z).sum()) for z in target])
        base = target[np.searchsorted(t_elements, atoms)]  # the mapping's element on each template atom
        a, b = lib.offsets[i], lib.offsets[i + 1]
        lattice, frac = lib.lattices[i].astype(np.float64), lib.frac_coords[a:b].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            sym = spglib.get_symmetry_dataset((lattice, frac, atoms), symprec=SYMPREC)
        orbit = np.asarray(sym.equivalent_atoms) if sym is not None else np.arange(len(atoms))
        surplus = [j for j in range(len(target)) if t_counts[j] > want[j]]
        arriving = [int(target[j]) for j in range(len(target)) for _ in range(max(0, want[j] - t_counts[j]))]
        leaving_choices = [itertools.combinations(np.nonzero(base == target[j])[0].tolist(), int(t_counts[j] - want[j]))
                           for j in surplus]
        scale = (self._volumes[numbers].sum() / self._volumes[atoms].sum()) ** (1.0 / 3.0)
        props = {"template_id": str(lib.ids[i]), "spacegroup": int(lib.spacegroup[i])}
        seen: set[tuple] = set()
        for combo in itertools.product(*leaving_choices):
            leaving = [x for part in combo for x in part]
            for order in dict.fromkeys(itertools.permutations(arriving)):  # distinct orders of the new species
                # atoms of one orbit are equivalent under the template's symmetry: choices differing only by which
                # atom of an orbit changes give (nearly always) the same structure, so keep one
                key = tuple(sorted((int(orbit[x]), z) for x, z in zip(leaving, order)))
                if key in seen:
                    continue
                seen.add(key)
                new = base.copy()
                new[leaving] = order
                yield Crystal(lattice * scale, frac, new, dict(props))
                if len(seen) >= self.per_skeleton:
                    return

    # ------------------------------------------------------------------ ranking
    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        """Up to ``n`` candidates per target cell, lowest CHGNet energy first (deterministic: ``seed`` unused).

        Each candidate has ``properties``: ``score`` (minus the CHGNet energy in eV/atom, higher is better),
        ``energy_per_atom``, ``template_id``, ``spacegroup`` of the template, ``moves`` and ``substitution``.
        A target no same-size structure fits gets an empty list."""
        from xtalforge.ranking import chgnet_energy, order_of

        out = []
        for numbers in targets:
            cands = self.candidates(numbers)
            energy = (chgnet_energy(cands, threads=self.threads, desc=f"re-decorated {cands[0].formula} (CHGNet)")
                      if cands else np.zeros(0))
            ranked = []
            for j in order_of(energy):
                if not np.isfinite(energy[j]):
                    break  # CHGNet could not evaluate it (or it is implausible): not offered
                cands[j].properties.update({"energy_per_atom": float(energy[j]), "score": -float(energy[j])})
                ranked.append(cands[j])
            out.append(distinct_crystals(ranked, self._tolerance, n) if self.dedupe else ranked[:n])
        return out


@register("redecorate")
def _redecorate_factory(library: TemplateLibrary | str | None = None, max_moves: int = 4, skeletons: int = 200,
                        per_skeleton: int = 100, max_candidates: int = 1000, dedupe: bool = True,
                        threads: int | None = None) -> RedecoratedTemplates:
    """``get_method("redecorate", library=None | path | TemplateLibrary, max_moves=4, ...)``."""
    if isinstance(library, str):
        library = TemplateLibrary.load(library)
    return RedecoratedTemplates(library, max_moves, skeletons, per_skeleton, max_candidates, dedupe, threads)
