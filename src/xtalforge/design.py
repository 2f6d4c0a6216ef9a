"""Design by property: elements + target band gap / formation energy -> charge-balanced compositions -> proposed
symmetry -> property-conditioned Wyckoff flow samples -> ranked by closeness to the target and stability.

    from xtalforge.design import design
    found = design(["Li", "Fe", "P", "O"], {"band_gap": 3.0}, n=10)
    found[0].crystal, found[0].predicted, found[0].energy_per_atom

Compositions: every reduced formula of the elements (each present) with at most ``formula_atoms`` atoms per formula
unit that SMACT finds charge-balanced (``evaluation.denovo.smact_validity``), fewest atoms first; with targets, the
first ``SCREENED`` of them are screened (:func:`screen_compositions`: the DAO-P prediction for the template method's
first structure of each) and the closest to the targets kept. Structures: for each of ``compositions`` of them, the
symmetry method (proposer -> Wyckoff flow, both conditioned on the targets) draws ``samples`` cells of at most
``max_atoms`` atoms. Every sample's properties are predicted by the
shipped DAO-P heads and its CHGNet static energy computed; the score is the sum over targets of
``|predicted - target| / WINDOW`` plus ``(E - E_min) / 0.1 eV``, E_min the lowest energy found for its composition.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import gcd

import numpy as np

from xtalforge.composition import Target, symbol_to_number
from xtalforge.crystal import Crystal
from xtalforge.errors import XtalforgeError

log = logging.getLogger(__name__)
#: property name -> (DAO-P head, unit); the targets ``design`` understands
PROPERTIES = {"band_gap": ("band_gap", "eV"), "formation_energy": ("formation_energy", "eV/atom")}
#: a structure whose predicted property is within this of the target is a hit (band gap eV, formation eV/atom)
WINDOW = {"band_gap": 0.5, "formation_energy": 0.25}
STABILITY_SCALE = 0.1
#: compositions (fewest atoms first) whose template structure is scored before the closest are sampled
SCREENED = 24  # eV/atom of energy above the composition's lowest that costs as much as one window


@dataclass
class Design:
    """One designed structure. ``predicted``: DAO-P predictions of every property in ``PROPERTIES``;
    ``energy_per_atom``: CHGNet static (eV/atom); ``above_lowest``: above the lowest found for its composition."""

    crystal: Crystal
    predicted: dict[str, float]
    energy_per_atom: float
    above_lowest: float
    score: float
    spacegroup: int
    wyckoff: str
    info: dict = field(default_factory=dict)

    @property
    def formula(self) -> str:
        return self.crystal.formula


def check_targets(targets: dict[str, float]) -> dict[str, float]:
    """Known names with finite values, at least one; a one-line error otherwise."""
    if not targets:
        raise XtalforgeError("give at least one target (--band-gap or --formation-energy)")
    out = {}
    for name, value in targets.items():
        if name not in PROPERTIES:
            raise XtalforgeError(f"unknown property '{name}' (choose {', '.join(PROPERTIES)})")
        if value is None or not np.isfinite(float(value)):
            raise XtalforgeError(f"target {name} must be a finite number, got {value}")
        out[name] = float(value)
    if out.get("band_gap", 0.0) < 0:
        raise XtalforgeError(f"a band gap cannot be negative, got {out['band_gap']}")
    return out


def compositions(elements: Sequence[str], formula_atoms: int = 12) -> list[dict[str, int]]:
    """Charge-balanced reduced formulas of exactly these elements, fewest atoms first (then alphabetical)."""
    from xtalforge.evaluation.denovo import smact_validity

    symbols = list(dict.fromkeys(e.strip() for e in elements if e.strip()))
    if not symbols:
        raise XtalforgeError("give at least one element (--elements Li,Fe,P,O)")
    numbers = [symbol_to_number(s) for s in symbols]  # unknown element: one-line error
    out = []
    for counts in itertools.product(range(1, formula_atoms + 1), repeat=len(symbols)):
        if sum(counts) > formula_atoms or np.gcd.reduce(counts) != 1:
            continue
        if smact_validity([z for z, c in zip(numbers, counts) for _ in range(c)]):
            out.append(dict(zip(symbols, counts)))
    if not out:
        raise XtalforgeError(f"SMACT finds no charge-balanced composition of {', '.join(symbols)} with at most "
                             f"{formula_atoms} atoms per formula unit")
    out.sort(key=lambda c: (sum(c.values()), "".join(f"{e}{n}" for e, n in c.items())))
    return out


def _out_of_range(targets: dict[str, float]) -> list[str]:
    """Targets outside the range the proposer's property bins resolve (beyond it every value is the same token, and
    the training labels thin out)."""
    from xtalforge.models.symmetry_proposer.tokens import PROPERTY_BINS

    column = {"band_gap": "band_gap", "formation_energy": "formation_energy_per_atom"}
    out = []
    for name, value in targets.items():
        edges = PROPERTY_BINS[column[name]]
        low = 0.0 if name == "band_gap" else float(edges[0])
        if not low <= value <= float(edges[-1]):
            out.append(f"{name} = {value:g} {PROPERTIES[name][1]} is outside what the models were trained to "
                       f"resolve ({low:g} .. {float(edges[-1]):g})")
    return out


def design(elements: Sequence[str], targets: dict[str, float], spacegroup: int | None = None, max_atoms: int = 40,
           n: int = 20, compositions_tried: int = 6, samples: int = 8, formula_atoms: int = 12, seed: int = 0,
           conditioned: bool = True, device: str = "cpu", method=None) -> list[Design]:
    """Structures of the elements aimed at ``targets`` (``PROPERTIES`` names), best first (at most ``n``).

    Args:
        spacegroup: sample only in this group (ITA number); None = the proposer's groups.
        max_atoms: largest cell; compositions_tried, samples: compositions sampled, samples per composition.
        conditioned: False samples without the targets (the baseline of ``bench/design.py``); ranking is the same.
        method: a :class:`~xtalforge.models.wyckoff_flow.SymmetryMethod` to use (default: the shipped weights).
    """
    targets = check_targets(targets)
    if n < 1:
        raise XtalforgeError(f"n must be at least 1, got {n}")
    crystals = sample_structures(elements, targets if conditioned else {}, spacegroup, max_atoms, compositions_tried,
                                 samples, formula_atoms, seed, device, method, check=targets)
    return rank_designs(crystals, targets)[:n]


def sample_structures(elements: Sequence[str], targets: dict[str, float], spacegroup: int | None = None,
                      max_atoms: int = 40, compositions_tried: int = 6, samples: int = 8, formula_atoms: int = 12,
                      seed: int = 0, device: str = "cpu", method=None, check: dict | None = None) -> list[Crystal]:
    """The unranked samples of :func:`design` (``targets`` may be empty: unconditioned); ``check``: targets to
    warn about when outside the training range."""
    if samples < 1 or compositions_tried < 1:
        raise XtalforgeError("samples and compositions must be at least 1")
    comps = compositions(elements, formula_atoms)
    comps = screen_compositions(comps, targets)[:compositions_tried] if targets else comps[:compositions_tried]
    if method is None:
        from xtalforge.methods import get_method

        method = get_method("symmetry", spacegroup=spacegroup, device=device, source="proposer", max_requests=2,
                            max_atoms=max_atoms, **targets)
    for warning in _out_of_range(check or targets):
        log.warning("design: %s", warning)
    crystals: list[Crystal] = []
    for i, comp in enumerate(comps):
        if sum(comp.values()) > max_atoms:
            continue
        try:
            found = method.predict_target(Target(comp, exact=False), samples, seed=seed + i)
        except XtalforgeError as exc:  # e.g. the requested group cannot hold this composition
            log.info("design: %s skipped: %s", comp, exc)
            continue
        crystals += [c for c in found if c.num_atoms <= max_atoms]
    if not crystals:
        raise XtalforgeError(f"no structure of {', '.join(elements)} could be generated"
                             + (f" in space group {spacegroup}" if spacegroup else "") + f" within {max_atoms} atoms")
    return crystals


def screen_compositions(comps: list[dict[str, int]], targets: dict[str, float], limit: int = SCREENED
                        ) -> list[dict[str, int]]:
    """The first ``limit`` compositions, closest to the targets first by the DAO-P prediction for the template
    method's first structure of each (one without any template structure goes last), then the rest in order."""
    from xtalforge.methods import get_method
    from xtalforge.properties import load_property_model

    templates = get_method("template")
    head, crystals, where = comps[:limit], [], []
    for i, comp in enumerate(head):
        try:
            found = templates.predict_target(Target(comp, exact=False), 1)
        except XtalforgeError:
            found = []
        if found:
            crystals.append(found[0])
            where.append(i)
    miss = np.full(len(head), np.inf)
    if crystals:
        total = np.zeros(len(crystals))
        for p, v in targets.items():
            total += np.abs(load_property_model(PROPERTIES[p][0]).predict(crystals) - v) / WINDOW[p]
        miss[where] = total
    order = np.argsort(miss, kind="stable")
    return [head[i] for i in order] + comps[limit:]


def rank_designs(crystals: list[Crystal], targets: dict[str, float]) -> list[Design]:
    """Predicted properties (DAO-P), CHGNet static energies and the design score of every crystal, best first."""
    from xtalforge.properties import load_property_model
    from xtalforge.ranking import chgnet_energy

    predicted = {p: load_property_model(head).predict(crystals) for p, (head, _) in PROPERTIES.items()}
    energy = chgnet_energy(crystals)
    formulas = [_reduced_formula(c) for c in crystals]
    lowest = {f: np.nanmin([e for e, g in zip(energy, formulas) if g == f] + [np.inf]) for f in set(formulas)}
    out = []
    for i, c in enumerate(crystals):
        above = float(energy[i] - lowest[formulas[i]]) if np.isfinite(energy[i]) else np.inf
        miss = sum(abs(float(predicted[p][i]) - v) / WINDOW[p] for p, v in targets.items())
        out.append(Design(c, {p: float(predicted[p][i]) for p in PROPERTIES}, float(energy[i]), above,
                          miss + above / STABILITY_SCALE, int(c.properties.get("spacegroup", 1)),
                          str(c.properties.get("wyckoff", "")), {"targets": targets}))
    out.sort(key=lambda d: d.score)
    return out


def as_candidates(designs: Sequence[Design]):
    """The designs as :class:`~xtalforge.prediction.Candidate` rows (for ``write_candidates``), with the
    predicted properties, energy above the lowest and score as extra columns."""
    from xtalforge.prediction import Candidate

    out = []
    for rank, d in enumerate(designs, 1):
        columns = {f"predicted_{p}_{PROPERTIES[p][1].replace('/', '_per_')}": round(v, 4)
                   for p, v in d.predicted.items()}
        columns.update(above_lowest_eV_per_atom=round(d.above_lowest, 4), design_score=round(d.score, 4))
        info = {**d.crystal.properties, "static_energy_per_atom": d.energy_per_atom, "rank_by": "design",
                "rank_value": d.score, "columns": columns}
        out.append(Candidate(rank, d.crystal, -d.score, info=info))
    return out


def format_designs(designs: Sequence[Design], targets: dict[str, float]) -> str:
    """A markdown table: rank, formula, atoms, group and Wyckoff positions, predicted properties, energies."""
    head = ["rank", "formula", "natoms", "sampled group: wyckoff", *[f"{p} ({PROPERTIES[p][1]})" for p in PROPERTIES],
            "CHGNet eV/atom", "above lowest", "score"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, d in enumerate(designs, 1):
        props = [f"{d.predicted[p]:.2f}" + (" *" if p in targets and abs(d.predicted[p] - targets[p]) <= WINDOW[p]
                                            else "") for p in PROPERTIES]
        lines.append(f"| {i} | {d.formula} | {d.crystal.num_atoms} | {d.spacegroup}: {d.wyckoff} | "
                     + " | ".join(props) + f" | {d.energy_per_atom:.3f} | {d.above_lowest:.3f} | {d.score:.2f} |")
    return "\n".join(lines)


def hit_rate(designs: Sequence[Design], targets: dict[str, float]) -> dict[str, float]:
    """Per target: the share (%) of designs whose predicted property is within ``WINDOW`` of it."""
    return {p: 100.0 * float(np.mean([abs(d.predicted[p] - v) <= WINDOW[p] for d in designs])) for p, v in
            targets.items()}


def _reduced_formula(crystal: Crystal) -> str:
    values, counts = np.unique(crystal.numbers, return_counts=True)
    g = 0
    for c in counts:
        g = gcd(g, int(c))
    return " ".join(f"{z}:{c // g}" for z, c in zip(values, counts))
