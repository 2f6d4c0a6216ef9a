"""Pictures of crystals and the offline HTML report of a prediction; the match-rate curve of an evaluation.

Everything renders with matplotlib's Agg canvas (no display, the user's pyplot state untouched); the report embeds
its pictures as data URIs, so ``index.html`` opens offline, alone, anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from xtalforge.crystal import Crystal, atomic_write_text

#: the 12 edges of the unit cube, as pairs of corner indices (corners in binary order of their fractional coords)
_EDGES = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7)]


def _standard_frame(lattice: np.ndarray) -> np.ndarray:
    """The same cell turned so that a lies along x and b in the xy plane (c points up): the picture then depends on
    the cell's shape only, not on how the lattice happened to be oriented."""
    _, r = np.linalg.qr(lattice.T)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)  # keep the handedness of the input, diag(r) > 0
    return (r * signs[:, None]).T


def _with_boundary_images(frac: np.ndarray, numbers: np.ndarray, tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Atoms on a face, edge or corner repeated on the opposite ones, as a crystallographer draws a cell."""
    frac = np.where(frac > 1.0 - tol, frac - 1.0, frac)
    out_f, out_n = [frac], [numbers]
    for shift in np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(1, 8)], float):
        on = np.all(np.abs(frac[:, shift > 0]) < tol, axis=1)
        out_f.append(frac[on] + shift)
        out_n.append(numbers[on])
    return np.concatenate(out_f), np.concatenate(out_n)


def render_cell_png(crystal: Crystal, size_px: int = 320) -> bytes:
    """A PNG picture (``size_px`` square) of the unit cell: atoms in Jmol colours with covalent radii, atoms on the
    cell's boundary shown on every face they touch, and the 12 cell edges. The cell is seen from a fixed oblique
    direction (c up, a to the front right), nearer atoms drawn over farther ones. Deterministic."""
    from ase.data import covalent_radii
    from ase.data.colors import jmol_colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lattice = _standard_frame(np.asarray(crystal.lattice, float))
    frac, numbers = _with_boundary_images(np.mod(np.asarray(crystal.frac_coords, float), 1.0),
                                          np.asarray(crystal.numbers, int))
    corners = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], float) @ lattice
    centre = corners.mean(axis=0)
    # a fixed view: turn about z by 25 deg, then tilt about x by 22 deg; the picture is (x, z), depth is y
    a, b = np.radians(-25.0), np.radians(22.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    view = (rx @ rz).T
    p_atoms, p_corners = (frac @ lattice - centre) @ view, (corners - centre) @ view

    radii = 0.5 * covalent_radii[numbers]  # drawn at half the covalent radius, so neighbours do not hide each other
    lo = np.minimum(p_corners[:, [0, 2]].min(axis=0), (p_atoms[:, [0, 2]] - radii[:, None]).min(axis=0))
    hi = np.maximum(p_corners[:, [0, 2]].max(axis=0), (p_atoms[:, [0, 2]] + radii[:, None]).max(axis=0))
    half = 0.54 * (hi - lo).max()  # a square window, 4% margin each side
    mid = (hi + lo) / 2

    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    for i, j in _EDGES:
        ax.plot(p_corners[[i, j], 0], p_corners[[i, j], 2], color="0.35", lw=1.0, zorder=1)
    points_per_A = size_px * 72.0 / dpi / (2 * half)  # scatter sizes are marker diameters squared, in points^2
    order = np.argsort(-p_atoms[:, 1], kind="stable")  # far (large depth) first
    ax.scatter(p_atoms[order, 0], p_atoms[order, 2], s=(2 * radii[order] * points_per_A) ** 2,
               c=jmol_colors[numbers][order], edgecolors="0.2", linewidths=0.5, zorder=2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}.meta{color:#555;font-size:13px;margin-bottom:16px}
.grid{display:flex;flex-wrap:wrap;gap:16px}.card{background:#fff;border:1px solid #ddd;border-radius:8px;
padding:12px;width:340px}.card img{width:320px;height:320px;display:block;margin:auto}
table{border-collapse:collapse;font-size:13px;width:100%}td{padding:2px 4px;border-top:1px solid #eee;
vertical-align:top}td:first-child{color:#666;white-space:nowrap}details{font-size:12px;color:#555}"""

#: rows shown first in each card, in this order: (label, key)
_MAIN = [("rank", "rank"), ("formula", "formula"), ("atoms", "natoms"), ("Z", "z"), ("space group", "spacegroup"),
         ("volume (A^3)", "volume_A3"), ("energy (eV/atom)", "energy_eV_per_atom"),
         ("static energy (eV/atom)", "static_energy_eV_per_atom"), ("method", "method"), ("ranked by", "rank_by"),
         ("rank value", "rank_value"), ("weights", "weights")]


def _text(value: Any) -> str:
    return "-" if value is None else html.escape(str(value))


def write_prediction_report(out_dir: str | os.PathLike, entries: list[tuple[Crystal, dict]], settings: dict,
                            title: str) -> Path:
    """Write ``out_dir/index.html``: one card per candidate (picture, facts, provenance, link to its CIF) under a
    header with the title, the xtalforge version and the settings. ``entries``: (crystal, row) in rank order, the
    row as ``Candidate.row()`` plus ``file``. Self-contained and written atomically; returns its path."""
    import xtalforge

    cards = []
    for crystal, row in entries:
        png = base64.b64encode(render_cell_png(crystal)).decode("ascii")
        main = "".join(f"<tr><td>{label}</td><td>{_text(row.get(key))}</td></tr>" for label, key in _MAIN)
        rest = {k: v for k, v in row.items() if k not in {key for _, key in _MAIN} | {"file"} and v is not None}
        extra = "".join(f"<tr><td>{_text(k)}</td><td>{_text(v)}</td></tr>" for k, v in rest.items())
        link = f'<a href="{html.escape(str(row["file"]), quote=True)}">{_text(row["file"])}</a>' if row.get("file") \
            else ""
        cards.append(f'<div class="card"><img alt="cell of {_text(row.get("formula"))}" '
                     f'src="data:image/png;base64,{png}"><table>{main}</table>'
                     + (f"<details><summary>provenance</summary><table>{extra}</table></details>" if extra else "")
                     + f"<p>{link}</p></div>")
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{_text(title)}</title><style>{_CSS}</style>"
            f"</head><body><h1>{_text(title)}</h1><div class=\"meta\">xtalforge {_text(xtalforge.__version__)} "
            "&middot; "
            f"{len(entries)} candidates &middot; settings: <code>{_text(json.dumps(settings, default=str))}</code>"
            f"</div><div class=\"grid\">{''.join(cards)}</div></body></html>\n")
    path = Path(out_dir) / "index.html"
    atomic_write_text(path, page)
    return path


def match_rate_curve(matches_jsonl: str | os.PathLike, k_max: int) -> dict[int, float]:
    """{k: % of entries with a match among their first k candidates} for k = 1..k_max, from an evaluate run's
    ``matches.jsonl``: the ``metrics`` of :func:`~xtalforge.evaluation.csp.summarize_csp` at every k."""
    from xtalforge.evaluation.csp import summarize_csp

    metrics = summarize_csp(matches_jsonl, ks=range(1, k_max + 1))["metrics"]
    return {k: metrics[str(k)]["match_rate"] for k in range(1, k_max + 1)}


def plot_match_rate_curve(curve: dict[int, float], path: str | os.PathLike, title: str) -> Path:
    """A PNG of match rate (%) against k, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(5, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ks = sorted(curve)
    ax.plot(ks, [curve[k] for k in ks], marker="o", ms=3)
    ax.set_xlabel("k (candidates considered)")
    ax.set_ylabel("match rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
