"""Element-level chemistry for template substitution: substitution likelihoods and atomic volumes.

Substitution: Hautier et al.'s data-mined ionic substitution model (pymatgen ``SubstitutionProbability``,
Inorg. Chem. 50, 656 (2011)) gives, per pair of ions, a weight ``lambda`` with ``P(ion a and ion b substitute)
proportional to exp(lambda)``. A target element ``a`` on a template element ``b``'s site scores the largest
``lambda`` over their ion pairs of the same charge sign (the oxidation states are not known before the structure
is). Pairs the table never observed (and elements it lacks) get a regression of the observed ``lambda`` on
electronegativity, Pettifor (Mendeleev) number and covalent radius differences: the same scale, from descriptors
instead of data. ``lambda`` beat the conditional probability ``P(a | b)`` (which also rewards rare template
elements) in leave-one-out validation (bench/tune_template_weights.py). The 104 x 104 matrix is cached on disk
because the table takes seconds to load.

Volume: cell volume = sum of per-element atomic volumes, fitted by least squares on a library with a ridge pull
towards covalent-radius volumes (which alone serve elements the library lacks).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from xtalforge.data.dataset import cache_dir

log = logging.getLogger(__name__)
NUM_ELEMENTS = 104  # tables are indexed by atomic number 0..103 (row 0 unused)
_CACHE_VERSION = 2


@lru_cache(maxsize=1)
def element_descriptors() -> dict[str, np.ndarray]:
    """(104,) arrays indexed by atomic number: ``electronegativity`` (Pauling; noble gases get the mean of their
    period neighbours), ``mendeleev`` (Pettifor's chemical scale), ``covalent_radius`` (Angstrom)."""
    import warnings

    from ase.data import covalent_radii
    from pymatgen.core.periodic_table import Element

    x = np.full(NUM_ELEMENTS, np.nan)
    mend = np.full(NUM_ELEMENTS, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for elements without a Pauling electronegativity
        for el in Element:
            if el.Z < NUM_ELEMENTS:
                x[el.Z] = el.X
                mend[el.Z] = el.mendeleev_no if el.mendeleev_no is not None else np.nan
    x = _fill_nan(x)
    mend = _fill_nan(mend)
    return {
        "electronegativity": x,
        "mendeleev": mend,
        "covalent_radius": np.asarray(covalent_radii[:NUM_ELEMENTS], dtype=np.float64),
    }


def _fill_nan(values: np.ndarray) -> np.ndarray:
    """Fill missing entries by interpolation along the atomic number."""
    z = np.arange(len(values))
    ok = np.isfinite(values)
    out = values.copy()
    out[~ok] = np.interp(z[~ok], z[ok], values[ok])
    return out


@lru_cache(maxsize=1)
def substitution_log_prob() -> np.ndarray:
    """(104, 104) symmetric ``S[a, b]``: log-odds (natural log, up to a constant) that element ``a`` takes the site of
    element ``b``.

    Observed pairs come from Hautier's table; the rest from the descriptor regression (see the module docstring).
    """
    from importlib.metadata import version

    path = cache_dir() / f"substitution_log_prob.v{_CACHE_VERSION}.pmg{version('pymatgen')}.npy"
    if path.is_file():
        try:
            matrix = np.load(path)
            if matrix.shape == (NUM_ELEMENTS, NUM_ELEMENTS):
                return matrix
        except Exception:  # a truncated cache file is rebuilt
            log.warning("ignoring unreadable cache %s", path)
    observed = _hautier_log_prob()
    matrix = _complete_with_descriptors(observed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, matrix)
    tmp.replace(path)
    return matrix


def _hautier_log_prob() -> np.ndarray:
    """Element-level substitution log-odds from pymatgen's table: best ``lambda`` over same-sign ion pairs (NaN:
    never observed)."""
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

    table = SubstitutionProbability()
    species = [s for s in table.species if s.Z < NUM_ELEMENTS]
    out = np.full((NUM_ELEMENTS, NUM_ELEMENTS), np.nan)
    for a in species:
        for b in species:
            if np.sign(a.oxi_state) != np.sign(b.oxi_state):
                continue
            lam = table.get_lambda(a, b)
            if lam == table.alpha:  # never observed: no evidence either way
                continue
            if not lam <= out[a.Z, b.Z]:  # keeps the max and replaces NaN
                out[a.Z, b.Z] = lam
    return out


def _pair_features(idx_a: np.ndarray, idx_b: np.ndarray) -> np.ndarray:
    d = element_descriptors()
    x, m, r = d["electronegativity"], d["mendeleev"], d["covalent_radius"]
    return np.stack(
        [
            np.ones(len(idx_a)),
            np.abs(x[idx_a] - x[idx_b]),
            np.abs(m[idx_a] - m[idx_b]) / 10.0,
            np.abs(r[idx_a] - r[idx_b]),
            (idx_a == idx_b).astype(np.float64),
        ],
        axis=1,
    )


def _complete_with_descriptors(observed: np.ndarray) -> np.ndarray:
    """Fill unobserved pairs with a least-squares fit of the observed log-odds on descriptor differences."""
    a, b = np.nonzero(np.isfinite(observed))
    coef, *_ = np.linalg.lstsq(_pair_features(a, b), observed[a, b], rcond=None)
    grid_a, grid_b = np.meshgrid(np.arange(NUM_ELEMENTS), np.arange(NUM_ELEMENTS), indexing="ij")
    predicted = (_pair_features(grid_a.ravel(), grid_b.ravel()) @ coef).reshape(NUM_ELEMENTS, NUM_ELEMENTS)
    # absence from a table mined from thousands of compounds is weak evidence against a pair: cap its prediction at
    # the lower quartile of observed pairs
    floor = np.nanmin(observed)
    predicted = np.minimum(predicted, np.nanpercentile(observed, 25.0))
    predicted = np.maximum(predicted, floor - 1.0)
    matrix = np.where(np.isfinite(observed), observed, predicted)
    # an element replacing itself is never less likely than any substitution of it
    diag = np.arange(NUM_ELEMENTS)
    matrix[diag, diag] = np.maximum(matrix[diag, diag], matrix.max(axis=0))
    matrix[0, :] = matrix[:, 0] = floor - 1.0
    return matrix


#: Noble gases form van der Waals solids: their covalent radii (He 0.28 A) would predict cells ~20x too small.
NOBLE_GAS_VDW_RADII = {2: 1.40, 10: 1.54, 18: 1.88, 36: 2.02, 54: 2.16, 86: 2.20}


@lru_cache(maxsize=1)
def covalent_volumes() -> np.ndarray:
    """(104,) sphere volumes 4/3 pi r^3 from covalent radii (van der Waals radii for noble gases), Angstrom^3.
    Read-only: one array serves every caller (the ranker asks for it per candidate)."""
    r = element_descriptors()["covalent_radius"].copy()
    for z, radius in NOBLE_GAS_VDW_RADII.items():
        r[z] = radius / 2 ** (1 / 3)  # the fit rescales all priors by ~2x; this keeps vdW solids near their volume
    volumes = 4.0 / 3.0 * np.pi * r**3
    volumes.setflags(write=False)
    return volumes


def fit_atomic_volumes(
    lattices: np.ndarray, numbers: np.ndarray, offsets: np.ndarray, ridge: float = 1.0
) -> np.ndarray:
    """Per-element atomic volumes (104,) in Angstrom^3 such that cell volume ~ sum of the atoms' volumes.

    Least squares over crystals on volume per atom, with a ridge pull towards covalent-sphere volumes scaled by their
    median ratio to the data (``ridge`` weighs the pull like that many one-element crystals at the prior volume);
    elements absent from the data keep the prior.

    Args:
        lattices: (M, 3, 3) Angstrom. numbers: (total_atoms,). offsets: (M + 1,).
    """
    prior_shape = covalent_volumes()
    m = len(lattices)
    if m == 0:
        return prior_shape * 2.0
    counts = np.zeros((m, NUM_ELEMENTS))
    crystal_of_atom = np.repeat(np.arange(m), np.diff(offsets))
    np.add.at(counts, (crystal_of_atom, np.clip(numbers, 0, NUM_ELEMENTS - 1)), 1.0)
    natoms = counts.sum(axis=1, keepdims=True)
    volume = np.abs(np.linalg.det(lattices))
    design = counts / natoms  # fit volume per atom: every crystal weighs the same whatever its size
    target = volume / natoms[:, 0]
    scale = np.median(target / (design @ prior_shape))
    prior = prior_shape * scale
    lhs = design.T @ design + ridge * np.eye(NUM_ELEMENTS)
    rhs = design.T @ target + ridge * prior
    fitted = np.linalg.solve(lhs, rhs)
    # a volume is positive; a non-physical fit (element seen in few crystals) falls back to the prior
    return np.where(fitted > 0.2 * prior, fitted, prior)
