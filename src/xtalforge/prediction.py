"""``xtalforge.predict()``: from a formula to ranked, optionally relaxed candidate structures.

This is the main job of the package; the CLI's ``xtalforge predict`` is a thin shell around :func:`predict` and
:func:`write_candidates`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtalforge.composition import Target
from xtalforge.crystal import Crystal, atomic_write_text
from xtalforge.errors import XtalforgeError

#: Values of ``predict(rank_by=...)`` / ``xtalforge predict --rank-by``.
RANK_BY = ("auto", "score", "dao-p", "chgnet", "consensus")
#: What ``rank_by="auto"`` uses without relaxation: the best rank-1 match rate measured by bench/ranking.py among the
#: affordable rankings (see :data:`RANK_NOTE`): the method's own order, except for DAO-G alone
#: (:data:`GENERATOR_RANK_BY`).
DEFAULT_RANK_BY = "score"
#: ``rank_by="auto"`` for ``method="dao-g"``: its samples' own score ranks them worse than CHGNet energy does, and
#: consensus (CHGNet breaking ties) at least as well as CHGNet alone (see :data:`RANK_NOTE`).
GENERATOR_RANK_BY = "consensus"
#: ``method="dao-g"`` draws at least this many samples and returns the best ``n`` (see ``predict(pool=...)``):
#: chosen on 100 MP-20 tune entries (consensus rank-1 of pools of 20 / 40 / 60 / 80 samples 45 / 46 / 52 / 50%,
#: the consensus top 20 of them 75 / 84 / 79 / 83%, ``bench/results/ranking_mp20_tune_pool80.json``), confirmed on
#: the 200 report entries (20 / 60: rank-1 41.5 / 49.5%, top 20 75.0 / 81.0%, ``ranking_mp20_pool60.json``).
GENERATOR_POOL = 60
#: The measurement behind :data:`DEFAULT_RANK_BY` (also shown by ``xtalforge predict --help``).
RANK_NOTE = (
    'Measured by bench/ranking.py (100 random MP-20 bi/ternary test entries, 20 candidates each): rank-1 match of '
    "template candidates in the method's own (then hand-made) order 64%, by CHGNet static energy 63%, by DAO-P "
    'energy 8% (random pick 16%, oracle-of-20 87%); DAO-G samples (mp20 weights, 13,800 steps) 17 / 23 / 8% '
    '(random 13%, oracle 55%), and with the shipped 32,800-step weights on 200 entries 21.0 / 33.0 / 8.0% (random '
    '16%, oracle 62%). Flow-matching weights (the default), 100 tune entries outside those 200: own order 31%, '
    'CHGNet 44%, consensus (the structure drawn most often, CHGNet breaking ties) 46%, oracle 77%; on the 200 with '
    'the shipped weights own order 26.5%, CHGNet 43.0%, consensus 44.5%, oracle 78.5%: auto ranks --method dao-g '
    'by consensus over a pool of at least 60 samples (consensus rank-1 of a pool of 20 / 60: 45 / 52% on those 100 '
    'tune entries, 41.5 / 49.5% on the 200; ~2.4 s CHGNet + ~7 s matching per 60 MP-20 cells beside other jobs). '
    '(CHGNet-relaxed DAO-G numbers measured before the left-handed-cell fix of 2026-12-03 are void.) '
    "Re-ranking templates costs ~1.2 s per 20 candidates plus model loading and gained nothing measurable, so auto "
    "keeps the method's order for templates and auto (DAO-G candidates come after template ones; --rank-by chgnet "
    "re-ranks everything)."
)


@dataclass
class Candidate:
    """One predicted structure.

    Attributes:
        rank: 1 = best.
        crystal: the structure as a :class:`~xtalforge.crystal.Crystal`.
        score: the method's ranking score (higher is better).
        energy_per_atom: CHGNet energy in eV/atom when the candidate was relaxed, else None.
        static_energy_per_atom: CHGNet energy in eV/atom of the unrelaxed cell when one was computed (re-decorated
            templates are ordered by it; ``rank_by="chgnet"`` computes it for every candidate), else None.
        info: method-specific provenance (template id, sampler steps, ...).
    """

    rank: int
    crystal: Crystal
    score: float
    energy_per_atom: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def static_energy_per_atom(self) -> float | None:
        if self.info.get("static_energy_per_atom") is not None:
            return float(self.info["static_energy_per_atom"])
        if self.energy_per_atom is None and self.info.get("rank_by") == "chgnet":
            return self.info.get("rank_value")  # rank_by="chgnet" without relaxation ranks by the static energy
        return None

    @property
    def structure(self):
        """The candidate as a pymatgen ``Structure``."""
        return self.crystal.to_structure()

    @property
    def formula(self) -> str:
        return self.crystal.formula

    @property
    def spacegroup(self) -> str:
        """Space group symbol and number found by spglib (symprec 0.1 A)."""
        try:
            from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

            sga = SpacegroupAnalyzer(self.structure, symprec=0.1)
            return f"{sga.get_space_group_symbol()} ({sga.get_space_group_number()})"
        except Exception:  # spglib fails on some generated cells; P1 is the honest answer then
            return "P1 (1)"

    def row(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "formula": self.formula,
            "natoms": self.crystal.num_atoms,
            "spacegroup": self.spacegroup,
            "volume_A3": round(self.crystal.volume, 3),
            "energy_eV_per_atom": None if self.energy_per_atom is None else round(self.energy_per_atom, 4),
            "static_energy_eV_per_atom": None if self.static_energy_per_atom is None
            else round(self.static_energy_per_atom, 4),
            "score": round(self.score, 4),
            "method": self.info.get("method", "-"),
            # what ordered the candidates (e.g. chgnet: static CHGNet eV/atom), so a ranking can be checked
            "rank_by": self.info.get("rank_by", "-"),
            "rank_value": None if self.info.get("rank_value") is None else round(self.info["rank_value"], 4),
        }


def predict(
    formula: str,
    n: int = 20,
    method: str = "auto",
    relax: str = "none",
    seed: int = 0,
    z: int | None = None,
    device: str = "cpu",
    rank_by: str = "auto",
    pool: int | None = None,
    **method_kwargs: Any,
) -> list[Candidate]:
    """Ranked candidate crystal structures for a composition.

    Args:
        formula: ``Ga4Te4`` (exact cell) or a reduced formula such as ``GaTe`` / ``CsV3Sb5`` (Z is enumerated).
        n: number of candidates returned.
        method: ``auto`` (the best measured pipeline), ``template``, ``dao-g``, ... (see ``xtalforge.methods``).
        relax: ``none`` or ``chgnet``: relax the returned candidates with CHGNet (for ``rank_by="auto"`` and methods
            other than ``dao-g``, every drawn candidate, ordered by its relaxed energy per atom; ``dao-g`` samples are
            ranked by consensus first and only the best ``n`` relaxed, keeping that order: the lowest relaxed
            energy picks worse than consensus, ``bench/results/consensus_relax.json``).
        seed: random seed of stochastic methods.
        z: formula units per cell, fixing the cell of a reduced formula.
        device: torch device of neural methods (``cpu`` or ``cuda``).
        rank_by: order of the returned candidates (see :mod:`xtalforge.ranking`): ``score`` (the method's own order),
            ``dao-p`` (DAO-P predicted energy per atom), ``chgnet`` (CHGNet energy per atom; of the relaxed structures
            when ``relax="chgnet"``), ``consensus`` (the structure drawn most often first, ties by CHGNet energy,
            distinct structures before repeats; for samples of a generator; ranks them as drawn, before any
            relaxation), or ``auto`` (:func:`resolve_rank_by`): :data:`GENERATOR_RANK_BY` for ``method="dao-g"``,
            ``chgnet`` with relaxation, else :data:`DEFAULT_RANK_BY` (the method's order).
            The measurement behind this choice is :data:`RANK_NOTE`.
        pool: candidates drawn before ranking, of which the best ``n`` are returned; default ``n``, and for
            ``method="dao-g"`` ``max(n, GENERATOR_POOL)`` unless every drawn candidate must be relaxed (an energy
            ranking with relaxation): the benchmarks rank 20 samples, and a ranking can only pick from what was drawn.
    """
    from xtalforge.methods import get_method, method_parameters

    if n < 1:
        raise XtalforgeError(f"n must be at least 1, got {n}")
    if relax not in ("none", "chgnet"):
        raise XtalforgeError(f"unknown relaxation '{relax}' (choose none or chgnet)")
    if rank_by not in RANK_BY:
        raise XtalforgeError(f"unknown ranking '{rank_by}' (choose from {', '.join(RANK_BY)})")
    by = resolve_rank_by(rank_by, relaxed=relax == "chgnet", method=method)
    # consensus compares the samples as drawn, so it ranks before relaxing and only the best n are relaxed; an
    # energy ranking with relaxation needs every candidate relaxed, so the pool stays n there
    rank_first = by == "consensus" or relax == "none"
    if pool is None:
        pool = max(n, GENERATOR_POOL) if method == "dao-g" and by != "score" and rank_first else n
    if pool < n:
        raise XtalforgeError(f"pool ({pool}) must be at least n ({n})")
    target = Target.parse(formula, z=z)
    kwargs = dict(method_kwargs)
    if "device" in method_parameters(method):  # template and re-decorated-template methods run on the CPU only
        kwargs.setdefault("device", device)
    # "auto" is xtalforge.pipeline.TemplatesThenGenerator: templates, then DAO-G for the slots they leave empty
    impl = get_method(method, **kwargs)
    crystals = impl.predict_target(target, pool, seed=seed)
    for c in crystals:
        c.properties.setdefault("method", method)
    if not crystals:
        raise XtalforgeError(f"method '{method}' found no candidate for {formula}")
    energies: list[float | None] = [None] * len(crystals)
    drawn = len(crystals)  # the pool the ranking chooses from: as drawn, or what relaxation left of it
    if rank_first:
        crystals = _rank(crystals, energies, by, relaxed=False)[0][:n]
    if relax == "chgnet":
        crystals = _relax_all(crystals, formula)
        energies = [float(c.properties["energy_per_atom"]) for c in crystals]
    if not rank_first:
        drawn = len(crystals)
        crystals, energies = _rank(crystals, energies, by, relaxed=True)
    crystals, energies = crystals[:n], energies[:n]
    out = []
    for rank, (c, e) in enumerate(zip(crystals, energies), start=1):
        info = {k: v for k, v in c.properties.items() if k not in ("score", "energy_per_atom")}
        info["ranked_among"] = drawn  # the pool the ranking chose from
        if relax == "none" and c.properties.get("energy_per_atom") is not None:  # computed by the method itself
            info["static_energy_per_atom"] = float(c.properties["energy_per_atom"])
        out.append(Candidate(rank, c, float(c.properties.get("score", 0.0)), e, info))
    return out


def resolve_rank_by(rank_by: str, relaxed: bool, method: str) -> str:
    """The ranking ``rank_by="auto"`` stands for: :data:`GENERATOR_RANK_BY` for ``method="dao-g"`` (with or without
    relaxation), CHGNet energy of the relaxed structures for other methods with relaxation, else
    :data:`DEFAULT_RANK_BY`; any other value is itself."""
    if rank_by != "auto":
        return rank_by
    return GENERATOR_RANK_BY if method == "dao-g" else "chgnet" if relaxed else DEFAULT_RANK_BY


def _relax_all(crystals: list[Crystal], formula: str) -> list[Crystal]:
    """Every candidate relaxed with CHGNet, in the same order; one CHGNet cannot relax is dropped with a warning."""
    from tqdm.auto import tqdm

    from xtalforge.errors import StructureError
    from xtalforge.relax import relax as relax_one

    relaxed = []
    for c in tqdm(crystals, desc="relaxing (CHGNet)", unit="structure", disable=None):
        try:
            relaxed.append(relax_one(c, potential="chgnet").crystal)
        except StructureError as exc:  # one unrelaxable candidate (e.g. overlapping atoms) is dropped, not fatal
            warnings.warn(f"dropped a candidate: {exc}", stacklevel=3)
    if not relaxed:
        raise XtalforgeError(f"CHGNet could relax none of the candidates for {formula}")
    return relaxed


def _rank(crystals: list[Crystal], energies: list[float | None], by: str,
          relaxed: bool) -> tuple[list[Crystal], list[float | None]]:
    """Candidates and their relaxed energies in the order of the ranking ``by`` (resolved, see
    :func:`resolve_rank_by`); the ranking value is kept in ``properties["rank_value"]`` (lower is better) and its
    name in ``properties["rank_by"]``."""
    import numpy as np

    from xtalforge.ranking import order_of, rank_values

    if by == "chgnet" and relaxed:  # after relaxation: the relaxed energies we already have
        values = np.array(energies, dtype=np.float64)
    else:
        values = rank_values(crystals, by)[0]
    # "score" keeps the method's own order (what bench/ranking.py measured), even where a method's order is not
    # a plain sort by score (e.g. template candidates re-ranked inside the method)
    order = np.arange(len(crystals)) if by == "score" else order_of(values)
    for c, v in zip(crystals, values):
        c.properties["rank_by"], c.properties["rank_value"] = by, float(v) if np.isfinite(v) else None
    return [crystals[i] for i in order], [energies[i] for i in order]


def format_table(candidates: list[Candidate]) -> str:
    """A markdown table of the candidates (rank, formula, space group, volume, relaxed and static energies, ranking
    name and value)."""
    rows = [c.row() for c in candidates]
    head = ["rank", "formula", "natoms", "spacegroup", "volume_A3", "energy_eV_per_atom", "static_energy_eV_per_atom",
            "score", "method", "rank_by", "rank_value"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r[h] is None else str(r[h]) for h in head) + " |")
    return "\n".join(lines)


def write_candidates(candidates: list[Candidate], out_dir: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """Write ranked CIFs, ``summary.md``, ``summary.csv`` and ``run.json`` (settings, version) to ``out_dir``.

    Files are assembled in a temporary folder and moved into place, so an interrupted run leaves no partial output.
    """
    import xtalforge

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        rows = []
        for c in candidates:
            name = f"{c.rank:02d}_{c.formula}.cif"
            atomic_write_text(tmp / name, c.crystal.to_cif_string())
            # which shipped weights made a generated candidate (the defaults change between versions)
            rows.append({**c.row(), "weights": c.info.get("weights"), "ranked_among": c.info.get("ranked_among"),
                         "consensus_matches": c.info.get("consensus_matches"), "file": name})
        atomic_write_text(tmp / "summary.md", format_table(candidates) + "\n")
        import pandas as pd

        atomic_write_text(tmp / "summary.csv", pd.DataFrame(rows).to_csv(index=False))
        meta = {"xtalforge_version": xtalforge.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "settings": settings, "candidates": rows}
        atomic_write_text(tmp / "run.json", json.dumps(meta, indent=2, default=str))
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob("[0-9][0-9]_*.cif"):  # ranked files of an earlier run would mix with this one
            stale.unlink()
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
