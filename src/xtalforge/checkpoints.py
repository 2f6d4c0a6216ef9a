"""Where shipped weights live and how checkpoints are written: one place for every model of the package."""

from __future__ import annotations

import os
from pathlib import Path

#: Shipped weights, model cards and tables (package data).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_weights(prefix: str, path_or_name: str | os.PathLike, kind: str) -> Path:
    """A weights file from a path or a shipped name (``prefix="dao_g_"``, ``"mp20"`` -> ``weights/dao_g_mp20.pt``).

    Raises a one-line :class:`~xtalforge.errors.XtalforgeError` naming the shipped choices when neither exists.
    """
    from xtalforge.errors import XtalforgeError

    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = WEIGHTS_DIR / f"{prefix}{path_or_name}.pt"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem.removeprefix(prefix) for p in WEIGHTS_DIR.glob(f"{prefix}*.pt"))
    raise XtalforgeError(f"no {kind} weights '{path_or_name}' (shipped: {', '.join(names) or 'none'})")


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """torch.save through a temp file in the same folder + rename, so a crash never leaves a torn file."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
