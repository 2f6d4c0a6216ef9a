"""``kill -9`` at seeded random moments: a resumed ``xtalforge evaluate`` reports what an uninterrupted run does,
with every row written exactly once, and a killed ``xtalforge predict`` leaves its --out folder absent or complete.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SEED = 7
EVALUATE = ["evaluate", "--data", "perov_5", "--method", "template", "--limit", "40", "--k", "1,20", "--workers",
            "1", "--threads", "1"]
#: report.json sections that depend on the run, not on the results: wall-clock timings, versions, output paths
RUN_DEPENDENT = ("timings", "versions", "files")


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "xtalforge.cli", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _kill_after(args: list[str], cwd: Path, seconds: float) -> int | None:
    """Start the CLI, SIGKILL it after ``seconds`` (the return code if it finished first, else None)."""
    proc = subprocess.Popen(_cli(args), cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def _jsonl_indices(path: Path) -> list[int]:
    return [json.loads(line)["index"] for line in path.read_text().splitlines() if line.strip()]


def _stable(report: dict) -> dict:
    """The report without its run-dependent parts, floats to 6 significant digits: an RMSE computed in another
    process can differ in the last bits (measured: 2e-7 relative), a resumed run must not differ more."""
    def rounded(v):
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        if isinstance(v, list):
            return [rounded(x) for x in v]
        return v

    return rounded({k: v for k, v in report.items() if k not in RUN_DEPENDENT})


def _candidates(path: Path) -> dict[int, list]:
    """Row index -> its candidates (the per-row ``seconds`` is a timing)."""
    return {r["index"]: r["candidates"] for r in map(json.loads, path.read_text().splitlines()) if r}


@pytest.mark.slow
def test_evaluate_resumes_after_kill_9_to_the_uninterrupted_report(tmp_path):
    # the first run may build on-disk caches (template library) that later runs skip: time a second, warm run
    whole = _run([*EVALUATE, "--out", str(tmp_path / "whole")], tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    started = time.perf_counter()
    again = _run([*EVALUATE, "--out", str(tmp_path / "again")], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    full = time.perf_counter() - started

    rng = np.random.default_rng(SEED)
    killed = tmp_path / "killed"
    kills = 0
    for _ in range(3):
        # most of a run is start-up (imports, the template library); the rows are written in its last part
        rc = _kill_after([*EVALUATE, "--out", str(killed)], tmp_path, float(rng.uniform(0.4, 0.98) * full))
        kills += rc is None
    resumed = _run([*EVALUATE, "--out", str(killed)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert kills >= 1, "no kill landed before the run finished"

    expected = json.loads((tmp_path / "whole" / "report.json").read_text())
    got = json.loads((killed / "report.json").read_text())
    assert _stable(got) == _stable(expected)
    for name in ("candidates.jsonl", "matches.jsonl"):
        indices = _jsonl_indices(killed / name)
        assert len(indices) == len(set(indices)) == 40, f"{name}: rows {sorted(indices)}"
        assert sorted(indices) == sorted(_jsonl_indices(tmp_path / "whole" / name))
    assert _candidates(killed / "candidates.jsonl") == _candidates(tmp_path / "whole" / "candidates.jsonl")


def _check_predict_folder(out: Path) -> None:
    """``out`` is absent, or holds run.json and every file it lists, each parseable."""
    if not out.exists():
        return
    run = json.loads((out / "run.json").read_text())
    from xtalforge.crystal import Crystal

    names = [row["file"] for row in run["candidates"]]
    assert names, "run.json lists no candidates"
    for name in names:
        Crystal.from_cif_string((out / name).read_text())
    assert (out / "summary.csv").is_file() and (out / "summary.md").is_file()


@pytest.mark.slow
def test_predict_killed_at_random_moments_leaves_no_partial_folder(tmp_path):
    # the HTML report needs xtalforge.visualize; without it predict is run with --no-report
    report = [] if importlib.util.find_spec("xtalforge.visualize") else ["--no-report"]
    args = ["predict", "NaCl", "--method", "template", "--n", "5", "--threads", "1", *report]
    rng = np.random.default_rng(SEED)
    started = time.perf_counter()
    done = _run([*args, "--out", str(tmp_path / "whole")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    full = time.perf_counter() - started
    _check_predict_folder(tmp_path / "whole")
    hidden = []
    for i in range(4):
        out = tmp_path / f"out{i}"
        _kill_after([*args, "--out", str(out)], tmp_path, float(rng.uniform(0.5 * full, 1.1 * full)))
        _check_predict_folder(out)
        visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
        assert set(visible) <= {"whole"} | {f"out{j}" for j in range(i + 1)}, visible
        hidden += [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    # hidden .outN.tmp* folders of killed runs are not visible output; the lead has the fix for write_candidates
    if hidden:
        import warnings

        warnings.warn(f"killed predict runs left hidden temporary folders: {sorted(set(hidden))}", stacklevel=1)
