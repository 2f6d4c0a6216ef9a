"""Build the shipped template library: the pooled val splits of the four benchmarks and the AFLOW structures.

    nice python bench/build_template_library.py [--out src/xtalforge/weights/template_library.npz]

It holds material_ids of val entries only (and ``aflow:...`` ids of structures with no test formula of any
benchmark). Some val ids are also in another benchmark's test split (MP-20 and MPTS-52 share MP ids), so
``check_no_leak`` refuses it for those benchmarks: evaluations build a per-benchmark library with
``benchmark_library(bench, pooled=True, aflow=True)`` instead. The counts printed here go into
``template_library.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from xtalforge.data.dataset import CrystalDataset
from xtalforge.data.protocol import BENCHMARKS, aflow_structures, check_no_leak, load_split
from xtalforge.errors import ProtocolError
from xtalforge.templates import TemplateLibrary
from xtalforge.templates.csp import SHIPPED_LIBRARY


def build(out: Path) -> dict:
    t0 = time.perf_counter()
    parts = [load_split(name, b.train_split) for name, b in BENCHMARKS.items()] + [aflow_structures()]
    data = CrystalDataset.concat(parts, source="val splits of " + ", ".join(BENCHMARKS) + " + AFLOW structures")
    library = TemplateLibrary.from_dataset(data)
    library.save(out)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    TemplateLibrary.load(out)
    leaks = {}
    for name in BENCHMARKS:
        try:
            check_no_leak(list(library.ids), name)
            leaks[name] = 0
        except ProtocolError:
            leaks[name] = len(set(library.ids) & set(load_split(name, "test").ids))
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "entries": len(library),
        "entries_per_source": {name: len(p) for name, p in zip([*BENCHMARKS, "aflow"], parts)},
        "anonymised_formulas": len(library.keys()),
        "prototypes": int(library.prototype.max()) + 1,
        "atoms": int(library.offsets[-1]),
        "test_ids_leaked_per_benchmark": leaks,
        "build_seconds": round(seconds, 1),
        "load_seconds": round(time.perf_counter() - t1, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=SHIPPED_LIBRARY)
    args = ap.parse_args()
    print(json.dumps(build(args.out), indent=1))


if __name__ == "__main__":
    main()
