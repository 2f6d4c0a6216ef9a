"""CHGNet relaxation through ASE: one cached model, FIRE or BFGS on a ``FrechetCellFilter`` (atoms and cell).

CHGNet's pretrained weights are inside its pip package, so loading needs no network. Torch threads are only changed
when the caller asks (``threads=``), and restored afterwards, so relaxing does not take over a shared machine.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from xtalforge.crystal import Crystal, check_cell_size, check_plausible, one_line
from xtalforge.errors import StructureError, XtalforgeError

log = logging.getLogger(__name__)
POTENTIALS = ("chgnet",)
OPTIMIZERS = ("FIRE", "BFGS")
#: CHGNet is not asked about denser cells (A^3/atom): the densest real solids have ~5.7 A^3/atom (diamond), and
#: CHGNet's neighbour graph of a collapsed generated cell (0.1 A^3/atom occurs in DAO-G samples) took >20 GB and was
#: OOM-killed. :func:`relax` also stops a relaxation whose cell collapses below it on the way.
MIN_VOLUME_PER_ATOM = 3.0


@dataclass
class RelaxResult:
    """Outcome of one relaxation.

    Attributes:
        crystal: the relaxed crystal; ``properties["energy_per_atom"]`` is its CHGNet energy in eV/atom.
        energies: (steps + 1,) energy per atom (eV/atom) at every optimiser step, the start included.
        converged: the largest force (and stress, through the cell filter) fell below ``fmax``.
        steps: optimiser steps taken.
    """

    crystal: Crystal
    energies: np.ndarray
    converged: bool
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=1)
def load_chgnet(model_name: str = "0.3.0") -> Any:
    """The pretrained CHGNet model on CPU (loaded once per process from the weights shipped in the package)."""
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count on load
        return CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)


@lru_cache(maxsize=1)
def _calculator() -> Any:
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNetCalculator(model=load_chgnet(), use_device="cpu", on_isolated_atoms="error")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch threads (unchanged when None), restoring the previous count."""
    import torch

    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_crystal(item: Crystal | Any) -> Crystal:
    if isinstance(item, Crystal):
        return item
    if hasattr(item, "lattice") and hasattr(item, "species"):
        return Crystal.from_structure(item)
    if hasattr(item, "cell") and hasattr(item, "numbers"):
        return Crystal.from_atoms(item)
    raise XtalforgeError(f"cannot relax a {type(item).__name__}: pass a Crystal, pymatgen Structure or ASE Atoms")


def _check_not_collapsed(atoms: Any, formula: str) -> None:
    """Stop before the next force call builds an enormous neighbour graph (the cell filter can shrink a bad start)."""
    per_atom = atoms.get_volume() / len(atoms)
    if per_atom < MIN_VOLUME_PER_ATOM:
        raise StructureError(f"CHGNet relaxation of {formula} stopped: the cell collapsed to {per_atom:.2f} A^3/atom "
                             f"(below {MIN_VOLUME_PER_ATOM})")


def relax(
    crystal_or_structure: Crystal | Any,
    potential: str = "chgnet",
    fmax: float = 0.1,
    steps: int = 500,
    trajectory: str | Path | None = None,
    optimizer: str = "FIRE",
    relax_cell: bool = True,
    threads: int | None = None,
) -> RelaxResult:
    """Relax atoms and cell to a local minimum of the potential energy.

    Args:
        crystal_or_structure: a :class:`Crystal`, pymatgen ``Structure`` or ASE ``Atoms``.
        potential: ``"chgnet"`` (the only one shipped).
        fmax: force convergence threshold in eV/Angstrom (applied to the cell filter's generalised forces).
        steps: maximum optimiser steps.
        trajectory: optional path of an ASE ``.traj`` file recording every step.
        optimizer: ``"FIRE"`` (robust from far-off starts) or ``"BFGS"``.
        relax_cell: also relax the lattice (``FrechetCellFilter``); False keeps the cell fixed.
        threads: torch threads for this call (default: leave torch's setting alone).

    Returns:
        :class:`RelaxResult`; the crystal keeps the input's ``properties`` plus ``energy_per_atom`` (eV/atom),
        ``relax_steps`` and ``relax_converged``.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE

    if potential not in POTENTIALS:
        raise XtalforgeError(f"unknown potential '{potential}' (choose from {', '.join(POTENTIALS)})")
    if optimizer not in OPTIMIZERS:
        raise XtalforgeError(f"unknown optimizer '{optimizer}' (choose from {', '.join(OPTIMIZERS)})")
    crystal = _as_crystal(crystal_or_structure).right_handed()  # CHGNet's stress needs det(lattice) > 0
    try:  # a 10^6 A cell made CHGNet's neighbour search ask for exabytes (MemoryError)
        check_cell_size(crystal.lattice)
    except StructureError as exc:
        raise StructureError(f"CHGNet cannot relax {crystal.formula}: {exc}") from None
    atoms = crystal.to_atoms()
    n = len(atoms)
    _check_not_collapsed(atoms, crystal.formula)
    with torch_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atoms.calc = _calculator()
        energies: list[float] = []
        try:
            target = FrechetCellFilter(atoms) if relax_cell else atoms
            opt_cls = FIRE if optimizer == "FIRE" else BFGS
            opt = opt_cls(target, logfile=None, trajectory=str(trajectory) if trajectory else None)
            opt.attach(lambda: energies.append(atoms.get_potential_energy() / n), interval=1)
            opt.attach(lambda: _check_not_collapsed(atoms, crystal.formula), interval=1)
            converged = bool(opt.run(fmax=fmax, steps=int(steps)))
        except (ValueError, RuntimeError) as exc:  # CHGNet raises these for isolated atoms or broken graphs
            raise StructureError(f"CHGNet cannot relax {crystal.formula}: {one_line(exc)}") from None
    taken = int(opt.nsteps)
    trace = np.asarray(energies, dtype=np.float64)  # ASE calls observers at the start and after every step
    props = {**crystal.properties, "energy_per_atom": float(trace[-1]), "relax_steps": taken,
             "relax_converged": converged}
    relaxed = Crystal(np.array(atoms.cell), atoms.get_scaled_positions(wrap=True), atoms.numbers, props)
    try:  # a start with atoms barely apart can be pushed onto each other: that is no relaxed structure
        check_plausible(relaxed)
    except StructureError as exc:
        raise StructureError(f"CHGNet relaxation of {crystal.formula} failed: {exc}") from None
    return RelaxResult(relaxed, trace, converged, taken)


def chgnet_energies(
    crystals: Sequence[Crystal | Any], batch_size: int = 16, threads: int | None = None, desc: str | None = None,
    workers: int = 1,
) -> np.ndarray:
    """(len(crystals),) CHGNet energies in eV/atom of unrelaxed crystals, evaluated in batches.

    A crystal CHGNet cannot evaluate (e.g. an atom with no neighbour within its 5 Angstrom cutoff) gets NaN.
    ``desc``: show a progress bar with this label (on a terminal only). ``workers`` > 1: that many processes of one
    torch thread each share the crystals (CHGNet's graph building is single-threaded Python, so processes scale
    where threads do not).
    """
    from tqdm.auto import tqdm

    if workers > 1 and len(crystals) > 4 * batch_size:
        from xtalforge.device import torch_process_pool

        parts = np.array_split(np.arange(len(crystals)), workers)
        with torch_process_pool(workers) as pool:
            results = pool.map(_energies_part, [[_as_crystal(crystals[i]) for i in p] for p in parts],
                               [batch_size] * workers)
            return np.concatenate(list(tqdm(results, total=workers, desc=desc, unit="part", leave=False,
                                            disable=None if desc else True)))
    return _energies(crystals, batch_size, threads, desc)


def _energies_part(crystals: list[Crystal], batch_size: int) -> np.ndarray:
    return _energies(crystals, batch_size, threads=1, desc=None)


def _energies(crystals: Sequence[Crystal | Any], batch_size: int, threads: int | None, desc: str | None
              ) -> np.ndarray:
    import torch
    from tqdm.auto import tqdm

    model = load_chgnet()
    structures = [_as_crystal(c).to_structure() for c in crystals]
    out = np.full(len(structures), np.nan)
    bar = tqdm(total=len(structures), desc=desc, unit="structure", leave=False, disable=None if desc else True)
    # inference_mode: energies need no autograd graph; ~20% less CPU per structure, the same energies (re-decorated
    # templates spend most of their time here)
    with torch_threads(threads), warnings.catch_warnings(), torch.inference_mode(), bar:
        warnings.simplefilter("ignore")
        for start in range(0, len(structures), batch_size):
            chunk = structures[start : start + batch_size]
            try:
                preds = model.predict_structure(chunk, task="e", batch_size=batch_size)
                if isinstance(preds, dict):  # CHGNet returns a bare dict for a one-structure list
                    preds = [preds]
                out[start : start + len(chunk)] = [float(p["e"]) for p in preds]
            except (ValueError, RuntimeError):  # one bad structure fails its batch: retry them one by one
                for k, s in enumerate(chunk):
                    try:
                        out[start + k] = float(model.predict_structure(s, task="e")["e"])
                    except (ValueError, RuntimeError):
                        log.warning("CHGNet could not evaluate %s", s.composition.reduced_formula)
            bar.update(len(chunk))
    return out
