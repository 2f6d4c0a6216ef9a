"""Structure and composition fingerprints for the de novo coverage metrics (COV-R / COV-P).

CDVAE computes them with matminer (``CrystalNNFingerprint.from_preset("ops")`` averaged over sites, and
``ElementProperty.from_preset("magpie")``). matminer is not a dependency here: its release pins ``pandas<3`` and
pulls scikit-learn and pymongo. Instead:

* :func:`structure_fingerprint` re-implements the CrystalNN "ops" site fingerprint from its published definition with
  pymatgen's own pieces (``CrystalNN`` neighbour weights, ``LocalStructOrderParams`` and the motif parameters in
  pymatgen's ``CN_OPT_PARAMS``): for every coordination number CN = 1..24 the CrystalNN weight w(CN), and for the
  motifs defined at that CN (single bond; the bent/linear family; trigonal, tetrahedral, square, see-saw, pyramid,
  bipyramid, octahedral, bcc, cuboctahedral motifs; Steinhardt q2/q4/q6 at CN 9-12) the product w(CN) * OP.
  61 values per site; the crystal fingerprint is their mean over sites. Same definition as matminer's, so the
  CDVAE structure cut-offs (0.4 MP-20, 0.2 Carbon-24 / Perov-5) keep their meaning.
* :func:`composition_fingerprint` is a Magpie-style substitute: 19 element properties from pymatgen's element table
  (Z, Mendeleev number, atomic mass, melting point, group, row, atomic radius, Pauling electronegativity, s/p/d/f
  and total valence electrons, s/p/d/f and total unfilled valence states, molar volume) and 6 statistics over the
  composition (min, max, range, fraction-weighted mean, mean absolute deviation, value of the most abundant
  element) = 114 values. Magpie's DFT properties (ground-state volume, band gap, moment, space group) have no
  pymatgen source and are left out, so composition distances, and the composition cut-off, are NOT on CDVAE's
  scale: compare COV numbers only within this project.
"""

from __future__ import annotations

from collections import Counter
from functools import cache

import numpy as np

from xtalforge.crystal import Crystal

#: Largest coordination number of the CrystalNN fingerprint.
MAX_CN = 24
#: Statistics of the composition fingerprint, in output order.
COMPOSITION_STATS = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")
#: Element properties of the composition fingerprint, in output order.
ELEMENT_PROPERTIES = (
    "Z", "mendeleev_no", "atomic_mass", "melting_point", "group", "row", "atomic_radius", "X",
    "s_valence", "p_valence", "d_valence", "f_valence", "valence",
    "s_unfilled", "p_unfilled", "d_unfilled", "f_unfilled", "unfilled", "molar_volume",
)  # fmt: skip


def _motifs() -> dict[int, list[tuple[str, dict | None]]]:
    """CN -> [(order-parameter type, parameters)] of the "ops" preset (the weight itself is added separately)."""
    try:
        from pymatgen.core.local_env import CN_OPT_PARAMS
    except ImportError:  # older pymatgen
        from pymatgen.analysis.local_env import CN_OPT_PARAMS
    motifs: dict[int, list[tuple[str, dict | None]]] = {1: [("sgl_bd", None)]}
    for cn in range(2, 9):
        motifs[cn] = [(spec[0], spec[1] if len(spec) > 1 else None) for spec in CN_OPT_PARAMS[cn].values()]
    for cn in (9, 10, 11):
        motifs[cn] = [("q2", None), ("q4", None), ("q6", None)]
    cubo = CN_OPT_PARAMS[12]["cuboctahedral"]
    motifs[12] = [(cubo[0], cubo[1] if len(cubo) > 1 else None), ("q2", None), ("q4", None), ("q6", None)]
    return motifs


class StructureFingerprinter:
    """CrystalNN "ops" fingerprint (see module docstring); build once and reuse (it holds the order-parameter
    objects)."""

    def __init__(self) -> None:
        from pymatgen.analysis.local_env import CrystalNN, LocalStructOrderParams

        self.cnn = CrystalNN()
        self.ops = {
            cn: [LocalStructOrderParams([kind], parameters=[params]) for kind, params in specs]
            for cn, specs in _motifs().items()
        }
        self.size = MAX_CN + sum(len(v) for v in self.ops.values())

    def site(self, structure, index: int) -> np.ndarray:
        """(61,) fingerprint of one site of a pymatgen ``Structure``."""
        nn = self.cnn.get_nn_data(structure, index)
        out = []
        for cn in range(1, MAX_CN + 1):
            weight = float(nn.cn_weights.get(cn, 0.0))
            out.append(weight)
            for op in self.ops.get(cn, []):
                if weight == 0.0:
                    out.append(0.0)
                    continue
                neighbours = [info["site"] for info in nn.cn_nninfo[cn]]
                value = op.get_order_parameters(
                    [structure[index], *neighbours], 0, indices_neighs=list(range(1, len(neighbours) + 1))
                )[0]
                out.append(weight * float(value or 0.0))
        return np.asarray(out)

    def __call__(self, crystal: Crystal) -> np.ndarray:
        """(61,) mean site fingerprint of a crystal."""
        import warnings

        structure = crystal.to_structure()
        with warnings.catch_warnings():  # CrystalNN warns for every site it falls back to covalent radii
            warnings.simplefilter("ignore")
            return np.mean([self.site(structure, i) for i in range(len(structure))], axis=0)


_FINGERPRINTER: StructureFingerprinter | None = None


def structure_fingerprint(crystal: Crystal) -> np.ndarray:
    """(61,) CrystalNN "ops" fingerprint averaged over sites (tens of ms per site)."""
    global _FINGERPRINTER
    if _FINGERPRINTER is None:
        _FINGERPRINTER = StructureFingerprinter()
    return _FINGERPRINTER(crystal)


@cache
def _element_table() -> np.ndarray:
    """(104, 19) property table indexed by Z (row 0 unused); missing values filled with the property's mean."""
    import warnings

    from pymatgen.core.periodic_table import Element

    rows = np.full((104, len(ELEMENT_PROPERTIES)), np.nan)
    with warnings.catch_warnings():  # pymatgen warns for every missing value; they are filled below
        warnings.simplefilter("ignore")
        for z in range(1, 104):
            rows[z] = _element_row(Element.from_Z(z))
    means = np.nanmean(rows[1:], axis=0)
    missing = np.isnan(rows)
    rows[missing] = np.take(means, np.nonzero(missing)[1])
    return rows


def _element_row(el) -> list[float]:
    from pymatgen.core.periodic_table import Element

    def num(value) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("nan")

    capacity = {"s": 2, "p": 6, "d": 10, "f": 14}
    valence = dict.fromkeys(capacity, 0)
    unfilled = dict.fromkeys(capacity, 0)
    # valence = the subshells outside the largest noble-gas core below the element (Magpie's convention: Ga has
    # 2 s, 1 p and 10 d valence electrons)
    core_z = max((z for z in (2, 10, 18, 36, 54, 86) if z < el.Z), default=0)
    core = {(n, orb) for n, orb, _ in Element.from_Z(core_z).full_electronic_structure} if core_z else set()
    for n, orbital, occupancy in el.full_electronic_structure:
        if (n, orbital) not in core:
            valence[orbital] += occupancy
            unfilled[orbital] += capacity[orbital] - occupancy
    return [
        el.Z,
        num(el.mendeleev_no),
        num(el.atomic_mass),
        num(el.melting_point),
        num(el.group),
        num(el.row),
        num(el.atomic_radius),
        num(el.X),
        *(valence[o] for o in "spdf"),
        sum(valence.values()),
        *(unfilled[o] for o in "spdf"),
        sum(unfilled.values()),
        num(el.molar_volume),
    ]


def composition_fingerprint(numbers: list[int] | np.ndarray) -> np.ndarray:
    """(114,) Magpie-style composition fingerprint of a cell's atomic numbers (see module docstring)."""
    counts = Counter(int(z) for z in numbers)
    zs = np.array(sorted(counts))
    frac = np.array([counts[z] for z in zs], dtype=float)
    frac /= frac.sum()
    values = _element_table()[zs]  # (n_elements, 19)
    mean = frac @ values
    avg_dev = frac @ np.abs(values - mean)
    top = np.nonzero(frac == frac.max())[0]
    mode = values[top].min(axis=0)  # ties: the smallest value, as Magpie
    stats = np.stack([values.min(0), values.max(0), values.max(0) - values.min(0), mean, avg_dev, mode], axis=1)
    return stats.reshape(-1)
