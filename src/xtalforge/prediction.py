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

import numpy as np

from xtalforge.composition import Target
from xtalforge.crystal import Crystal, atomic_write_text
from xtalforge.errors import XtalforgeError
from xtalforge.ranking import GENERATOR_POOL, RankedPool, rank_crystals

#: Values of ``predict(rank_by=...)`` / ``xtalforge predict --rank-by``.
RANK_BY = ("auto", "score", "dao-p", "chgnet", "consensus")
#: What ``rank_by="auto"`` uses without relaxation: the method's own order (re-ranking template lists by an energy
#: gained nothing measurable, docs/methods.md) ...
DEFAULT_RANK_BY = "score"
#: ... except for a generator alone, whose samples are ranked over a pool: DAO-G's by consensus, the symmetry
#: method's by CHGNet static energy (it ranked the first candidate better than consensus on tuning rows;
#: docs/methods.md).
GENERATOR_RANK_BY = {"dao-g": "consensus", "symmetry": "chgnet"}
#: Samples drawn per composition for that ranking (what was measured; the symmetry method's pool is also its cost).
GENERATOR_POOLS = {"dao-g": GENERATOR_POOL, "symmetry": 20}
#: Methods that draw samples, ranked as above.
GENERATORS = tuple(GENERATOR_RANK_BY)


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
    def z(self) -> int:
        """Formula units in the cell (the greatest common divisor of the element counts)."""
        return int(np.gcd.reduce(np.unique(self.crystal.numbers, return_counts=True)[1]))

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
            "z": self.z,
            "spacegroup": self.spacegroup,
            # the group and orbits the symmetry method sampled (its requested group; spglib may find a supergroup)
            "wyckoff": (f"{self.info['spacegroup']}: {self.info['wyckoff']}" if "wyckoff" in self.info else None),
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
        formula: ``Ga4Te4`` (exact cell) or a reduced formula such as ``GaTe`` / ``CsV3Sb5`` (Z is enumerated; each
            candidate's Z is in its row).
        n: number of candidates returned.
        method: ``auto`` (templates, then re-decorated templates and DAO-G samples), ``template``, ``redecorate``,
            ``dao-g``, ... (:func:`xtalforge.methods.available_methods`).
        relax: ``none`` or ``chgnet``: relax the returned candidates with CHGNet. With an energy ranking every drawn
            candidate is relaxed and ordered by its relaxed energy; a consensus ranking picks first, then relaxes.
        seed: random seed of stochastic methods.
        z: formula units per cell, fixing the cell of a reduced formula.
        device: torch device of neural methods (``cpu``, ``cuda``, ``cuda:N``).
        rank_by: ``score`` (the method's order), ``dao-p`` (DAO-P energy), ``chgnet`` (CHGNet energy per atom, of the
            relaxed structures with relaxation), ``consensus`` (the structure a generator draws most often first), or
            ``auto`` (:func:`resolve_rank_by`).
        pool: candidates drawn before ranking (default ``n``; for a generator ranked by anything but its own score
            ``max(n, GENERATOR_POOLS[method])``).
    """
    if n < 1:
        raise XtalforgeError(f"n must be at least 1, got {n}")
    if relax not in ("none", "chgnet"):
        raise XtalforgeError(f"unknown relaxation '{relax}' (choose none or chgnet)")
    by = resolve_rank_by(rank_by, relaxed=relax == "chgnet", method=method)
    target = Target.parse(formula, z=z)
    # an energy ranking of relaxed structures needs every drawn candidate relaxed first; any other ranking picks the
    # best n as drawn (what `evaluate` measures) and relaxes only those
    rank_first = by == "consensus" or relax == "none"
    if rank_first:
        crystals = predictor(method, n, by, pool, device=device, **method_kwargs).predict_target(target, n, seed)
    else:
        crystals = _method(method, device, method_kwargs).predict_target(target, _pool(method, n, by, pool), seed)
    if not crystals:
        raise XtalforgeError(f"method '{method}' found no candidate for {formula}")
    for c in crystals:
        c.properties.setdefault("method", method)
    if relax == "chgnet":
        crystals = _relax_all(crystals, formula)
    if not rank_first:  # among what relaxation left of the pool
        relaxed = [c.properties["energy_per_atom"] for c in crystals] if by == "chgnet" else None  # at hand
        crystals = rank_crystals(crystals, by, values=relaxed)
        for c in crystals:
            c.properties["ranked_among"] = len(crystals)
        crystals = crystals[:n]
    energies = [float(c.properties["energy_per_atom"]) if relax == "chgnet" else None for c in crystals]
    out = []
    for rank, (c, e) in enumerate(zip(crystals, energies), start=1):
        info = {k: v for k, v in c.properties.items() if k not in ("score", "energy_per_atom")}
        if relax == "none" and c.properties.get("energy_per_atom") is not None:  # computed by the method itself
            info["static_energy_per_atom"] = float(c.properties["energy_per_atom"])
        out.append(Candidate(rank, c, float(c.properties.get("score", 0.0)), e, info))
    return out


def predictor(method: str = "auto", n: int = 20, rank_by: str = "auto", pool: int | None = None,
              device: str = "cpu", **method_kwargs: Any) -> RankedPool:
    """The method ``predict`` runs before any relaxation: ``method`` drawing a pool of candidates, the best ``n`` kept
    under ``rank_by`` (resolved as without relaxation). ``xtalforge evaluate`` measures exactly this object."""
    by = resolve_rank_by(rank_by, relaxed=False, method=method)
    return RankedPool(_method(method, device, method_kwargs), by, _pool(method, n, by, pool))


def resolve_rank_by(rank_by: str, relaxed: bool, method: str) -> str:
    """The ranking ``rank_by="auto"`` stands for: :data:`GENERATOR_RANK_BY` for a generator alone (with relaxation,
    CHGNet ranks the relaxed structures), CHGNet energy of the relaxed structures for other methods with relaxation,
    else the method's own order."""
    if rank_by not in RANK_BY:
        raise XtalforgeError(f"unknown ranking '{rank_by}' (choose from {', '.join(RANK_BY)})")
    if rank_by != "auto":
        return rank_by
    return GENERATOR_RANK_BY[method] if method in GENERATORS else "chgnet" if relaxed else DEFAULT_RANK_BY


def _pool(method: str, n: int, by: str, pool: int | None) -> int:
    """Candidates drawn for ``n`` returned: ``pool``, or ``max(n, GENERATOR_POOLS[method])`` for a generator ranked
    by anything but its own score (a ranking can only pick from what was drawn)."""
    if pool is None:
        pool = max(n, GENERATOR_POOLS[method]) if method in GENERATORS and by != "score" else n
    if pool < n:
        raise XtalforgeError(f"pool ({pool}) must be at least n ({n})")
    return pool


def _method(method: str, device: str, method_kwargs: dict[str, Any]):
    from xtalforge.methods import get_method, method_parameters

    kwargs = dict(method_kwargs)
    if "device" in method_parameters(method):  # template methods run on the CPU only
        kwargs.setdefault("device", device)
    return get_method(method, **kwargs)


def _relax_all(crystals: list[Crystal], formula: str) -> list[Crystal]:
    """Every candidate relaxed with CHGNet, in the same order; one CHGNet cannot relax is dropped with a warning."""
    from tqdm.auto import tqdm

    from xtalforge.errors import StructureError
    from xtalforge.relax import relax as relax_one

    relaxed = []
    for c in tqdm(crystals, desc="relaxing (CHGNet)", unit="structure", disable=None):
        try:
            relaxed.append(relax_one(c, potential="chgnet").crystal)  # keeps the candidate's properties
        except StructureError as exc:  # one unrelaxable candidate (e.g. overlapping atoms) is dropped, not fatal
            warnings.warn(f"dropped a candidate: {exc}", stacklevel=3)
    if not relaxed:
        raise XtalforgeError(f"CHGNet could relax none of the candidates for {formula}")
    return relaxed


def format_table(candidates: list[Candidate]) -> str:
    """A markdown table of the candidates (rank, formula, space group, sampled Wyckoff positions, volume, relaxed
    and static energies, ranking name and value)."""
    rows = [c.row() for c in candidates]
    head = ["rank", "formula", "natoms", "z", "spacegroup", "wyckoff", "volume_A3", "energy_eV_per_atom",
            "static_energy_eV_per_atom", "score", "method", "rank_by", "rank_value"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r[h] is None else str(r[h]) for h in head) + " |")
    return "\n".join(lines)


def _written_by_predict(path: Path) -> bool:
    """Whether a file in an output folder is one that :func:`write_candidates` writes."""
    return path.is_file() and (path.name in ("summary.md", "summary.csv", "run.json", "index.html")
                               or (path.suffix == ".cif" and path.name[:2].isdigit() and path.name[2:3] == "_"))


def write_candidates(candidates: list[Candidate], out_dir: str | os.PathLike, settings: dict[str, Any],
                     report: bool = True) -> Path:
    """Write ranked CIFs, ``summary.md``, ``summary.csv``, ``run.json`` (settings, version) and, with ``report``,
    ``index.html`` (a picture and the facts of every candidate; offline, self-contained) to ``out_dir``.

    The folder is assembled under a hidden temporary name and renamed into place, so after a kill ``out_dir`` is
    the previous folder, the new one, or (between the two renames of a swap) absent, never partly written. An
    existing ``out_dir`` is replaced only if it holds nothing but the files of an earlier ``predict``.
    """
    import xtalforge

    out_dir = Path(out_dir)
    if out_dir.exists():
        foreign = [f.name for f in out_dir.iterdir() if not _written_by_predict(f)] if out_dir.is_dir() else [""]
        if foreign:
            raise XtalforgeError(f"{out_dir} exists and holds files predict did not write ({', '.join(foreign[:3])}"
                                 f"{', ...' if len(foreign) > 3 else ''}); choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.parent.glob(f".{out_dir.name}.tmp*"), *out_dir.parent.glob(f".{out_dir.name}.old*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed while it wrote
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        rows = []
        for c in candidates:
            name = f"{c.rank:02d}_{c.formula}.cif"
            atomic_write_text(tmp / name, c.crystal.to_cif_string())
            # which shipped weights made a generated candidate (the defaults change between versions)
            rows.append({**c.row(), "weights": c.info.get("weights"), "ranked_among": c.info.get("ranked_among"),
                         "consensus_matches": c.info.get("consensus_matches"), **c.info.get("columns", {}),
                         "file": name})
        atomic_write_text(tmp / "summary.md", format_table(candidates) + "\n")
        import pandas as pd

        atomic_write_text(tmp / "summary.csv", pd.DataFrame(rows).to_csv(index=False))
        meta = {"xtalforge_version": xtalforge.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "settings": settings, "candidates": rows}
        atomic_write_text(tmp / "run.json", json.dumps(meta, indent=2, default=str))
        if report:
            from xtalforge.visualize import write_prediction_report

            title = f"xtalforge predict {settings.get('formula') or (candidates[0].formula if candidates else '')}"
            write_prediction_report(tmp, [(c.crystal, r) for c, r in zip(candidates, rows)], settings, title)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if out_dir.exists():  # swap: the old folder steps aside, the new one takes its name, the old one goes
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old"))
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
