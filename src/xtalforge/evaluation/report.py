"""Small helpers every evaluation and benchmark uses to record what produced a number."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from xtalforge.crystal import atomic_write_text

#: Distributions whose versions go into every report.
REPORTED_PACKAGES = ("xtalforge", "torch", "numpy", "scipy", "pymatgen", "smact", "dask", "distributed")


def package_versions() -> dict[str, str | None]:
    """Python and package versions (read from installed metadata, so nothing heavy is imported)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["platform"] = f"{platform.system()} {platform.machine()}"
    versions["cpu_count"] = str(os.cpu_count())
    return versions


def to_jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays, paths and sets -> plain JSON types; NaN and infinities -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temporary file, then rename); returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")
    return path


def command_line() -> str:
    """The command that is running (recorded in benchmark outputs)."""
    return " ".join([Path(sys.executable).name, *sys.argv])
