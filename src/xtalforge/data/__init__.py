"""Crystal data: CSV datasets with an on-disk cache, the benchmark protocol, and batching for the models.

``batch`` (which needs torch) is imported lazily so that torch-free paths such as template prediction start fast.
"""

from xtalforge.data.dataset import CrystalDataset, load_csv
from xtalforge.data.protocol import BENCHMARKS, Benchmark, check_no_leak, data_root, load_split, training_set


def __getattr__(name: str):
    if name in ("CrystalBatch", "collate"):
        from xtalforge.data import batch

        return getattr(batch, name)
    raise AttributeError(f"module 'xtalforge.data' has no attribute {name!r}")


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "CrystalBatch",
    "CrystalDataset",
    "check_no_leak",
    "collate",
    "data_root",
    "load_csv",
    "load_split",
    "training_set",
]
