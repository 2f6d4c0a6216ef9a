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


def render_cell_png(crystal: Crystal, size_px: int = 320) -> bytes:
    """A PNG picture of the unit cell: atoms (element colours, covalent radii) and the cell edges, seen along a fixed
    oblique direction, nearer atoms drawn over farther ones. Deterministic."""
    from ase.data import covalent_radii
    from ase.data.colors import jmol_colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lattice = np.asarray(crystal.lattice, float)
    frac = np.mod(np.asarray(crystal.frac_coords, float), 1.0)
    cart = frac @ lattice  # (N, 3) Angstrom
    corners = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], float) @ lattice
    # a fixed view: rotate about z by 30 deg, then tilt about x by 20 deg; project onto (x, z), depth is y
    a, b = np.radians(30.0), np.radians(20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    view = (rx @ rz).T
    p_atoms, p_corners = cart @ view, corners @ view

    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_aspect("equal")
    ax.axis("off")
    for i, j in _EDGES:
        ax.plot(p_corners[[i, j], 0], p_corners[[i, j], 2], color="0.35", lw=1.0, zorder=1)
    span = np.ptp(p_corners[:, [0, 2]], axis=0).max() or 1.0
    scale = (size_px * 0.8 / span) ** 2  # marker area is in points^2; radius in Angstrom -> points
    numbers = np.asarray(crystal.numbers, int)
    order = np.argsort(p_atoms[:, 1])[::-1]  # far (large depth) first
    radii = covalent_radii[numbers][order]
    ax.scatter(p_atoms[order, 0], p_atoms[order, 2], s=scale * (0.8 * radii) ** 2 * 0.5,
               c=jmol_colors[numbers][order], edgecolors="0.2", linewidths=0.5, zorder=2)
    pad = 0.08 * span
    ax.set_xlim(p_corners[:, 0].min() - pad, p_corners[:, 0].max() + pad)
    ax.set_ylim(p_corners[:, 2].min() - pad, p_corners[:, 2].max() + pad)
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
    ``matches.jsonl`` (the count of :func:`~xtalforge.evaluation.csp.summarize_csp`'s ``metrics``)."""
    from xtalforge.evaluation.csp import read_jsonl

    records = list({r["index"]: r for r in read_jsonl(matches_jsonl)}.values())
    first = np.array([next((i + 1 for i, rms in enumerate(r["rms"]) if rms is not None), np.inf) for r in records])
    if len(first) == 0:
        return {}
    return {k: float(100.0 * np.mean(first <= k)) for k in range(1, k_max + 1)}


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
