"""Open a predict folder's ``index.html`` in headless Chromium: a screenshot next to it, non-blank, one card per CIF.

    python bench/check_report_page.py                 # runs `xtalforge predict NaCl --method template --n 5` first
    python bench/check_report_page.py path/to/folder  # an existing predict output folder

The page is (re)written from the folder's run.json and CIFs with :func:`xtalforge.visualize.write_prediction_report`
when it has no ``index.html``, so the check works whether or not predict wrote the report itself. Writes
``bench/results/report_page_check.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "report_page_check.json"
SHOT = "index_screenshot.png"
#: flags that keep Chromium from touching the network or the user's profile
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(args: list[str], profile: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout, check=True)


def _predict(out: Path) -> float:
    """Run ``xtalforge predict NaCl`` in-process into ``out``; returns the wall time in s."""
    from xtalforge.cli import main

    t0 = time.perf_counter()
    code = main(["predict", "NaCl", "--method", "template", "--n", "5", "--out", str(out)])
    if code != 0:
        raise SystemExit(f"xtalforge predict exited with {code}")
    return time.perf_counter() - t0


def _ensure_report(folder: Path) -> tuple[Path, float | None]:
    """The folder's index.html, written from run.json + CIFs if predict did not write one (seconds it took)."""
    page = folder / "index.html"
    if page.is_file():
        return page, None
    from xtalforge.crystal import Crystal
    from xtalforge.visualize import write_prediction_report

    meta = json.loads((folder / "run.json").read_text())
    entries = [(Crystal.read(folder / row["file"]), row) for row in meta["candidates"]]
    t0 = time.perf_counter()
    title = f"xtalforge predict {meta.get('settings', {}).get('formula', '')}".strip()
    write_prediction_report(folder, entries, meta.get("settings", {}), title)
    return page, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", help="a predict output folder (default: run predict NaCl into a temp one)")
    ap.add_argument("--keep", default=str(ROOT / "runs" / "report_page_check"),
                    help="where the default run's folder goes (kept so the screenshot can be looked at)")
    args = ap.parse_args(argv)

    from matplotlib.image import imread

    import xtalforge

    predict_s = None
    if args.folder:
        folder = Path(args.folder)
    else:
        folder = Path(args.keep)
        (folder / SHOT).unlink(missing_ok=True)  # ours from a previous check; predict refuses folders with strangers
        predict_s = _predict(folder)
    page, report_s = _ensure_report(folder)
    cifs = sorted(folder.glob("*.cif"))

    with tempfile.TemporaryDirectory() as profile:
        version = _chromium(["--version"], Path(profile)).stdout.strip()
        shot = folder / SHOT
        t0 = time.perf_counter()
        _chromium([f"--screenshot={shot}", "--window-size=1200,1600", page.resolve().as_uri()], Path(profile))
        shot_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        dom = _chromium(["--dump-dom", page.resolve().as_uri()], Path(profile)).stdout
        dom_s = time.perf_counter() - t0

    pixels = imread(io.BytesIO(shot.read_bytes()), format="png")[..., :3]
    cards = len(re.findall(r'class="card"', dom))
    images = len(re.findall(r'src="data:image/png;base64,', dom))
    remote = re.findall(r'(?:src|href)="(https?:[^"]*)"', dom)
    checks = {"screenshot_not_blank": bool(pixels.std() > 0.02), "one_card_per_cif": cards == len(cifs),
              "one_picture_per_card": images == cards, "no_remote_resources": not remote}
    settings = json.loads((folder / "run.json").read_text()).get("settings", {})
    result = {"folder": str(folder), "settings": settings, "candidates": len(cifs), "cards_in_dom": cards,
              "pictures_in_dom": images, "screenshot": str(shot), "screenshot_px": list(pixels.shape[:2]),
              "screenshot_pixel_std": round(float(pixels.std()), 4), "page_bytes": page.stat().st_size,
              "timings_s": {"predict": predict_s, "report": report_s, "screenshot": round(shot_s, 2),
                            "dump_dom": round(dom_s, 2)},
              "chromium_version": version, "xtalforge_version": xtalforge.__version__, "checks": checks}
    if predict_s is not None:
        result["timings_s"]["predict"] = round(predict_s, 2)
    if report_s is not None:
        result["timings_s"]["report"] = round(report_s, 2)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'check':<24}{'result':>8}")
    for name, ok in checks.items():
        print(f"{name:<24}{'ok' if ok else 'FAIL':>8}")
    print(f"candidates {len(cifs)}, cards {cards}, screenshot {shot} ({pixels.shape[1]}x{pixels.shape[0]}), "
          f"{version}; written {RESULT.relative_to(ROOT)}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
