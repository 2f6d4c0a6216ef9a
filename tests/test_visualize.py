"""Pictures and the offline report: real PNGs, one card per candidate, nothing fetched from the network."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from xtalforge.evaluation.csp import summarize_csp
from xtalforge.visualize import match_rate_curve, plot_match_rate_curve, render_cell_png, write_prediction_report


def _pixels(png: bytes) -> np.ndarray:
    import io

    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png")


def test_cell_picture_is_a_real_non_blank_png(nacl, triclinic):
    for crystal in (nacl, triclinic):
        png = render_cell_png(crystal, size_px=200)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        img = _pixels(png)
        assert img.shape[:2] == (200, 200) and img[..., :3].std() > 0.05
    assert render_cell_png(nacl) == render_cell_png(nacl)  # deterministic


def test_report_has_a_card_per_candidate_and_is_self_contained(tmp_path, nacl, triclinic):
    rows = [{"rank": 1, "formula": "Na4Cl4", "natoms": 8, "z": 4, "spacegroup": "Fm-3m (225)", "file": "01_Na4Cl4.cif"},
            {"rank": 2, "formula": "Sr1Ti1O3", "natoms": 5, "spacegroup": None, "template_id": "mp-1<x>"}]
    path = write_prediction_report(tmp_path, [(nacl, rows[0]), (triclinic, rows[1])], {"note": "<script>x</script>"},
                                   "xtalforge predict NaCl")
    page = path.read_text()
    assert page.count('class="card"') == 2 and page.count("data:image/png;base64,") == 2
    assert "<script>" not in page and "&lt;script&gt;" in page and "mp-1&lt;x&gt;" in page
    assert not re.search(r"(src|href)=\"https?:", page) and 'href="01_Na4Cl4.cif"' in page


def test_match_rate_curve_counts_as_the_report_does(tmp_path):
    lines = [{"index": 0, "rms": [None, 0.1, None]}, {"index": 1, "rms": [0.2, None, None]},
             {"index": 2, "rms": []}, {"index": 3, "rms": [None, None, None]}]
    full = [{**r, "k_max": 3, "status": ["ok"] * len(r["rms"]), "struct_valid": [True] * len(r["rms"]),
             "smact_valid": True} for r in lines]
    matches = tmp_path / "matches.jsonl"
    matches.write_text("".join(json.dumps(r) + "\n" for r in full))
    curve = match_rate_curve(matches, 3)
    assert curve == {1: 25.0, 2: 50.0, 3: 50.0}
    metrics = summarize_csp(matches, ks=(1, 2, 3))["metrics"]
    assert match_rate_curve(matches, 3) == {k: metrics[str(k)]["match_rate"] for k in (1, 2, 3)}
    png = plot_match_rate_curve(curve, tmp_path / "curve.png", "test").read_bytes()
    assert _pixels(png)[..., :3].std() > 0.01


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed (apt: chromium)")
def test_report_renders_in_headless_chromium(tmp_path, nacl):
    path = write_prediction_report(tmp_path, [(nacl, {"rank": 1, "formula": "Na4Cl4"})], {}, "NaCl")
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=800,600",
                    path.as_uri()], check=True, capture_output=True, timeout=120)
    assert _pixels(shot.read_bytes())[..., :3].std() > 0.02
