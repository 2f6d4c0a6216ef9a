"""CSP evaluation in two resumable stages: generate candidates, then match them against the test structures.

Stage 1, :func:`generate_candidates`, asks a :class:`~xtalforge.methods.CSPMethod` for ``n`` ranked candidates per
test row and appends one JSON line per row to ``candidates.jsonl``. Stage 2, :func:`match_candidates`, matches each
row's candidates in rank order against the true structure with pymatgen's ``StructureMatcher`` and appends one JSON
line per row to ``matches.jsonl``. Both stages skip rows already in their output file, so an interrupted run continues
where it stopped (a half-written last line is dropped and redone), and candidates produced elsewhere can be scored
by writing the same JSON lines. :func:`summarize_csp` turns a matches file into match rate / RMSE at each k;
:func:`evaluate_csp` runs everything and writes ``report.json``.

Candidates file, one line per test row::

    {"index": 17, "material_id": "mp-1234", "num_atoms": 8, "seconds": 0.41,
     "candidates": [{"lattice": [[...], [...], [...]], "frac": [[...], ...], "numbers": [31, ...], "score": 1.2}, ...]}

``index`` is the row of the test dataset; lattice rows in Angstrom, coordinates rounded to 1e-6; ``seconds`` is the
row's share of its generation batch; rows the method cannot handle have ``"error"`` and no candidates.

Matches file, one line per test row::

    {"index": 17, "material_id": "mp-1234", "k_max": 20, "rms": [0.031, null, ...], "timed_out": [false, ...],
     "status": ["match", "no_match", ...], "struct_valid": [true, ...], "smact_valid": true, "seconds": 0.2,
     "cpu_seconds": 0.19}

``rms`` is ``get_rms_dist(candidate, target)[0]`` (normalised by ``(V / N) ** (1/3)``) or null; ``status`` is one of
match, no_match, composition (reduced composition differs: skipped), timeout (counted as no match) and error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Collection, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.matching import MatchTolerance
from xtalforge.evaluation.report import package_versions, to_jsonable, write_json

if TYPE_CHECKING:
    from xtalforge.data.dataset import CrystalDataset
    from xtalforge.methods import CSPMethod

log = logging.getLogger(__name__)

#: Decimals kept for candidate lattices (Angstrom) and fractional coordinates in candidates files.
DECIMALS = 6


# --------------------------------------------------------------------------------------------- JSON lines


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Records of a JSON-lines file; a truncated last line (an interrupted write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                return  # the unfinished tail of an interrupted run
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                raise XtalforgeError(f"{path}: line {number} is not valid JSON") from None


def _resume(path: Path) -> set[int]:
    """Row indices already in ``path``; cuts a half-written last line off so appending continues cleanly."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        return set()
    done: set[int] = set()
    good_bytes = 0
    size = path.stat().st_size
    with open(path, "rb") as fh:
        for line in fh:
            try:
                record = json.loads(line) if line.strip() else None
                complete = line.endswith(b"\n")
            except json.JSONDecodeError:
                complete = False
            if not complete:
                if good_bytes + len(line) < size:  # only the last line can be half-written by an interrupted run
                    raise XtalforgeError(f"{path}: corrupt line after byte {good_bytes}; fix or delete the file")
                break
            if record is not None:
                done.add(int(record["index"]))
            good_bytes += len(line)
    if good_bytes != size:
        log.warning("%s: dropping an unfinished last line (%d bytes)", path, size - good_bytes)
        with open(path, "r+b") as fh:
            fh.truncate(good_bytes)
    return done


def append_jsonl(fh, records: list[dict]) -> None:
    """Append whole lines in one write and push them to disk, so a kill leaves at most one partial line."""
    fh.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    fh.flush()
    os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------- stage 1


def _rows(test: CrystalDataset, limit: int | None, seed: int) -> np.ndarray:
    from xtalforge.data.protocol import sample_indices

    return sample_indices(len(test), limit, seed)


def candidate_record(crystal) -> dict:
    """One candidate in the candidates-file format (lattice and coordinates rounded to ``DECIMALS``)."""
    score = float(crystal.properties.get("score", 0.0))
    return {
        "lattice": np.round(crystal.lattice, DECIMALS).tolist(),
        "frac": np.round(crystal.frac_coords, DECIMALS).tolist(),
        "numbers": crystal.numbers.tolist(),
        "score": score if math.isfinite(score) else None,
    }


def generate_candidates(
    method: CSPMethod,
    test: CrystalDataset,
    n: int,
    out: str | os.PathLike,
    seed: int = 0,
    chunk: int = 64,
    limit: int | None = None,
    progress: bool = True,
    given_symmetry: bool = False,
) -> dict:
    """Stage 1: ``n`` candidates per test row, appended to the JSON-lines file ``out`` (resumable).

    ``given_symmetry``: the method gets each test structure itself instead of its atoms, and samples in that
    structure's space group and Wyckoff positions (methods with ``accepts_structures``).

    Rows are taken in chunks of ``chunk`` (the method batches internally); chunk ``c`` is generated with seed
    ``seed + c`` and always as a whole, so a resumed run reproduces an uninterrupted one for a deterministic method.
    With ``limit``, a reproducible random sample of rows (:func:`~xtalforge.data.protocol.sample_indices`).

    Returns ``{"path", "entries", "generated" (rows written by this call), "wall_s"}``.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    rows = _rows(test, limit, seed)
    done = _resume(out)
    missing_total = sum(int(r) not in done for r in rows)
    ids = test.ids
    start = time.perf_counter()
    generated = 0
    with open(out, "a") as fh, tqdm(
        total=len(rows), initial=len(rows) - missing_total, desc=f"generate [{method.name}]", unit="entry",
        disable=not progress,
    ) as bar:
        for c, first in enumerate(range(0, len(rows), chunk)):
            block = [int(r) for r in rows[first : first + chunk]]
            missing = [r for r in block if r not in done]
            if not missing:
                continue
            records = _generate_block(method, test, block, ids, n, seed + c, given_symmetry)
            append_jsonl(fh, [records[r] for r in missing])
            generated += len(missing)
            bar.update(len(missing))
    return {"path": str(out), "entries": len(rows), "generated": generated, "wall_s": time.perf_counter() - start}


def _generate_block(
    method: CSPMethod, test: CrystalDataset, block: list[int], ids: list[str], n: int, seed: int,
    given_symmetry: bool = False,
) -> dict:
    targets = {r: test[r] if given_symmetry else test.atoms_of(r).tolist() for r in block}
    sizes = {r: len(test.atoms_of(r)) for r in block}
    records = {r: {"index": r, "material_id": ids[r], "num_atoms": sizes[r], "candidates": []} for r in block}
    runnable = []
    for r in block:
        if sizes[r] > method.max_atoms:
            records[r].update(seconds=0.0, error=f"{sizes[r]} atoms > max_atoms {method.max_atoms}")
        else:
            runnable.append(r)
    if not runnable:
        return records
    start = time.perf_counter()
    try:
        batch = _checked_generate(method, [targets[r] for r in runnable], n, seed)
        results = dict(zip(runnable, batch))
        failures: dict[int, str] = {}
    except XtalforgeError:  # one bad target should not sink its batch: retry the rows one by one
        results, failures = {}, {}
        for r in runnable:
            try:
                results[r] = _checked_generate(method, [targets[r]], n, seed)[0]
            except XtalforgeError as exc:
                failures[r] = str(exc)
    per_row = (time.perf_counter() - start) / len(runnable)
    for r in runnable:
        records[r]["seconds"] = per_row
        if r in failures:
            records[r]["error"] = failures[r]
        else:
            records[r]["candidates"] = [candidate_record(c) for c in results[r][:n]]
    return records


def _checked_generate(method: CSPMethod, targets: list[list[int]], n: int, seed: int) -> list[list]:
    out = method.generate(targets, n, seed)
    if len(out) != len(targets):
        raise RuntimeError(f"method '{method.name}' returned {len(out)} candidate lists for {len(targets)} targets")
    return out


# --------------------------------------------------------------------------------------------- stage 2


@lru_cache(maxsize=4096)
def _smact_valid(key: tuple[tuple[int, int], ...]) -> bool:
    from xtalforge.evaluation.denovo import smact_validity

    return smact_validity([z for z, count in key for _ in range(count)])


def match_candidates(
    test: CrystalDataset,
    candidates_file: str | os.PathLike,
    out: str | os.PathLike,
    k_max: int = 20,
    tol: MatchTolerance | None = None,
    workers: int | None = None,
    timeout: float | None = 30.0,
    scheduler: Any = None,
    engine: str = "fast",
    progress: bool = True,
) -> dict:
    """Stage 2: match the first ``k_max`` candidates of every row of ``candidates_file``; append to ``out``.

    Args:
        test: the dataset the candidates file indexes (its ``material_id`` values are checked).
        candidates_file: output of :func:`generate_candidates` (or the same format from elsewhere).
        out: matches JSON-lines file (rows already there are skipped).
        k_max: candidates matched per row, in rank order.
        tol: StructureMatcher tolerances (default stol 0.5, angle_tol 10, ltol 0.3).
        workers: local processes (default: all cores; 0 = in this thread).
        timeout: seconds per pair; a pair past it counts as no match and is recorded as "timeout".
        scheduler: a Dask ``distributed.Client`` or scheduler address to run on instead of local processes.
        engine: "fast" (exact re-implementation, default) or "pymatgen" (``get_rms_dist`` itself).

    Returns ``{"path", "entries" (rows matched by this call), "pairs", "wall_s", "pairs_per_s"}``.
    """
    from tqdm.auto import tqdm

    from xtalforge.evaluation.matching import composition_key
    from xtalforge.evaluation.workers import make_task, run_tasks

    tol = tol or MatchTolerance()
    out = Path(out)
    if not Path(candidates_file).is_file():
        raise XtalforgeError(f"no candidates file at {candidates_file}")
    done = _resume(out)
    with open(candidates_file, "rb") as fh:
        total = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    ids = test.ids
    meta: dict[int, dict] = {}
    seen: set[int] = set()

    def tasks() -> Iterator[tuple[int, dict]]:
        for entry in read_jsonl(candidates_file):
            index = int(entry["index"])
            if index in done or index in seen:
                continue
            seen.add(index)
            if not 0 <= index < len(test) or ids[index] != str(entry["material_id"]):
                raise XtalforgeError(
                    f"{candidates_file}: row {index} ({entry['material_id']}) is not in {test.source or 'the test set'}"
                    " at that index; was it generated from another data file?"
                )
            atoms = test.atoms_of(index)
            meta[index] = {"material_id": ids[index], "smact_valid": _smact_valid(composition_key(atoms))}
            target = (test.lattices[index], test.frac_coords[test.offsets[index] : test.offsets[index + 1]], atoms)
            cands = [
                (np.asarray(c["lattice"], float), np.asarray(c["frac"], float).reshape(-1, 3),
                 np.asarray(c["numbers"], np.int64))
                for c in entry["candidates"][:k_max]
            ]
            yield index, make_task(target, cands, tol, timeout, engine)

    start = time.perf_counter()
    pairs = entries = 0
    with open(out, "a") as fh, tqdm(
        total=total, initial=len(done), desc="match", unit="entry", disable=not progress
    ) as bar:
        for index, records in run_tasks(tasks(), workers=workers, scheduler=scheduler):
            info = meta.pop(index)
            records.sort(key=lambda r: r["rank"])
            append_jsonl(fh, [{
                "index": index,
                "material_id": info["material_id"],
                "k_max": k_max,
                "rms": [r["rms"] for r in records],
                "timed_out": [r["status"] == "timeout" for r in records],
                "status": [r["status"] for r in records],
                "struct_valid": [bool(r["struct_valid"]) for r in records],
                "smact_valid": info["smact_valid"],
                "seconds": float(sum(r["seconds"] for r in records)),
                "cpu_seconds": float(sum(r.get("cpu_seconds", 0.0) for r in records)),
            }])
            pairs += len(records)
            entries += 1
            bar.update(1)
    wall = time.perf_counter() - start
    return {"path": str(out), "entries": entries, "pairs": pairs, "wall_s": wall,
            "pairs_per_s": pairs / wall if wall > 0 else None}


# --------------------------------------------------------------------------------------------- summaries


def template_free_mask(test: CrystalDataset, library: CrystalDataset) -> np.ndarray:
    """(len(test),) bool: rows whose exact-count anonymised formula (e.g. ``(1, 2, 4)``) has no library entry."""
    from xtalforge.composition import anonymous_formula

    known = {anonymous_formula(library.atoms_of(i).tolist()) for i in range(len(library))}
    return np.array([anonymous_formula(test.atoms_of(i).tolist()) not in known for i in range(len(test))], dtype=bool)


def _metrics(records: list[dict], ks: Sequence[int], valid_only: bool) -> dict[str, dict]:
    out = {}
    for k in ks:
        best = []
        for r in records:
            values = [
                x
                for x, valid in zip(r["rms"][:k], r["struct_valid"][:k])
                if x is not None and (not valid_only or (valid and r["smact_valid"]))
            ]
            if values:
                best.append(min(values))
        out[str(k)] = {
            "match_rate": 100.0 * len(best) / len(records) if records else None,
            "rmse": float(np.mean(best)) if best else None,
            "matched": len(best),
            "entries": len(records),
        }
    return out


def summarize_csp(
    match_jsonl: str | os.PathLike,
    ks: Sequence[int] = (1, 20),
    subset_mask: np.ndarray | Collection[int] | None = None,
    subset_name: str = "template_free",
) -> dict:
    """Match rate (%) and RMSE at each k from a matches file.

    An entry is matched at k if any of its first k candidates matches; its RMSE at k is the smallest rms among those
    candidates, averaged over matched entries. ``metrics`` counts every candidate (reference §5);
    ``metrics_valid_only`` applies DiffCSP's convention (a candidate counts only if it is structurally valid and
    the composition passes SMACT), for comparison with published tables.

    Args:
        match_jsonl: output of :func:`match_candidates`.
        ks: the k values (each at most the ``k_max`` the file was matched with).
        subset_mask: also report a subset: a bool array over test rows, or a collection of row indices
            (e.g. :func:`template_free_mask`).
        subset_name: key of the subset block in the result.
    """
    records = list({r["index"]: r for r in read_jsonl(match_jsonl)}.values())
    if not records:
        raise XtalforgeError(f"no matched entries in {match_jsonl}")
    k_max = min(r["k_max"] for r in records)
    if max(ks) > k_max:
        raise XtalforgeError(f"k={max(ks)} asked but {match_jsonl} was matched with k_max={k_max}")
    statuses = [s for r in records for s in r["status"]]
    summary: dict[str, Any] = {
        "entries": len(records),
        "pairs": len(statuses),
        "timed_out_pairs": statuses.count("timeout"),
        "composition_mismatch_pairs": statuses.count("composition"),
        "error_pairs": statuses.count("error"),
        "entries_without_candidates": sum(not r["rms"] for r in records),
        "metrics": _metrics(records, ks, valid_only=False),
        "metrics_valid_only": _metrics(records, ks, valid_only=True),
    }
    if subset_mask is not None:
        if isinstance(subset_mask, np.ndarray) and subset_mask.dtype == bool:
            chosen = {i for r in records if (i := r["index"]) < len(subset_mask) and subset_mask[i]}
        else:
            chosen = {int(i) for i in subset_mask}
        subset = [r for r in records if r["index"] in chosen]
        summary[subset_name] = {
            "entries": len(subset),
            "metrics": _metrics(subset, ks, valid_only=False),
            "metrics_valid_only": _metrics(subset, ks, valid_only=True),
        }
    return summary


# --------------------------------------------------------------------------------------------- both stages


def evaluate_csp(
    method: CSPMethod,
    test: CrystalDataset,
    ks: Sequence[int] = (1, 20),
    out_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    scheduler: Any = None,
    library: CrystalDataset | None = None,
    timeout: float | None = 30.0,
    tol: MatchTolerance | None = None,
    chunk: int = 64,
    progress: bool = True,
    given_symmetry: bool = False,
) -> dict:
    """Generate ``max(ks)`` candidates per test row, match them, summarise, and write ``report.json``.

    ``given_symmetry``: sample each row in its own space group and Wyckoff positions (see
    :func:`generate_candidates`; the setting of the DiffCSP++ / Uni-MDM "true symmetry" tables).

    Files in ``out_dir`` (default ``csp_eval/<method name>``): ``candidates.jsonl``, ``matches.jsonl``,
    ``report.json``. Re-running with the same settings resumes; different settings in an existing folder are
    refused. ``library`` (the training/template set) adds the template-free subset. ``limit`` evaluates a
    reproducible random sample of rows. Returns the report.
    """
    tol = tol or MatchTolerance()
    if given_symmetry and not getattr(method, "accepts_structures", False):
        raise XtalforgeError(f"method '{method.name}' cannot take a given symmetry (use --method symmetry)")
    ks = sorted({int(k) for k in ks})
    out_dir = Path(out_dir) if out_dir is not None else Path("csp_eval") / method.name
    settings = {
        "method": method.settings(),
        "tolerance": tol.as_dict(),
        "ks": ks,
        "candidates_per_entry": max(ks),
        "limit": limit,
        "seed": seed,
        "chunk": chunk,
        "given_symmetry": given_symmetry,
        "timeout_s_per_pair": timeout,
        "candidates_relaxed": bool(method.settings().get("relaxed", False)),
        "data_sha256": test.sha256,
        # results are resumed by row index, so the rows themselves must be the same, not only the file
        "rows_sha256": test.rows_sha256(),
    }
    _check_settings(out_dir / "settings.json", settings)
    gen = generate_candidates(method, test, max(ks), out_dir / "candidates.jsonl", seed, chunk, limit, progress,
                              given_symmetry)
    match = match_candidates(test, out_dir / "candidates.jsonl", out_dir / "matches.jsonl", max(ks), tol, workers,
                             timeout, scheduler, progress=progress)
    mask = template_free_mask(test, library) if library is not None else None
    summary = summarize_csp(out_dir / "matches.jsonl", ks, subset_mask=mask)

    gen_seconds = [r.get("seconds", 0.0) for r in read_jsonl(out_dir / "candidates.jsonl")]
    match_cpu = [r.get("cpu_seconds", r["seconds"]) for r in read_jsonl(out_dir / "matches.jsonl")]
    report = {
        "settings": settings,
        "data": {
            "source": test.source,
            "sha256": test.sha256,
            "rows_in_file": len(test),
            "entries_evaluated": summary["entries"],
            "library": None if library is None else {
                "source": library.source, "sha256": library.sha256, "entries": len(library),
                "template_free_entries_in_test": int(mask.sum()),
            },
        },
        "results": {k: v for k, v in summary.items() if k.startswith(("metrics", "template_free"))},
        "counts": {k: v for k, v in summary.items() if not k.startswith(("metrics", "template_free"))},
        "timings": {
            "generation_s_per_entry": float(np.mean(gen_seconds)) if gen_seconds else None,
            "generation_s_total": float(np.sum(gen_seconds)),
            "generation_wall_s_this_run": gen["wall_s"],
            "matching_pairs_this_run": match["pairs"],
            "matching_wall_s_this_run": match["wall_s"],
            "matching_pairs_per_s_this_run": match["pairs_per_s"],
            "matching_cpu_s_per_pair": float(np.sum(match_cpu)) / max(1, summary["pairs"]),
            "matching_workers": "dask" if scheduler is not None else (workers if workers is not None else "all cores"),
        },
        "versions": package_versions(),
        "files": {"candidates": str(out_dir / "candidates.jsonl"), "matches": str(out_dir / "matches.jsonl")},
    }
    write_json(out_dir / "report.json", report)
    return report


def _check_settings(path: Path, settings: dict) -> None:
    """Refuse to resume into a folder whose files were made with different settings."""
    fresh = to_jsonable(settings)
    if path.is_file():
        old = json.loads(path.read_text())
        if old != fresh:
            diff = sorted(k for k in set(old) | set(fresh) if old.get(k) != fresh.get(k))
            raise XtalforgeError(
                f"{path.parent} holds results made with other settings ({', '.join(diff)} differ); "
                "use another out_dir or delete it"
            )
    else:
        write_json(path, settings)


def markdown_table(report: dict) -> str:
    """A markdown table of a report from :func:`evaluate_csp`: one row per subset, convention and k."""
    s = report["settings"]
    t = s["tolerance"]
    method = s["method"].get("method", "?") if isinstance(s["method"], dict) else s["method"]
    sample = "" if s["limit"] is None else f", random sample seed {s['seed']}"
    lines = [
        f"CSP: method `{method}`, data `{Path(report['data']['source']).name}` "
        f"({report['data']['entries_evaluated']} entries{sample}), "
        f"StructureMatcher stol={t['stol']} angle_tol={t['angle_tol']} ltol={t['ltol']}, "
        f"candidates {'relaxed' if s['candidates_relaxed'] else 'not relaxed'}",
        "",
        "| subset | counted candidates | k | match rate (%) | RMSE | matched / n |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    blocks = [("all", report["results"])]
    if "template_free" in report["results"]:
        blocks.append(("template-free", report["results"]["template_free"]))
    for name, block in blocks:
        for convention, key in (("all", "metrics"), ("valid only (DiffCSP)", "metrics_valid_only")):
            for k, m in block[key].items():
                rate = "-" if m["match_rate"] is None else f"{m['match_rate']:.2f}"
                rmse = "-" if m["rmse"] is None else f"{m['rmse']:.4f}"
                lines.append(f"| {name} | {convention} | {k} | {rate} | {rmse} | {m['matched']} / {m['entries']} |")
    c = report["counts"]
    tm = report["timings"]
    lines += [
        "",
        f"pairs {c['pairs']}, timed out {c['timed_out_pairs']}, composition mismatch "
        f"{c['composition_mismatch_pairs']}, errors {c['error_pairs']}; generation "
        f"{_fmt(tm['generation_s_per_entry'])} s/entry, matching {_fmt(tm['matching_pairs_per_s_this_run'])} pairs/s",
    ]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"
