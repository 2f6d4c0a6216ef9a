"""The benchmark protocol, written once and enforced.

No train split of any benchmark is available here, so models and template libraries are built from **val** splits
and results are reported on the visible **test** split. Pooling is allowed (every benchmark's val split), except a
structure whose ``material_id`` is in the test split being reported (MP-20 and MPTS-52 share MP ids) and, for
Carbon-24, any other pure-carbon structure. :func:`check_no_leak` refuses a set that breaks this rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xtalforge.data.dataset import CrystalDataset, load_csv
from xtalforge.errors import ProtocolError, XtalforgeError
from xtalforge.evaluation.matching import composition_key


@dataclass(frozen=True)
class Benchmark:
    """One CSP benchmark: its folder under the data root and what its entries hold.

    Attributes:
        name: key used on the command line.
        folder: sub-folder of the data root.
        energy_column: per-atom energy label used by energy models (eV/atom), if the data has one.
        max_atoms: largest cell in the benchmark.
        step_lr: corrector step size of the predictor-corrector sampler (reference §2).
        dao_g_weights: shipped DAO-G weights trained for this benchmark, used by ``evaluate`` unless ``--weights``
            says otherwise (None: the default routing by cell size).
    """

    name: str
    folder: str
    energy_column: str | None
    max_atoms: int
    step_lr: float
    train_split: str = "val"
    test_split: str = "test"
    dao_g_weights: str | None = None


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("perov_5", "perov_5", "heat_ref", 5, 5e-7, dao_g_weights="perov_5"),
        Benchmark("carbon_24", "carbon_24", "energy_per_atom", 24, 5e-6, dao_g_weights="carbon_24"),
        Benchmark("mp_20_biternary", "mp_20_biternary", "formation_energy_per_atom", 20, 1e-5),
        Benchmark("mpts_52", "mpts_52", "formation_energy_per_atom", 52, 1e-5),
    ]
}


def data_root() -> Path:
    """The shared data folder: ``$XTALFORGE_DATA``, else the nearest ``shared/data`` above the working directory
    or the package."""
    env = os.environ.get("XTALFORGE_DATA")
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve()):
        for parent in [start, *start.parents]:
            for candidate in (parent / "shared" / "data", parent / "data"):
                if (candidate / "MANIFEST.json").is_file():
                    return candidate
    raise XtalforgeError("benchmark data not found: set XTALFORGE_DATA to the folder holding perov_5/, mpts_52/, ...")


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise XtalforgeError(f"unknown benchmark '{name}' (choose from {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def split_path(benchmark: str, split: str) -> Path:
    b = get_benchmark(benchmark)
    return data_root() / b.folder / f"{split}.csv.gz"


def load_split(benchmark: str, split: str) -> CrystalDataset:
    """Rows of one split (``val`` or ``test``) of a benchmark."""
    path = split_path(benchmark, split)
    if not path.is_file():
        raise XtalforgeError(f"{benchmark} has no '{split}' split at {path}")
    return load_csv(path)


def training_set(benchmark: str, pooled: bool = False, aflow: bool = False) -> CrystalDataset:
    """The data a model or template library may use when ``benchmark``'s test split is reported.

    ``pooled=False``: the benchmark's own val split. ``pooled=True``: the val splits of all benchmarks, less any
    row that the protocol forbids. ``aflow=True`` adds :func:`aflow_structures` (none with a test formula of any
    benchmark). Either way the result passes :func:`check_no_leak`.
    """
    b = get_benchmark(benchmark)
    own = load_split(benchmark, b.train_split)
    if pooled:
        test_ids = set(load_split(benchmark, b.test_split).ids)
        parts = [own]
        for other in BENCHMARKS.values():
            if other.name == benchmark:
                continue
            data = load_split(other.name, other.train_split)
            keep = [i for i, mid in enumerate(data.ids) if mid not in test_ids and not (
                benchmark == "carbon_24" and set(data.atoms_of(i).tolist()) == {6})]
            parts.append(data.subset(keep))
        own = CrystalDataset.concat(parts, source=f"pooled val splits for {benchmark}")
    if aflow:
        extra = aflow_structures()
        own = CrystalDataset.concat([own, extra], source=f"{own.source} + {extra.source}")
    check_no_leak(own, benchmark)
    return own


def check_no_leak(train: CrystalDataset | list[str], benchmark: str) -> None:
    """Raise :class:`ProtocolError` if ``train`` holds a ``material_id`` of ``benchmark``'s test split."""
    b = get_benchmark(benchmark)
    train_ids = set(train.ids if isinstance(train, CrystalDataset) else map(str, train))
    test_ids = set(load_split(benchmark, b.test_split).ids)
    leaked = sorted(train_ids & test_ids)
    if leaked:
        raise ProtocolError(
            f"training/template set holds {len(leaked)} material_id(s) of the {benchmark} test split "
            f"(e.g. {', '.join(leaked[:3])}); the protocol forbids this"
        )


def sample_indices(n_total: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """A reproducible random sample of ``limit`` row indices (all rows, in order, when ``limit`` is None)."""
    if limit is None or limit >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=limit, replace=False))


AFLOW_PROPERTIES = ("bulk_modulus", "shear_modulus", "debye_temperature", "thermal_conductivity", "thermal_expansion")


def aflow_structures() -> CrystalDataset:
    """Extra pretraining crystals: the distinct structures of the AFLOW property sets (``aflow_properties/``).

    Only structures of their train and val splits are used, none that also occurs in a test split of any of the
    five (property models report on those). Duplicates across the five properties are dropped, and so is every
    structure whose **reduced formula** occurs in the test split of any CSP benchmark, and every pure-carbon one.
    That is stricter than the protocol's ``material_id`` rule, which cannot apply here: AFLOW rows carry no MP ids,
    so a test compound could otherwise come in under another name. Rows get
    the ids ``aflow:<property>:<split>:<row>``.
    """
    forbidden = set()
    for b in BENCHMARKS.values():
        test = load_split(b.name, b.test_split)
        forbidden.update(composition_key(test.atoms_of(i)) for i in range(len(test)))

    def digests(data: CrystalDataset) -> list[tuple[bytes, bytes, bytes]]:
        # the same structure listed under several properties parses to the same arrays
        return [(data.atoms_of(i).tobytes(), np.round(data.lattices[i], 4).tobytes(),
                 np.round(data.frac_coords[data.offsets[i]:data.offsets[i + 1]], 4).tobytes())
                for i in range(len(data))]

    def load(prop: str, split: str) -> CrystalDataset:
        return load_csv(data_root() / "aflow_properties" / prop / f"{split}.csv.gz")

    seen = {d for prop in AFLOW_PROPERTIES for d in digests(load(prop, "test"))}
    parts = []
    for prop in AFLOW_PROPERTIES:
        for split in ("train", "val"):
            data = load(prop, split)
            keep = []
            for i, digest in enumerate(digests(data)):
                numbers = data.atoms_of(i)
                if digest in seen or composition_key(numbers) in forbidden or set(numbers.tolist()) == {6}:
                    continue
                seen.add(digest)
                keep.append(i)
            part = data.subset(keep)
            part.meta = pd.DataFrame({"material_id": [f"aflow:{prop}:{split}:{r}" for r in part.meta["row"]]})
            parts.append(part)
    return CrystalDataset.concat(parts, source="AFLOW property sets (train+val), minus every test formula")
