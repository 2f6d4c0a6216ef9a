"""CSP through symmetry (registered as ``symmetry``): a space group and Wyckoff assignment per sample, then the Wyckoff
flow places the atoms and shapes the cell.

Where the symmetry comes from, per target:

* ``spacegroup`` (and optionally ``wyckoff``) given: that group, with the given letters or every assignment of the
  group that holds the cell (fewest orbits first);
* a target given as a structure (:class:`~xtalforge.crystal.Crystal`, e.g. a test row under
  ``evaluate --given-symmetry``): that structure's own group and Wyckoff letters (DiffCSP++'s "true symmetry");
* otherwise, by ``source``: the symmetry proposer's most probable answers (``proposer``), the groups and assignments
  of the library structures of the same anonymised formula in the order the template method ranks them
  (``library``), or the library's first and then the proposer's (``both``).

The ``n`` samples of a target go round-robin over at most ``max_requests`` of those assignments.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from xtalforge.composition import Target
from xtalforge.crystal import Crystal
from xtalforge.data.batch import size_bucketed_batches
from xtalforge.data.symmetric import PROPERTIES, collate_symmetric
from xtalforge.errors import AtomLimitError, StructureError, XtalforgeError
from xtalforge.methods import CSPMethod, register
from xtalforge.models.symmetry_proposer.model import DEFAULT_WEIGHTS as PROPOSER_WEIGHTS
from xtalforge.models.symmetry_proposer.tokens import reduced
from xtalforge.models.wyckoff_flow.model import DEFAULT_WEIGHTS, WyckoffFlow
from xtalforge.models.wyckoff_flow.sampler import sample_wyckoff_flow
from xtalforge.symmetry.wyckoff import (
    SYMPREC,
    Orbit,
    SymmetricCrystal,
    assignments,
    check_assignment,
    check_group,
    formula_of,
    from_structure,
    parse_wyckoff,
)

log = logging.getLogger(__name__)
#: Sampler settings of weights that store none in ``meta["sampler_options"]``.
SAMPLER_DEFAULTS = {"steps": 50, "anti_anneal": 0.0, "guidance_scale": 1.0}
#: Where the symmetry of a target without a given group comes from (see the module docstring).
SOURCES = ("proposer", "library", "both")
#: Rounds of fresh draws for samples with two atoms closer than 0.5 A (the group and composition always hold, but
#: coincident atoms are no structure); a sample still implausible after them is dropped (None).
RESAMPLE_ROUNDS = 4

Request = tuple[int, tuple[tuple[int, int], ...]]  # (space group, ((atomic number, Wyckoff index), ...))


class SymmetryMethod(CSPMethod):
    """Samples of the Wyckoff flow for requested (or library) symmetries; see the module docstring.

    Args:
        model: the generator.
        spacegroup, wyckoff: a fixed group for every target (ITA number) and optionally its orbits
            (``"Na:a Cl:b"``); None = from the structure / the library.
        properties: target properties, e.g. ``{"band_gap": 1.5}`` (eV; formation energy in eV/atom).
        steps, anti_anneal, guidance_scale: sampler settings (default: the weights' own).
        max_requests: most distinct assignments the samples of one target are spread over.
        batch_atoms: most padded atoms per network call.
        structure_properties: for a target given as a structure, condition on its own labels (``PROPERTIES``
            found in ``Crystal.properties``), the setting of Uni-MDM's conditioned CSP tables.
        source: ``SOURCES``; proposer: a :class:`~xtalforge.models.symmetry_proposer.SymmetryProposer` (loaded
            with its shipped weights when needed and not given).
        max_atoms: largest cell sampled (default and upper limit: what the weights were trained on).
    """

    name = "symmetry"
    accepts_structures = True  # ``generate`` takes structures too: their own symmetry is the request

    def __init__(self, model: WyckoffFlow, spacegroup: int | None = None, wyckoff: str | None = None,
                 properties: dict[str, float] | None = None, steps: int | None = None,
                 anti_anneal: float | None = None, guidance_scale: float | None = None, max_requests: int = 4,
                 batch_atoms: int = 4096, device: str = "cpu", library=None, symprec: float = SYMPREC,
                 structure_properties: bool = False, source: str = "both", proposer=None,
                 max_atoms: int | None = None) -> None:
        if source not in SOURCES:
            raise XtalforgeError(f"unknown symmetry source '{source}' (choose {', '.join(SOURCES)})")
        self.source, self._proposer = source, proposer
        own = {**SAMPLER_DEFAULTS, **model.meta.get("sampler_options", {})}
        self.steps = int(own["steps"] if steps is None else steps)
        self.anti_anneal = float(own["anti_anneal"] if anti_anneal is None else anti_anneal)
        self.guidance_scale = float(own["guidance_scale"] if guidance_scale is None else guidance_scale)
        if self.steps < 1:
            raise XtalforgeError(f"sampler steps must be at least 1, got {self.steps}")
        self.spacegroup = None if spacegroup is None else check_group(spacegroup)
        if wyckoff is not None and self.spacegroup is None:
            raise XtalforgeError("Wyckoff letters need a space group (--spacegroup)")
        self.wyckoff = None if wyckoff is None else parse_wyckoff(self.spacegroup, wyckoff)
        if self.wyckoff is not None:
            check_assignment(self.spacegroup, self.wyckoff)
        self.targets = _property_vector(properties or {})
        self.model = model.to(device).eval()
        self.device = device
        self.max_requests, self.batch_atoms = int(max_requests), int(batch_atoms)
        self.symprec = symprec
        self.structure_properties = bool(structure_properties)
        self.max_atoms = min(int(model.meta.get("max_atoms", 52)), max_atoms or 10**9)
        self._library = library
        self._templates = None

    def settings(self) -> dict:
        return {"method": self.name, "weights": self.model.meta.get("name", "custom"), "steps": self.steps,
                "anti_anneal": self.anti_anneal, "guidance_scale": self.guidance_scale,
                "spacegroup": self.spacegroup, "wyckoff": None if self.wyckoff is None else list(self.wyckoff),
                "properties": {p: v for p, v in zip(PROPERTIES, self.targets) if np.isfinite(v)},
                "max_requests": self.max_requests, "symprec": self.symprec,
                "structure_properties": self.structure_properties, "source": self.source,
                "proposer": None if self.source == "library" else PROPOSER_WEIGHTS if self._proposer is None
                else self._proposer.meta.get("name", "custom")}

    @property
    def proposer(self):
        if self._proposer is None:
            from xtalforge.models.symmetry_proposer import SymmetryProposer

            self._proposer = SymmetryProposer.load(device=self.device)
        return self._proposer

    # ------------------------------------------------------------------ where the symmetry comes from
    def requests(self, target: Sequence[int] | Crystal) -> list[Request]:
        """The assignments the samples of one target are spread over (at most ``max_requests``)."""
        if isinstance(target, Crystal):
            sym = from_structure(target, self.symprec)
            return [(sym.spacegroup, tuple((o.number, o.index) for o in sym.orbits))]
        counts = Counter(int(z) for z in target)
        if self.spacegroup is not None:
            if self.wyckoff is not None:
                got = check_assignment(self.spacegroup, self.wyckoff)
                if got != counts:
                    raise XtalforgeError(f"the Wyckoff positions {formula_of(got)} do not hold the composition "
                                         f"{formula_of(counts)} (counts per primitive cell)")
                return [(self.spacegroup, tuple(self.wyckoff))]
            found = assignments(self.spacegroup, dict(counts), limit=self.max_requests)
            return [(self.spacegroup, tuple(a)) for a in found]
        return self._unknown_symmetry(counts, divisors(counts), library_cells=1)

    def _unknown_symmetry(self, counts: Counter, zs: list[int], library_cells: int | None = None) -> list[Request]:
        """Requests for a composition without a given group. ``zs``: formula units per primitive cell the proposer
        may choose; the library is asked for the cells of the largest ``library_cells`` of them (None: all)."""
        out: list[Request] = []
        if self.source in ("library", "both"):
            unit = _unit(counts)
            for z in sorted(zs, reverse=True)[:library_cells]:
                out += [r for r in self._library_requests([e for e, c in unit.items() for _ in range(c * z)])
                        if r not in out]
        if self.source in ("proposer", "both"):
            from xtalforge.models.symmetry_proposer import propose

            props = {p: float(v) for p, v in zip(PROPERTIES, self.targets) if np.isfinite(v)}
            from xtalforge.models.symmetry_proposer.tokens import MAX_Z

            found = propose(self.proposer, dict(counts), props, k=self.max_requests, z=[z for z in zs if z <= MAX_Z])
            out += [r for r in ((p.spacegroup, p.orbits) for p in found) if r not in out]
        return out[: self.max_requests]

    def _library_requests(self, cell: list[int]) -> list[Request]:
        if self._templates is None:
            from xtalforge.methods import get_method

            self._templates = get_method("template", library=self._library)
        out: list[Request] = []
        for cand in self._templates.generate([cell], 4 * self.max_requests)[0]:
            try:
                sym = from_structure(cand, self.symprec)
            except StructureError:
                continue
            request = (sym.spacegroup, tuple((o.number, o.index) for o in sym.orbits))
            if request not in out and _proportional(check_assignment(*request), Counter(cell)):
                out.append(request)
            if len(out) >= self.max_requests:
                break
        return out

    # ------------------------------------------------------------------ sampling
    def sample(self, requests: Sequence[Request], seed: int = 0, properties: np.ndarray | None = None
               ) -> list[Crystal | None]:
        """One primitive-cell sample per request, in order; each carries ``spacegroup`` and ``wyckoff``; None where
        every round gave atoms closer than 0.5 A. ``properties`` (len(requests), P): per-request targets (NaN =
        none; default: the method's own)."""
        if properties is None:
            properties = np.tile(self.targets, (len(requests), 1))
        sizes = np.array([sum(check_assignment(g, orbits).values()) for g, orbits in requests])
        if len(sizes) and sizes.max() > self.max_atoms:
            raise AtomLimitError(f"a request has {sizes.max()} atoms; the Wyckoff flow weights allow "
                                 f"{self.max_atoms}")
        gen = torch.Generator().manual_seed(int(seed))
        out: list[Crystal | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        for _ in range(RESAMPLE_ROUNDS + 1):
            for idx in size_bucketed_batches(sizes[todo], self.batch_atoms, max_crystals=self.batch_atoms):
                rows = [todo[i] for i in idx]
                for r, crystal in zip(rows, self._sample_rows([requests[r] for r in rows], properties[rows], gen)):
                    out[r] = crystal
            from xtalforge.ranking import plausible

            todo = [r for r in todo if not plausible(out[r])]
            if not todo:
                break
        for r in todo:
            out[r] = None
        return out

    def _sample_rows(self, requests: Sequence[Request], properties: np.ndarray, gen: torch.Generator
                     ) -> list[Crystal]:
        shells = [SymmetricCrystal(g, [Orbit(z, w) for z, w in orbits], np.zeros(6)) for g, orbits in requests]
        batch = collate_symmetric(shells, properties).to(self.device)
        samples = sample_wyckoff_flow(self.model, batch, self.steps, self.guidance_scale, self.anti_anneal, gen)
        crystals = []
        for sym in samples:
            crystal = sym.to_crystal()
            crystal.properties.update(score=0.0, method=self.name, weights=self.model.meta.get("name", "custom"))
            crystals.append(crystal)
        return crystals

    def generate(self, targets: Sequence[Sequence[int] | Crystal], n: int, seed: int = 0) -> list[list[Crystal]]:
        """``n`` samples per target (a cell's atomic numbers, or a structure whose own symmetry is used)."""
        props = [self._properties_of(t) for t in targets]
        return self._spread([self.requests(t) for t in targets], n, seed, props)

    def sample_cells(self, cells: Sequence[Sequence[int]], seed: int = 0) -> list[Crystal | None]:
        """One sample per cell (the interface ``auto`` uses for its generator): repeats of a cell go round-robin
        over its requests; a cell without any symmetry to try gets None."""
        occurrences: dict[tuple[int, ...], list[int]] = {}
        for i, cell in enumerate(cells):
            occurrences.setdefault(tuple(int(z) for z in cell), []).append(i)
        flat, where = [], []
        for cell, rows in occurrences.items():
            try:
                reqs = self.requests(list(cell))
            except XtalforgeError:
                reqs = []
            for j, row in enumerate(rows if reqs else []):
                flat.append(reqs[j % len(reqs)])
                where.append(row)
        out: list[Crystal | None] = [None] * len(cells)
        for row, crystal in zip(where, self.sample(flat, seed) if flat else []):
            out[row] = crystal
        return out

    def _properties_of(self, target: Sequence[int] | Crystal) -> np.ndarray:
        if isinstance(target, Crystal) and self.structure_properties:
            return np.array([float(target.properties.get(p, np.nan)) for p in PROPERTIES])
        return self.targets

    def predict_target(self, target: Target, n: int, seed: int = 0) -> list[Crystal]:
        """Samples for a composition of unknown Z: the ``n`` samples go round-robin over the cells (Z values) that
        have an assignment; a one-line error if none has."""
        requests, first_error = [], None
        cells = target.cells(self.max_atoms)
        if self.spacegroup is None and not target.exact:  # the proposer and the library weigh Z themselves
            unit = Counter(int(z) for z in cells[0])
            requests = self._unknown_symmetry(unit, list(range(1, len(cells) + 1)))
            cells = []
        for cell in cells:
            try:
                requests += self.requests(cell)
            except XtalforgeError as exc:
                first_error = first_error or exc
        if not requests:
            if first_error is not None:
                raise first_error
            raise XtalforgeError(f"no library structure has the anonymised formula of {target.formula}: give a "
                                 "space group (--spacegroup)")
        return self._spread([requests], n, seed)[0]

    def _spread(self, per_target: list[list[Request]], n: int, seed: int,
                properties: list[np.ndarray] | None = None) -> list[list[Crystal]]:
        """Up to ``n`` samples per target (implausible ones dropped), round-robin over its requests, all targets
        sampled in shared batches."""
        flat: list[Request] = []
        owner: list[int] = []
        for i, reqs in enumerate(per_target):
            if reqs:  # no symmetry to try (no library structure of this formula): no candidates
                flat += [reqs[j % len(reqs)] for j in range(n)]
                owner += [i] * n
        props = np.array([(self.targets if properties is None else properties[i]) for i in owner])
        out: list[list[Crystal]] = [[] for _ in per_target]
        for i, crystal in zip(owner, self.sample(flat, seed, props) if flat else []):
            if crystal is not None:
                out[i].append(crystal)
        return out


def _property_vector(properties: dict[str, float]) -> np.ndarray:
    names = {"formation_energy": "formation_energy_per_atom", "formation_energy_per_atom": "formation_energy_per_atom",
             "band_gap": "band_gap"}
    vec = np.full(len(PROPERTIES), np.nan)
    for key, value in properties.items():
        if value is None:
            continue
        if key not in names:
            raise XtalforgeError(f"unknown target property '{key}' (choose formation_energy or band_gap)")
        if not np.isfinite(float(value)):
            raise XtalforgeError(f"target {key} must be a finite number, got {value}")
        vec[PROPERTIES.index(names[key])] = float(value)
    return vec


def _unit(counts: Counter) -> Counter:
    """The formula unit: counts divided by their greatest common divisor."""
    elements, reduced_counts, _ = reduced(counts)
    return Counter(dict(zip(elements, reduced_counts)))


def divisors(counts: Counter) -> list[int]:
    """Formula units per primitive cell a cell of these counts may reduce to (it may be a centred supercell)."""
    g = reduced(counts)[2]
    return [z for z in range(1, g + 1) if g % z == 0]


def _proportional(a: Counter, b: Counter) -> bool:
    """Same elements in the same ratios (a primitive description of a supercell target still fits)."""
    if set(a) != set(b):
        return False
    ratios = {b[z] / a[z] for z in a}
    return len(ratios) == 1 and float(next(iter(ratios))).is_integer()


@register("symmetry")
def _symmetry_factory(weights: str = DEFAULT_WEIGHTS, spacegroup: int | None = None, wyckoff: str | None = None,
                      formation_energy: float | None = None, band_gap: float | None = None, steps: int | None = None,
                      anti_anneal: float | None = None, guidance_scale: float | None = None, max_requests: int = 4,
                      device: str = "cpu", library=None, structure_properties: bool = False, source: str = "both",
                      proposer: str | None = None, max_atoms: int | None = None) -> SymmetryMethod:
    """``get_method("symmetry", spacegroup=194, wyckoff="Mg:a B:d", band_gap=1.0, ...)``."""
    if spacegroup is not None:  # bad requests fail before any weights load
        parse_wyckoff(check_group(spacegroup), wyckoff or "")
    model = WyckoffFlow.load(weights, device)
    found = None
    if proposer is not None:
        from xtalforge.models.symmetry_proposer import SymmetryProposer

        found = SymmetryProposer.load(proposer, device)
    return SymmetryMethod(model, spacegroup, wyckoff, {"formation_energy": formation_energy, "band_gap": band_gap},
                          steps, anti_anneal, guidance_scale, max_requests, device=device, library=library,
                          structure_properties=structure_properties, source=source, proposer=found,
                          max_atoms=max_atoms)
