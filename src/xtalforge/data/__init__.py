"""Crystal data: CSV datasets with an on-disk cache, the benchmark protocol, and batching for the models."""

from xtalforge.data.batch import CrystalBatch, collate
from xtalforge.data.dataset import CrystalDataset, load_csv
from xtalforge.data.protocol import BENCHMARKS, Benchmark, check_no_leak, data_root, load_split, training_set

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
