"""De novo generation: crystals without a given composition, written as CIFs plus a table in resumable batches,
and CDVAE's latent property optimisation written the same way.

    from xtalforge.generation import generate, generate_to_folder, optimize_to_folder
    crystals = generate(data="perov_5", n=100, seed=0)            # shipped CDVAE weights of that benchmark
    generate_to_folder("gen_perov", data="perov_5", n=1000)       # structures/*.cif, generated.csv, run.json
    optimize_to_folder("opt_mp", data="mp_20_biternary")          # 100 test crystals pushed down the energy head

Batch ``b`` of a run is drawn with its own seed (``seed``, ``b``), so a run interrupted and rerun with the same
settings writes exactly what an uninterrupted one would. Each row of the table: formula, atoms, space group (spglib
at ``SYMPREC``), density (g/cm^3), SMACT compositional validity, structural validity (all distances >= 0.5 A) and
the formation energy per atom predicted by the shipped DAO-P head (trained on MP data; an estimate elsewhere).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xtalforge.crystal import Crystal, atomic_write_text
from xtalforge.errors import XtalforgeError

#: generative models ``generate`` can run
MODELS = ("cdvae",)
#: spglib tolerance (Angstrom) of the space group column
SYMPREC = 0.1
BATCH = 250
TABLE_COLUMNS = ("index", "formula", "atoms", "spacegroup", "density", "smact_valid", "struct_valid",
                 "formation_energy", "file")
#: default weight of the latent prior term of :func:`optimize_to_folder` (``xtalforge optimize``), chosen on tuning
#: starts (docs/results.md); CDVAE's protocol is 0
PRIOR_WEIGHT = 0.1
#: columns of ``optimized.csv`` (:func:`optimize_to_folder`)
OPTIMIZE_COLUMNS = ("start", "start_formula", "snapshot", "step", "latent_property", *TABLE_COLUMNS[1:])


def load_generator(model: str = "cdvae", data: str = "mp_20_biternary", weights: str | None = None,
                   device: str = "cpu"):
    """The generative model: ``weights`` (a path or a shipped name) or the shipped weights trained on ``data``."""
    if model not in MODELS:
        raise XtalforgeError(f"unknown generative model '{model}' (choose from {', '.join(MODELS)})")
    from xtalforge.data.protocol import get_benchmark
    from xtalforge.models.cdvae import CDVAE

    if weights is None:
        get_benchmark(data)  # an unknown benchmark is named as such, not as missing weights
    return CDVAE.load(weights or data, device)


def generate(model: str = "cdvae", data: str = "mp_20_biternary", n: int = 100, seed: int = 0,
             sampler: str | None = None, weights: str | None = None, device: str = "cpu",
             batch_size: int = BATCH, latent: str = "auto") -> list[Crystal]:
    """``n`` new crystals from the model trained on benchmark ``data`` (see :func:`load_generator`); ``latent``:
    see :data:`~xtalforge.models.cdvae.sampler.LATENTS`."""
    from xtalforge.models.cdvae.sampler import DEFAULT_SAMPLER, sample

    _check_n(n)
    net = load_generator(model, data, weights, device)
    return sample(net, n, seed, sampler or DEFAULT_SAMPLER, batch_size, latent=latent)


def describe(crystals: list[Crystal]) -> list[dict]:
    """One table row per crystal (see the module docstring); the index and file are left to the caller."""
    from xtalforge.evaluation.denovo import density, smact_validity, spacegroup_number, structure_validity
    from xtalforge.properties import load_property_model

    energies = load_property_model("formation_energy").predict(crystals) if crystals else []
    rows = []
    for c, e in zip(crystals, energies):
        rows.append({"formula": c.formula, "atoms": c.num_atoms, "spacegroup": spacegroup_number(c, SYMPREC),
                     "density": round(density(c), 4), "smact_valid": smact_validity(c.numbers),
                     "struct_valid": structure_validity(c), "formation_energy": round(float(e), 4)})
    return rows


def generate_to_folder(out: str | os.PathLike, model: str = "cdvae", data: str = "mp_20_biternary", n: int = 1000,
                       seed: int = 0, sampler: str | None = None, weights: str | None = None,
                       relax: str = "none", device: str = "cpu", batch_size: int = BATCH,
                       progress: Callable[[int, int], None] | None = None, latent: str = "auto",
                       workers: int = 1) -> Path:
    """Generate ``n`` crystals into ``out``: ``structures/NNNNN.cif``, ``generated.csv`` and ``run.json``.

    Rerunning with the same settings resumes (finished batches are kept); a folder written with other settings, or
    holding other files, is refused. ``relax="chgnet"`` relaxes each crystal before it is written.
    ``progress(done, n)`` is called after every batch; ``latent``: see
    :data:`~xtalforge.models.cdvae.sampler.LATENTS`. ``workers`` > 1: that many processes of one torch thread make
    the batches (each batch is seeded on its own, so the crystals do not depend on ``workers``). Returns the path of
    ``generated.csv``.
    """
    import xtalforge
    from xtalforge.models.cdvae.sampler import DEFAULT_SAMPLER, latent_source

    _check_n(n)
    if relax not in ("none", "chgnet"):
        raise XtalforgeError(f"unknown relaxation '{relax}' (choose none or chgnet)")
    net = load_generator(model, data, weights, device)
    latent = latent_source(net, latent)  # recorded as what was drawn; a wrong name fails before any file is written
    sampler = sampler or DEFAULT_SAMPLER
    settings = {"model": model, "data": data, "n": n, "seed": seed, "sampler": sampler, "relax": relax,
                "latent": latent,
                "batch_size": batch_size, "weights": weights or data,
                "weights_meta": {k: net.meta.get(k) for k in ("data", "n_train", "train_steps")}}
    out = Path(out)
    _claim_folder(out, settings)
    atomic_write_text(out / "run.json", json.dumps({"settings": settings, "xtalforge": xtalforge.__version__,
                                                    "symprec": SYMPREC}, indent=2))
    n_batches = (n + batch_size - 1) // batch_size
    spec = {**settings, "device": device}
    _GENERATORS[_generator_key(spec)] = net  # the calling process reuses the model it loaded

    def done(b: int) -> None:
        if progress is not None:
            progress(min(n, (b + 1) * batch_size), n)

    rows = _write_batches(out, n_batches, functools.partial(_generated_batch, spec), done, workers)
    return _write_table(out / "generated.csv", rows, TABLE_COLUMNS)


#: generative models loaded in this process, by :func:`_generator_key` (a worker process loads its own once)
_GENERATORS: dict[tuple, object] = {}


def _generator_key(spec: dict) -> tuple:
    return spec["model"], spec["data"], spec["weights"], spec["device"]


def _generated_batch(spec: dict, b: int) -> list[tuple[Crystal, dict]]:
    """Batch ``b`` of the :func:`generate_to_folder` run with settings ``spec``: (crystal, table row) pairs."""
    from xtalforge.models.cdvae.sampler import sample_batch

    key = _generator_key(spec)
    if key not in _GENERATORS:
        _GENERATORS[key] = load_generator(*key)
    size = min(spec["batch_size"], spec["n"] - b * spec["batch_size"])
    crystals = sample_batch(_GENERATORS[key], size, spec["seed"], b, spec["sampler"], spec["latent"])
    if spec["relax"] == "chgnet":
        crystals = _relaxed(crystals)
    rows = describe(crystals)
    for k, row in enumerate(rows):
        index = b * spec["batch_size"] + k
        row.update(index=index, file=f"structures/{index:05d}.cif")
    return list(zip(crystals, rows))


def _write_batches(out: Path, n_batches: int, make_batch: Callable[[int], list[tuple[Crystal, dict]]],
                   done: Callable[[int], None], workers: int = 1) -> list[dict]:
    """Run the batches not yet finished in ``out`` (``make_batch(b)`` -> (crystal, row with its ``file``) pairs),
    writing each crystal's CIF and then the batch's table part, whose presence marks the batch finished. With
    ``workers`` > 1 (``make_batch`` picklable), that many processes make the batches. Returns the rows of every
    batch in order."""
    parts = out / "batches"
    parts.mkdir(exist_ok=True)
    (out / "structures").mkdir(exist_ok=True)
    missing = [b for b in range(n_batches) if not (parts / f"{b:05d}.jsonl").is_file()]
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(missing) > 1:
            from xtalforge.device import torch_process_pool

            pool = stack.enter_context(torch_process_pool(min(workers, len(missing))))
            batches = pool.map(make_batch, missing)  # in order, each written as soon as it and those before it are
        else:
            batches = map(make_batch, missing)
        for b in range(n_batches):
            if b in missing:  # the batches come in the order of ``missing``
                pairs = next(batches)
                for c, row in pairs:
                    atomic_write_text(out / row["file"], c.to_cif_string())
                atomic_write_text(parts / f"{b:05d}.jsonl", "".join(json.dumps(row) + "\n" for _, row in pairs))
            done(b)
    return [json.loads(line) for b in range(n_batches) for line in (parts / f"{b:05d}.jsonl").read_text().splitlines()]


def _write_table(table: Path, rows: list[dict], columns: tuple[str, ...]) -> Path:
    import pandas as pd

    atomic_write_text(table, pd.DataFrame(rows, columns=list(columns)).to_csv(index=False))
    return table


def optimize_to_folder(out: str | os.PathLike, data: str = "mp_20_biternary", prop: str = "formation_energy",
                       starts: list[Crystal] | None = None, n: int = 100, maximize: bool = False, steps: int = 5000,
                       lr: float = 1e-3, snapshots: int = 10, sampler: str | None = None, seed: int = 0,
                       weights: str | None = None, device: str = "cpu", batch_size: int = 25,
                       prior_weight: float | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """CDVAE's property optimisation into ``out``: each starting crystal is encoded, its latent follows ``steps``
    Adam steps (``lr``) down (or up, ``maximize``) the property head, and ``snapshots`` latents along the path are
    decoded (``prior_weight``: see :func:`~xtalforge.models.cdvae.optimize.optimize_latents`; default
    :data:`PRIOR_WEIGHT`, 0 is the paper's protocol). ``starts`` defaults
    to ``n`` random test crystals of ``data`` (drawn with ``seed``, the paper's
    protocol). Writes ``structures/SSSSS_KK.cif``, ``optimized.csv`` (start, snapshot, step, the CDVAE head's value
    ``latent_property`` and the :func:`describe` columns, whose ``formation_energy`` is the independent DAO-P
    prediction) and ``run.json``; resumable in batches of ``batch_size`` starting crystals. Returns the table path.
    """
    import torch

    import xtalforge
    from xtalforge.data.protocol import get_benchmark, load_split, sample_indices
    from xtalforge.models.cdvae.optimize import optimize_latents
    from xtalforge.models.cdvae.sampler import DEFAULT_SAMPLER, decode

    prior_weight = PRIOR_WEIGHT if prior_weight is None else float(prior_weight)
    if not 1 <= snapshots <= steps:
        raise XtalforgeError(f"need 1 <= snapshots <= steps, got {snapshots} snapshots of {steps} steps")
    net = load_generator("cdvae", data, weights, device)
    column = _optimised_column(net, prop, weights or data)
    if starts is None:
        _check_n(n)
        test = load_split(data, get_benchmark(data).test_split)
        picked = sample_indices(len(test), n, seed)
        starts, origin = list(test.subset(picked)), f"{data} test rows {picked.tolist()}"
    else:
        origin = [c.formula for c in starts]
    if not starts:
        raise XtalforgeError("no starting crystals to optimise")
    too_big = [c.formula for c in starts if c.num_atoms > net.cfg.max_atoms]
    if too_big:
        raise XtalforgeError(f"{too_big[0]} has more atoms than the CDVAE weights' limit of {net.cfg.max_atoms}")
    sampler = sampler or DEFAULT_SAMPLER
    settings = {"model": "cdvae", "data": data, "property": column, "maximize": maximize, "steps": steps, "lr": lr,
                "prior_weight": prior_weight, "snapshots": snapshots, "sampler": sampler, "seed": seed,
                "batch_size": batch_size, "weights": weights or data, "starts": origin,
                "weights_meta": {k: net.meta.get(k) for k in ("data", "n_train", "train_steps")}}
    out = Path(out)
    _claim_folder(out, settings)
    atomic_write_text(out / "run.json", json.dumps({"settings": settings, "xtalforge": xtalforge.__version__,
                                                    "symprec": SYMPREC}, indent=2))
    path_steps = np.linspace(steps / snapshots, steps, snapshots).round().astype(int)
    n_batches = (len(starts) + batch_size - 1) // batch_size

    def make_batch(b: int) -> list[tuple[Crystal, dict]]:
        first = b * batch_size
        chunk = starts[first:first + batch_size]
        path = optimize_latents(net, chunk, steps, lr, snapshots, maximize, prior_weight)  # (S, M, D), deterministic
        flat_path = path.reshape(-1, path.shape[-1])  # snapshot-major: row k * M + i is start i at snapshot k
        values = net.predict_property(flat_path).detach().cpu().numpy()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        crystals = decode(net, flat_path, sampler, gen)
        pairs = []
        for flat, (c, row) in enumerate(zip(crystals, describe(crystals))):
            k, i = divmod(flat, len(chunk))
            start = first + i
            row.update(start=start, start_formula=chunk[i].formula, snapshot=k + 1, step=int(path_steps[k]),
                       latent_property=round(float(values[flat]), 4), file=f"structures/{start:05d}_{k + 1:02d}.cif")
            pairs.append((c, row))
        return sorted(pairs, key=lambda p: (p[1]["start"], p[1]["snapshot"]))

    def done(b: int) -> None:
        if progress is not None:
            progress(min(len(starts), (b + 1) * batch_size), len(starts))

    rows = _write_batches(out, n_batches, make_batch, done)
    return _write_table(out / "optimized.csv", rows, OPTIMIZE_COLUMNS)


def _optimised_column(net, prop: str, weights: str) -> str:
    """The label column of the CDVAE property head, checked against the asked property (a :data:`PROPERTIES` name
    or the column itself)."""
    from xtalforge.properties import PROPERTIES

    column = net.stats.get("property")
    label = PROPERTIES[prop].label if prop in PROPERTIES else prop
    if not column:
        raise XtalforgeError(f"the CDVAE weights '{weights}' were trained without a property head")
    if label != column:
        names = [name for name, spec in PROPERTIES.items() if spec.label == column] or [column]
        raise XtalforgeError(f"the CDVAE weights '{weights}' optimise {names[0]}, not '{prop}'")
    return column


def read_generated(folder: str | os.PathLike, table: str = "generated.csv") -> tuple[list[Crystal], dict]:
    """The crystals of a finished :func:`generate_to_folder` run (``table="optimized.csv"``: of
    :func:`optimize_to_folder`), in the table's order, and its ``run.json``."""
    import pandas as pd

    folder = Path(folder)
    table, run = folder / table, folder / "run.json"
    if not table.is_file() or not run.is_file():
        raise XtalforgeError(f"{folder} holds no finished generation run ({table.name} and run.json)")
    from pymatgen.core import Structure

    frame = pd.read_csv(table)
    # pymatgen directly: Crystal.read refuses overlapping atoms, which invalid samples have and the metrics count
    crystals = [Crystal.from_structure(Structure.from_file(folder / f)) for f in frame["file"]]
    return crystals, json.loads(run.read_text())


def evaluate_generation(folder: str | os.PathLike, reference: str, workers: int = 1,
                        n_property_samples: int = 1000, seed: int = 0, stability: bool = False) -> dict:
    """The de novo metrics of a finished run against benchmark ``reference`` (its test split; novelty against its
    training split), written to ``folder/metrics.json`` and returned.

    Validity, COV-R / COV-P (CDVAE's cut-offs, :data:`~xtalforge.evaluation.denovo.COV_CUTOFFS`), Wasserstein
    distances of density, number of elements and DAO-P formation energy (the same predictor on both sides; valid
    samples against the test crystals), uniqueness and novelty (StructureMatcher) and the share above P1. With
    ``stability``, also the CHGNet stability proxy and the share unique, novel and stable (a S.U.N. proxy).
    """
    import time

    from scipy.stats import wasserstein_distance

    from xtalforge.data.protocol import get_benchmark, load_split, training_set
    from xtalforge.evaluation.denovo import (
        COV_CUTOFFS,
        cached_fingerprints,
        evaluate_denovo,
        share_above_p1,
        smact_validity,
        stability_proxy,
        structure_validity,
        uniqueness_novelty,
    )
    from xtalforge.properties import load_property_model

    bench = get_benchmark(reference)
    crystals, run = read_generated(folder)
    t0 = time.perf_counter()
    test_data = load_split(reference, bench.test_split)
    test = list(test_data)
    struct_cut, comp_cut = COV_CUTOFFS[reference]
    metrics = evaluate_denovo(crystals, test, struct_cut, comp_cut, n_property_samples, seed, workers,
                              reference_fps=cached_fingerprints(test_data, workers))
    valid = [c for c in crystals if structure_validity(c) and smact_validity(c.numbers)]
    if len(valid) > n_property_samples:
        pick = np.sort(np.random.default_rng(seed).choice(len(valid), n_property_samples, replace=False))
        valid = [valid[i] for i in pick]
    energy = load_property_model("formation_energy")
    metrics["wdist_formation_energy"] = (float(wasserstein_distance(energy.predict(valid), energy.predict(test)))
                                         if valid else None)
    training = list(training_set(reference))
    novelty = uniqueness_novelty(crystals, training, workers)
    metrics.update({k: v for k, v in novelty.items() if not k.endswith("_flags")})
    if stability:
        stable = stability_proxy(crystals, training, workers=workers)
        metrics.update({k: v for k, v in stable.items() if not k.endswith("_flags")})
        sun = novelty["unique_flags"] & novelty["novel_flags"] & stable["stable_flags"]
        metrics["sun_proxy"] = 100.0 * sun.sum() / max(1, len(sun))
    metrics["above_p1"] = share_above_p1(crystals, SYMPREC)
    metrics["reference_above_p1"] = share_above_p1(test, SYMPREC)
    metrics["settings"].update(reference=reference, symprec=SYMPREC, generation=run["settings"],
                               novelty_against=f"training_set('{reference}')", matcher="pymatgen defaults")
    metrics["seconds"] = time.perf_counter() - t0
    atomic_write_text(Path(folder) / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise XtalforgeError(f"the number of structures must be a whole number >= 1, got {n}")


def _claim_folder(out: Path, settings: dict) -> None:
    """Refuse a folder of another run (other settings) or with files a generation run does not write."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise XtalforgeError(f"{out} exists and is not a folder")
    own = {"run.json", "generated.csv", "optimized.csv", "batches", "structures", "metrics.json"}
    foreign = sorted(f.name for f in out.iterdir() if f.name not in own)
    if foreign:
        raise XtalforgeError(f"{out} holds files a generation run did not write ({', '.join(foreign[:3])}); "
                             "choose another --out")
    run = out / "run.json"
    if run.is_file():
        before = json.loads(run.read_text())["settings"]
        changed = [k for k in settings if k != "weights_meta" and before.get(k) != settings[k]]
        if changed:
            raise XtalforgeError(f"{out} holds another run ({', '.join(f'{k}={before.get(k)}' for k in changed)}); "
                                 "use the same settings to resume or choose another --out")
    elif any(out.iterdir()):
        shutil.rmtree(out / "batches", ignore_errors=True)  # parts of a run killed before run.json: redo


def _relaxed(crystals: list[Crystal]) -> list[Crystal]:
    from xtalforge.relax.chgnet import relax

    out = []
    for c in crystals:
        try:
            out.append(relax(c, steps=200).crystal)
        except XtalforgeError:  # a collapsed sample stays as generated (its validity column says so)
            out.append(c)
    return out
