"""De novo generation metrics with CDVAE / DiffCSP definitions (reference §5).

* structural validity: every periodic interatomic distance at least 0.5 Angstrom (and cell volume >= 0.1 A^3);
* compositional validity: SMACT charge neutrality plus the Pauling electronegativity test, pure elements and
  all-metal alloys valid (SMACT's ``smact_validity`` with the original 2014 oxidation-state list that CDVAE used);
* COV-R / COV-P: a reference crystal is recalled if some generated crystal is within ``struct_cutoff`` in structure
  fingerprint and some generated crystal within ``comp_cutoff`` in normalised composition fingerprint (CDVAE takes
  the two minima separately); precision symmetrically over generated crystals, divided by all generated crystals;
* Wasserstein distances (scipy) of density (g/cm^3) and number of distinct elements, valid samples against the
  reference.

The fingerprints are in :mod:`xtalforge.evaluation.fingerprints`; its docstring says how they differ from matminer's
(the composition cut-off is not on CDVAE's scale).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from xtalforge.crystal import Crystal
from xtalforge.evaluation.matching import structure_is_valid


def structure_validity(crystal: Crystal, cutoff: float = 0.5) -> bool:
    """True if all periodic pair distances are >= ``cutoff`` Angstrom (pymatgen's distance matrix) and the cell
    volume is >= 0.1 A^3."""
    return structure_is_valid(crystal.lattice, crystal.frac_coords, cutoff)


def smact_validity(
    numbers: Sequence[int] | np.ndarray,
    use_pauling_test: bool = True,
    include_alloys: bool = True,
    oxidation_states_set: str = "smact14",
) -> bool:
    """SMACT charge-neutrality + electronegativity screen of a composition given as atomic numbers.

    ``oxidation_states_set="smact14"`` is the list SMACT shipped when CDVAE defined the metric; newer SMACT
    defaults to ICSD-2024 states ("icsd24"), which changes some verdicts.
    """
    from pymatgen.core import Composition, Element
    from smact.screening import smact_validity as _smact_validity

    counts = Counter(int(z) for z in numbers)
    composition = Composition({Element.from_Z(z): c for z, c in counts.items()})
    try:
        verdict = _smact_validity(composition, use_pauling_test=use_pauling_test, include_alloys=include_alloys,
                                  oxidation_states_set=oxidation_states_set)
    except TypeError:  # SMACT before the oxidation-state sets: its only list was the 2014 one
        verdict = _smact_validity(composition, use_pauling_test=use_pauling_test, include_alloys=include_alloys)
    return bool(verdict)


def density(crystal: Crystal) -> float:
    """Mass density in g/cm^3."""
    return float(crystal.to_structure().density)


def _fingerprints(crystal: Crystal) -> tuple[np.ndarray | None, np.ndarray]:
    from xtalforge.evaluation.fingerprints import composition_fingerprint, structure_fingerprint

    try:
        struct_fp = structure_fingerprint(crystal)
    except Exception:  # CDVAE counts a crystal whose fingerprint cannot be built as invalid
        struct_fp = None
    return struct_fp, composition_fingerprint(crystal.numbers)


def fingerprints(crystals: Sequence[Crystal], workers: int = 1) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """(structure, composition) fingerprints of each crystal (structure None where CrystalNN failed)."""
    if workers > 1 and len(crystals) > 8:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_fingerprints, crystals, chunksize=8))
    return [_fingerprints(c) for c in crystals]


def coverage(
    gen_struct: np.ndarray,
    gen_comp: np.ndarray,
    ref_struct: np.ndarray,
    ref_comp: np.ndarray,
    struct_cutoff: float,
    comp_cutoff: float,
    n_generated: int | None = None,
) -> dict[str, float]:
    """COV-R and COV-P in percent (CDVAE's definition).

    Args:
        gen_struct, gen_comp: (G, Ds), (G, Dc) fingerprints of the generated crystals that have them (composition
            fingerprints already normalised).
        ref_struct, ref_comp: (R, Ds), (R, Dc) reference fingerprints (same normalisation).
        struct_cutoff, comp_cutoff: distance thresholds (CDVAE: 0.4 / 10 MP-20, 0.2 / 4 Carbon-24 and Perov-5).
        n_generated: denominator of COV-P (all generated crystals, including those without fingerprints).
    """
    from scipy.spatial.distance import cdist

    n_generated = len(gen_struct) if n_generated is None else n_generated
    if len(gen_struct) == 0 or len(ref_struct) == 0:
        return {"cov_recall": 0.0, "cov_precision": 0.0}
    struct_d = cdist(gen_struct, ref_struct)
    comp_d = cdist(gen_comp, ref_comp)
    recall = np.logical_and(struct_d.min(axis=0) <= struct_cutoff, comp_d.min(axis=0) <= comp_cutoff)
    precision = np.logical_and(struct_d.min(axis=1) <= struct_cutoff, comp_d.min(axis=1) <= comp_cutoff)
    return {
        "cov_recall": 100.0 * float(recall.mean()),
        "cov_precision": 100.0 * float(precision.sum()) / max(1, n_generated),
    }


def evaluate_denovo(
    generated: Sequence[Crystal],
    reference: Sequence[Crystal],
    struct_cutoff: float = 0.4,
    comp_cutoff: float = 10.0,
    n_property_samples: int = 1000,
    seed: int = 0,
    workers: int = 1,
    reference_fps: list[tuple[np.ndarray | None, np.ndarray]] | None = None,
) -> dict:
    """Validity, coverage and property-distribution distances of generated crystals against a reference set.

    Args:
        generated: sampled crystals (CDVAE uses 10,000).
        reference: test-set crystals.
        struct_cutoff, comp_cutoff: coverage thresholds (defaults: CDVAE's MP-20 values; see :func:`coverage`).
        n_property_samples: valid generated crystals drawn (seeded) for the Wasserstein distances (CDVAE: 1,000);
            all valid ones are used if there are fewer, and the number used is reported.
        workers: processes for the fingerprints (CrystalNN costs tens of ms per site).
        reference_fps: the reference's :func:`fingerprints`, if already computed (see :func:`cached_fingerprints`).

    Returns percentages for validity and coverage, Wasserstein distances (density in g/cm^3, element counts), and
    the counts behind them.
    """
    from scipy.stats import wasserstein_distance

    comp_valid = np.array([smact_validity(c.numbers) for c in generated], dtype=bool)
    struct_valid = np.array([structure_validity(c) for c in generated], dtype=bool)
    gen_fps = fingerprints(generated, workers)
    ref_fps = fingerprints(reference, workers) if reference_fps is None else reference_fps
    has_fp = np.array([s is not None for s, _ in gen_fps], dtype=bool)
    valid = comp_valid & struct_valid & has_fp

    ref_ok = [(s, c) for s, c in ref_fps if s is not None]
    ref_struct = np.array([s for s, _ in ref_ok])
    ref_comp = np.array([c for _, c in ref_ok])
    # composition fingerprints are standardised with the reference statistics (CDVAE: fixed MP-20 training stats)
    mean = ref_comp.mean(axis=0)
    std = ref_comp.std(axis=0)
    std[std == 0] = 1.0
    gen_struct = np.array([s for s, _ in gen_fps if s is not None])
    gen_comp = np.array([c for s, c in gen_fps if s is not None])
    cov = coverage(
        gen_struct, (gen_comp - mean) / std if len(gen_comp) else gen_comp, ref_struct, (ref_comp - mean) / std,
        struct_cutoff, comp_cutoff, n_generated=len(generated),
    )

    valid_idx = np.nonzero(valid)[0]
    if len(valid_idx) > n_property_samples:
        valid_idx = np.sort(np.random.default_rng(seed).choice(valid_idx, n_property_samples, replace=False))
    samples = [generated[i] for i in valid_idx]
    wdist_density = wdist_elements = None
    if samples:
        wdist_density = float(wasserstein_distance([density(c) for c in samples], [density(c) for c in reference]))
        wdist_elements = float(wasserstein_distance(
            [len(set(c.numbers.tolist())) for c in samples], [len(set(c.numbers.tolist())) for c in reference]
        ))
    n = max(1, len(generated))
    return {
        "n_generated": len(generated),
        "n_reference": len(reference),
        "comp_valid": 100.0 * comp_valid.sum() / n,
        "struct_valid": 100.0 * struct_valid.sum() / n,
        "valid": 100.0 * valid.sum() / n,
        **cov,
        "wdist_density": wdist_density,
        "wdist_num_elems": wdist_elements,
        "n_property_samples": len(samples),
        "settings": {"struct_cutoff": struct_cutoff, "comp_cutoff": comp_cutoff, "distance_cutoff_A": 0.5,
                     "smact_oxidation_states": "smact14", "seed": seed},
    }


def cached_fingerprints(data, workers: int = 1, chunk: int = 250) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """:func:`fingerprints` of a CrystalDataset, cached on disk by its rows' hash (a 5,000-crystal test split costs
    about an hour on one core). Computed in chunks of ``chunk`` crystals, each saved as it finishes, with progress,
    so an interrupted computation resumes where it stopped."""
    from tqdm import tqdm

    from xtalforge.crystal import atomic_save_npz
    from xtalforge.data.dataset import cache_dir

    key = data.rows_sha256()[:16]
    path = cache_dir() / f"fingerprints_{key}.npz"
    if not path.is_file():
        parts = cache_dir() / f"fingerprints_{key}.parts"
        parts.mkdir(parents=True, exist_ok=True)
        starts = range(0, len(data), chunk)
        for start in tqdm(starts, desc="reference fingerprints", unit="chunk", disable=None):
            part = parts / f"{start:07d}.npz"
            if not part.is_file():
                fps = fingerprints([data[i] for i in range(start, min(len(data), start + chunk))], workers)
                atomic_save_npz(part, struct=np.array([s for s, _ in fps if s is not None]),
                                ok=np.array([s is not None for s, _ in fps]), comp=np.array([c for _, c in fps]))
        loaded = [np.load(parts / f"{start:07d}.npz") for start in starts]
        ok = np.concatenate([z["ok"] for z in loaded])
        found = [z["struct"] for z in loaded if len(z["struct"])]  # fingerprints of the crystals CrystalNN read
        struct = np.zeros((len(ok), found[0].shape[1] if found else 1))  # zeros where it failed (``ok`` False)
        if found:
            struct[ok] = np.concatenate(found)
        atomic_save_npz(path, struct=struct, ok=ok, comp=np.concatenate([z["comp"] for z in loaded]))
        shutil.rmtree(parts, ignore_errors=True)
    z = np.load(path)
    return [(s if read else None, c) for s, read, c in zip(z["struct"], z["ok"], z["comp"])]


#: CDVAE's coverage cut-offs (structure fingerprint, composition fingerprint) per benchmark.
COV_CUTOFFS = {"mp_20_biternary": (0.4, 10.0), "mpts_52": (0.4, 10.0), "carbon_24": (0.2, 4.0),
               "perov_5": (0.2, 4.0)}


#: pymatgen's default StructureMatcher tolerances, used for uniqueness and novelty
NOVELTY_LTOL, NOVELTY_STOL, NOVELTY_ANGLE_TOL = 0.2, 0.3, 5.0


def _reduced(structure):
    """What StructureMatcher compares (Niggli, then primitive cell) and its bucket key (reduced formula, sites)."""
    s = structure.get_reduced_structure(reduction_algo="niggli").get_primitive_structure()
    return (s.composition.reduced_formula, len(s)), s


def _lattice_shapes(structures) -> np.ndarray:
    """(n, 7) per structure, volume-free (lengths / V^(1/3)): its successive minima (sorted Niggli lengths), its
    own cell's sorted lengths, and the factor of :func:`_can_fit`'s lower bound for a match onto its cell."""
    out = np.empty((len(structures), 7))
    # |cos(t + d) - cos(t)| <= |d|: a spectral-norm bound on how far the matcher lets the cell's angle cosines move
    drift = np.sqrt(6.0) * np.deg2rad(NOVELTY_ANGLE_TOL)
    for i, s in enumerate(structures):
        scale = s.volume ** (1.0 / 3.0)
        alpha, beta, gamma = np.deg2rad(s.lattice.angles)
        cosines = np.array([[1.0, np.cos(gamma), np.cos(beta)], [np.cos(gamma), 1.0, np.cos(alpha)],
                            [np.cos(beta), np.cos(alpha), 1.0]])
        low, high = np.linalg.eigvalsh(cosines)[[0, -1]]
        out[i, :3] = np.sort(s.lattice.get_niggli_reduced_lattice().abc) / scale
        out[i, 3:6] = np.sort(s.lattice.abc) / scale
        out[i, 6] = np.sqrt(max(0.0, low - drift) / ((1.0 + NOVELTY_LTOL) ** 2 * high))
    return out


def _can_fit(shape_a: np.ndarray, shape_b: np.ndarray) -> np.ndarray:
    """(n, m) False where ``StructureMatcher.fit(a, b)`` (same sites, no supercell, volumes scaled) cannot be True,
    from :func:`_lattice_shapes` rows.

    The matcher needs a basis v of ``a``'s lattice within a factor ``1 + ltol`` of the lengths of ``b``'s cell and
    within ``angle_tol`` of its angles. Upper bound: the k-th successive minimum of ``a`` is below ``1 + ltol``
    times the k-th shortest length of ``b``. Lower bound: for every integer x, |sum x_j v_j| >= c |sum x_j b_j| with
    c^2 = (lambda_min(C_b) - drift) / ((1 + ltol)^2 lambda_max(C_b)) (C_b: the cosine matrix of ``b``'s angles), so
    the minima of ``a`` are at least c times those of ``b``. Both are necessary conditions: skipping the pairs they
    rule out changes no answer."""
    margin = 1.0 + 1e-6  # covers pymatgen's Niggli tolerance and rounding
    minima_a, minima_b = shape_a[:, None, :3], shape_b[None, :, :3]
    below = np.all(minima_a < margin * (1.0 + NOVELTY_LTOL) * shape_b[None, :, 3:6], axis=2)
    above = np.all(minima_a * margin > shape_b[None, :, 6:7] * minima_b, axis=2)
    return below & above


def _matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(ltol=NOVELTY_LTOL, stol=NOVELTY_STOL, angle_tol=NOVELTY_ANGLE_TOL)


def _lattices_map(a, b) -> bool:
    """True if the first step of ``StructureMatcher.fit(a, b, skip_structure_reduction=True)`` succeeds: after
    scaling both cells to a common volume as the matcher does, ``a``'s lattice has a basis within its length and
    angle tolerances of ``b``'s cell (:func:`~xtalforge.evaluation.matching.lattice_mappings`, pymatgen's search
    without the structure copies ``fit`` makes, most of its cost). Where it fails, ``fit`` is False."""
    from xtalforge.evaluation.matching import lattice_mappings

    ratio = (b.volume / a.volume) ** (1.0 / 6.0)
    return len(lattice_mappings(a.lattice.matrix * ratio, b.lattice.matrix / ratio, NOVELTY_LTOL,
                                NOVELTY_ANGLE_TOL)) > 0


def _matches_task(task: tuple) -> list[list[int]]:
    """For each row structure, the columns ``StructureMatcher.fit(row, column)`` is True for. ``"unique"``: all
    matching columns before the row's own place ``first + r`` in the same bucket; ``"novel"``: the first match only.
    The lattice checks (:func:`_can_fit`, :func:`_lattices_map`) skip pairs the matcher would reject."""
    kind, rows, cols, row_shapes, col_shapes, first = task
    matcher = _matcher()
    possible = _can_fit(row_shapes, col_shapes)
    out = []
    for r, s in enumerate(rows):
        found: list[int] = []
        for j in np.nonzero(possible[r, : first + r if kind == "unique" else len(cols)])[0]:
            if _lattices_map(s, cols[j]) and matcher.fit(s, cols[j], skip_structure_reduction=True):
                found.append(int(j))
                if kind == "novel":
                    break
        out.append(found)
    return out


def uniqueness_novelty(generated: Sequence[Crystal], training: Sequence[Crystal], workers: int = 1,
                       chunk: int = 100) -> dict:
    """Share (percent) of generated crystals that are unique (the first of each group of samples StructureMatcher
    calls the same) and novel (matching no training crystal), with pymatgen's default StructureMatcher tolerances
    (ltol 0.2, stol 0.3, angle 5).

    Each structure is reduced once, as the matcher reduces it (Niggli, then primitive), and compared only with those
    of the same reduced formula and the same number of reduced sites, and only where the lattices allow a match
    (:func:`_can_fit`, then :func:`_lattices_map`): the matcher (no supercells) would answer False for every pair
    skipped, so the result is that of comparing all pairs, at a fraction of the cost (all Carbon-24 samples share
    one formula). The pairs are checked in chunks of ``chunk`` samples shared by ``workers`` processes; a sample is
    then unique (greedily, in sample order) if no earlier unique sample matches it.
    """
    from collections import defaultdict

    structs = [_reduced(c.to_structure()) for c in generated]
    wanted = {formula for (formula, _), _ in structs}
    by_key: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, (key, _) in enumerate(structs):
        by_key[key].append(i)
    train_by_key: dict[tuple[str, int], list] = defaultdict(list)
    for c in training:
        if (t := c.to_structure()).composition.reduced_formula in wanted:  # only a sampled formula can match
            key, s = _reduced(t)
            train_by_key[key].append(s)

    tasks, places = [], []  # places: (kind, bucket key, first row) of each task
    for key, idx in by_key.items():
        bucket = [structs[i][1] for i in idx]
        shapes = _lattice_shapes(bucket)
        train = train_by_key.get(key, [])
        train_shapes = _lattice_shapes(train) if train else np.zeros((0, 7))
        for first in range(0, len(idx), chunk):
            last = min(len(idx), first + chunk)
            tasks.append(("unique", bucket[first:last], bucket[:last], shapes[first:last], shapes[:last], first))
            places.append(("unique", key, first))
            if train:
                tasks.append(("novel", bucket[first:last], train, shapes[first:last], train_shapes, 0))
                places.append(("novel", key, first))
    cost = [len(t[1]) * len(t[2]) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda k: -cost[k])  # the largest first, so that the workers end together
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            found = dict(zip(order, pool.map(_matches_task, [tasks[k] for k in order])))
    else:
        found = {k: _matches_task(tasks[k]) for k in order}

    earlier: dict[tuple, list[list[int]]] = defaultdict(list)  # per bucket: the earlier samples each one matches
    novel = np.ones(len(structs), dtype=bool)
    for k, (kind, key, first) in enumerate(places):  # each bucket's uniqueness chunks were made in row order
        if kind == "unique":
            earlier[key] += found[k]
        else:
            for r, matches in enumerate(found[k]):
                novel[by_key[key][first + r]] = not matches
    unique = np.zeros(len(structs), dtype=bool)
    for key, idx in by_key.items():
        flags = np.zeros(len(idx), dtype=bool)
        for r, matches in enumerate(earlier[key]):
            flags[r] = not any(flags[j] for j in matches)
        unique[idx] = flags
    n = max(1, len(structs))
    return {"unique": 100.0 * unique.sum() / n, "novel": 100.0 * novel.sum() / n,
            "unique_and_novel": 100.0 * (unique & novel).sum() / n, "unique_flags": unique, "novel_flags": novel}


def spacegroup_number(crystal: Crystal, symprec: float = 0.1) -> int | None:
    """The space group number spglib finds at ``symprec`` Angstrom, or None where it gives up (degenerate cells)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return int(SpacegroupAnalyzer(crystal.to_structure(), symprec=symprec).get_space_group_number())
    except Exception:  # spglib fails on degenerate cells: no group rather than a wrong one
        return None


def share_above_p1(crystals: Sequence[Crystal], symprec: float = 0.1) -> float:
    """Percent of crystals in which spglib (at ``symprec`` Angstrom) finds a space group above P1 (a cell spglib
    gives up on counts as P1)."""
    above = sum((spacegroup_number(c, symprec) or 1) > 1 for c in crystals)
    return 100.0 * above / max(1, len(crystals))


def stability_proxy(generated: Sequence[Crystal], training: Sequence[Crystal], threshold: float = 0.1,
                    threads: int | None = None, workers: int = 1) -> dict:
    """A S.U.N.-style stability proxy (not a convex hull): a sample counts as stable when its CHGNet static energy
    per atom is within ``threshold`` eV/atom of the lowest CHGNet energy found for its reduced formula among the
    training crystals and the samples. Returns the percentage and the per-sample flags (NaN energies are unstable).
    ``workers``: CHGNet processes (:func:`~xtalforge.relax.chgnet.chgnet_energies`)."""
    from xtalforge.relax.chgnet import chgnet_energies

    formulas = [c.to_structure().composition.reduced_formula for c in generated]
    wanted = set(formulas)
    same = [(c, f) for c in training if (f := c.to_structure().composition.reduced_formula) in wanted]
    # one call, so that the worker processes start once
    energies = chgnet_energies([c for c, _ in same] + list(generated), threads=threads, desc="CHGNet",
                               workers=workers)
    e_train, e_gen = energies[: len(same)], energies[len(same):]
    lowest: dict[str, float] = {}
    for f, e in zip([f for _, f in same] + formulas, np.concatenate([e_train, e_gen])):
        if np.isfinite(e):
            lowest[f] = min(lowest.get(f, np.inf), float(e))
    stable = np.array([np.isfinite(e) and e - lowest[f] <= threshold for f, e in zip(formulas, e_gen)], dtype=bool)
    return {"stable": 100.0 * stable.sum() / max(1, len(stable)), "stable_flags": stable,
            "training_crystals_compared": len(same), "threshold_ev_per_atom": threshold}
