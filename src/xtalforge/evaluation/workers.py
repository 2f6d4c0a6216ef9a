"""Matching entries in child processes with a per-pair time limit, on the local cores or on Dask workers.

A pathological pair (thousands of near-equivalent lattice mappings) must not hang an evaluation: every pair runs
under a time limit and a pair past it counts as no match, with status ``"timeout"``. Python can only interrupt code
with ``SIGALRM`` in a process's main thread, and Dask runs tasks in worker threads, so matching never runs in the
calling thread. Every driving thread (a local pool thread, or a Dask worker thread) owns a :class:`MatchWorker`: a
plain child process (``python -m xtalforge.evaluation.workers``) that reads entries on stdin and answers one message
per pair on stdout.

* In the child's main thread ``setitimer`` interrupts a pair at ``timeout`` seconds (the common case; the child
  carries on with the next pair).
* If the child stays silent for ``timeout`` plus a grace period (a long C call that cannot be interrupted, or a
  crash), the driving thread kills it, records the entry's remaining pairs as timed out and starts a fresh child.

The same code path therefore serves local runs (threads + children) and Dask (worker threads + children); a plain
subprocess is used rather than ``multiprocessing`` because Dask worker processes are daemonic and may not fork
``multiprocessing`` children. ``workers=0`` matches in the calling thread (time limit only in the main thread).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from xtalforge.evaluation.matching import (
    MatchTolerance,
    PairMatcher,
    composition_key,
    preload,
    structure_is_valid,
    to_structure,
)

#: Extra seconds a new child may take (importing pymatgen) before its first answer is due.
STARTUP_GRACE = 120.0


def default_workers() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------- one entry's pairs


class PairTimeout(Exception):
    """A pair exceeded its time limit."""


_armed = False


def _on_alarm(signum, frame) -> None:
    if _armed:  # an alarm that lands after the pair finished is ignored
        raise PairTimeout()


class _TimeLimit:
    """``with _TimeLimit(seconds):`` raises :class:`PairTimeout` inside the block after ``seconds`` (main thread,
    SIGALRM handler installed). ``None`` or 0 disables it."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        global _armed
        if self.seconds:
            _armed = True
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc) -> None:
        global _armed
        if self.seconds:
            _armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)


def make_task(
    target: tuple, candidates: list[tuple], tol: MatchTolerance, timeout: float | None, engine: str = "fast"
) -> dict:
    """A picklable unit of work: one target ``(lattice (3,3), frac (N,3), numbers (N,))`` and its candidates in
    rank order; ``timeout`` in seconds per pair (None: no limit)."""
    return {"target": target, "candidates": candidates, "tol": tol.as_dict(), "timeout": timeout, "engine": engine}


def match_entry(task: dict, matcher: PairMatcher, emit: Callable[[dict], None], use_alarm: bool = True) -> None:
    """Match every candidate of ``task`` against its target, calling ``emit`` with one record per candidate:
    ``{"rank", "rms" (float or None), "status" ("match" | "no_match" | "composition" | "timeout" | "error"),
    "struct_valid", "seconds" (wall), "cpu_seconds"}``. ``use_alarm`` needs the main thread, with
    :func:`_on_alarm` installed as the SIGALRM handler."""
    target = task["target"]
    key = composition_key(target[2])
    limit = task["timeout"] if use_alarm else None
    prepared = None
    target_timed_out = False
    for rank, (lattice, frac, numbers) in enumerate(task["candidates"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        record: dict[str, Any] = {"rank": rank, "rms": None, "status": "no_match", "struct_valid": False}
        try:
            record["struct_valid"] = structure_is_valid(lattice, frac)
            if composition_key(numbers) != key:
                record["status"] = "composition"  # different reduced composition: no mapping can exist
            elif target_timed_out:
                record["status"] = "timeout"
            else:
                with _TimeLimit(limit):
                    if prepared is None:
                        try:
                            prepared = matcher.prepare(to_structure(*target))
                        except PairTimeout:
                            target_timed_out = True
                            raise
                    result = matcher.rms(matcher.prepare(to_structure(lattice, frac, numbers)), prepared)
                if result is not None:
                    record.update(rms=float(result[0]), status="match")
        except PairTimeout:
            record["status"] = "timeout"
        except Exception as exc:  # a malformed candidate is no match, as in DiffCSP's evaluation, but is recorded
            record.update(status="error", error=f"{type(exc).__name__}: {exc}"[:200])
        record["seconds"] = time.perf_counter() - start
        record["cpu_seconds"] = time.process_time() - cpu_start
        emit(record)


@contextmanager
def _alarm_handler() -> Iterator[bool]:
    """Install :func:`_on_alarm` as the SIGALRM handler for the block if this is the main thread (the only one that
    can receive it) and restore the previous one after; yields whether per-pair time limits can be enforced."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _on_alarm) if main else None
    try:
        yield main
    finally:
        if main:
            signal.signal(signal.SIGALRM, previous)


def pairwise_matches(structures: list[tuple], tol: MatchTolerance | None = None, timeout: float | None = 1.0
                     ) -> np.ndarray:
    """(k, k) bool: which of ``k`` structures ``(lattice (3,3), frac (N,3), numbers (N,))`` match each other
    (``get_rms_dist`` not None under ``tol``; diagonal False), in the calling thread.

    Each structure is reduced once; a pair (or a reduction) past ``timeout`` seconds counts as no match, a time
    limit that only the main thread can enforce (elsewhere pairs run unlimited). Pairs of different reduced
    composition are skipped. Asymmetric matcher decisions at the tolerance edge count as a match both ways.
    """
    matcher = PairMatcher(tol or MatchTolerance())
    preload()
    k = len(structures)
    adj = np.zeros((k, k), dtype=bool)
    with _alarm_handler() as main:
        limit = timeout if main else None

        def guarded(fn, *args):
            try:
                with _TimeLimit(limit):
                    return fn(*args)
            except PairTimeout:
                return None
            except Exception:  # a malformed structure matches nothing, as in match_entry
                return None

        keys = [composition_key(s[2]) for s in structures]
        reduced = [guarded(lambda s: matcher.prepare(to_structure(*s)), s) for s in structures]
        for a in range(k):
            for b in range(a + 1, k):
                if reduced[a] is not None and reduced[b] is not None and keys[a] == keys[b]:
                    adj[a, b] = adj[b, a] = bool(guarded(matcher.matches, reduced[a], reduced[b]))
    return adj


# --------------------------------------------------------------------------------------------- the child process


def _write_all(fh, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[fh.write(view) :]


def _read_exact(fh, size: int) -> bytes:
    parts, remaining = [], size
    while remaining:
        chunk = fh.read(remaining)
        if not chunk:
            raise EOFError
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _send(fh, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fh, struct.pack("<Q", len(data)) + data)


def _recv(fh) -> Any:
    (size,) = struct.unpack("<Q", _read_exact(fh, 8))
    return pickle.loads(_read_exact(fh, size))


def _child_main() -> None:
    """Loop of the child process: read a task, answer one record per pair, then ``{"done": True}``."""
    import warnings

    warnings.simplefilter("ignore")
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the protocol stream
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    preload()
    signal.signal(signal.SIGALRM, _on_alarm)
    matchers: dict[tuple, PairMatcher] = {}
    while True:
        try:
            task = _recv(inp)
        except EOFError:  # the parent closed the pipe or exited
            return
        key = (tuple(sorted(task["tol"].items())), task["engine"])
        if key not in matchers:
            matchers[key] = PairMatcher(MatchTolerance(**task["tol"]), engine=task["engine"])
        match_entry(task, matchers[key], lambda record: _send(out, record))
        _send(out, {"done": True})


class MatchWorker:
    """A child process that matches entries for one driving thread, killed and restarted when it hangs.

    Args:
        grace: seconds of silence tolerated beyond the per-pair timeout before the child is killed (at least the
            timeout itself is added, so the hard limit is ``timeout + max(grace, timeout)``).
    """

    def __init__(self, grace: float = 10.0) -> None:
        self.grace = grace
        self.proc: subprocess.Popen | None = None
        self._fresh = True
        self.restarts = 0

    def _start(self) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # so the child imports this xtalforge, installed or not
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xtalforge.evaluation.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
        )
        self._fresh = True

    def run(self, task: dict, hard_limit: float | None = None) -> list[dict]:
        """Records of ``task``'s pairs (see :func:`match_entry`). ``hard_limit`` overrides the seconds of silence
        after which the child is killed."""
        candidates = task["candidates"]
        if not candidates:
            return []
        if hard_limit is None and task["timeout"]:
            hard_limit = task["timeout"] + max(self.grace, task["timeout"])
        for attempt in (0, 1):
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                _send(self.proc.stdin, task)
                break
            except OSError:  # the child died between entries: start another once
                self.kill()
                if attempt:
                    raise
        records: list[dict] = []
        while True:
            wait_s = None if hard_limit is None else hard_limit + (STARTUP_GRACE if self._fresh else 0.0)
            ready, _, _ = select.select([self.proc.stdout], [], [], wait_s)
            if not ready:
                self.kill()
                return records + _unfinished(candidates, len(records), "timeout", hard_limit)
            try:
                message = _recv(self.proc.stdout)
            except EOFError:  # the child crashed (e.g. a segfault in compiled code)
                self.kill()
                return records + _unfinished(candidates, len(records), "error", 0.0)
            self._fresh = False
            if message.get("done"):
                return records
            records.append(message)

    def kill(self) -> None:
        if self.proc is not None:
            self.restarts += 1
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        """End the child (closing its stdin lets it exit on its own)."""
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def _unfinished(candidates: list[tuple], start: int, status: str, seconds: float | None) -> list[dict]:
    out = []
    for rank in range(start, len(candidates)):
        lattice, frac, _ = candidates[rank]
        try:
            valid = structure_is_valid(lattice, frac)
        except Exception:
            valid = False
        out.append({"rank": rank, "rms": None, "status": status, "struct_valid": valid, "seconds": seconds or 0.0,
                    "cpu_seconds": 0.0, "killed": True})
    return out


# --------------------------------------------------------------------------------------------- schedulers

_thread_state = threading.local()


def _thread_worker(registry: list[MatchWorker] | None = None) -> MatchWorker:
    worker = getattr(_thread_state, "worker", None)
    if worker is None:
        worker = _thread_state.worker = MatchWorker()
        if registry is not None:
            registry.append(worker)
    return worker


def dask_match_task(task: dict) -> list[dict]:
    """The Dask task: match one entry through this worker thread's child process (kept for later tasks)."""
    return _thread_worker().run(task)


def run_tasks(
    tasks: Iterable[tuple[Any, dict]], workers: int | None = None, scheduler: Any = None
) -> Iterator[tuple[Any, list[dict]]]:
    """Match ``(key, task)`` pairs, yielding ``(key, records)`` as entries finish (not in input order).

    Args:
        tasks: an iterable (read lazily, a bounded number in flight).
        workers: local child processes (default: all cores); 0 = in the calling thread.
        scheduler: a Dask ``distributed.Client`` or a scheduler address (``"tcp://host:8786"``); overrides workers.
    """
    if scheduler is not None:
        yield from _run_dask(tasks, scheduler)
    elif workers == 0:
        yield from _run_inline(tasks)
    else:
        yield from _run_local(tasks, workers or default_workers())


def _run_inline(tasks: Iterable[tuple[Any, dict]]) -> Iterator[tuple[Any, list[dict]]]:
    preload()
    matchers: dict[tuple, PairMatcher] = {}
    with _alarm_handler() as main:
        for key, task in tasks:
            mkey = (tuple(sorted(task["tol"].items())), task["engine"])
            if mkey not in matchers:
                matchers[mkey] = PairMatcher(MatchTolerance(**task["tol"]), engine=task["engine"])
            records: list[dict] = []
            match_entry(task, matchers[mkey], records.append, use_alarm=main)
            yield key, records


def _run_local(tasks: Iterable[tuple[Any, dict]], workers: int) -> Iterator[tuple[Any, list[dict]]]:
    registry: list[MatchWorker] = []
    source = iter(tasks)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="xtalforge-match")
    pending: dict = {}

    def fill() -> None:
        while len(pending) < 2 * workers:
            try:
                key, task = next(source)
            except StopIteration:
                return
            pending[pool.submit(lambda t: _thread_worker(registry).run(t), task)] = key

    try:
        fill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                key = pending.pop(future)
                yield key, future.result()
            fill()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for worker in registry:
            worker.close()


def _run_dask(tasks: Iterable[tuple[Any, dict]], scheduler: Any) -> Iterator[tuple[Any, list[dict]]]:
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        window = 2 * max(1, sum(client.nthreads().values()))
        source = iter(tasks)
        keys: dict[str, Any] = {}
        queue = as_completed()

        def submit_next() -> None:
            try:
                key, task = next(source)
            except StopIteration:
                return
            future = client.submit(dask_match_task, task, pure=False)
            keys[future.key] = key
            queue.add(future)

        for _ in range(window):
            submit_next()
        for future in queue:
            key = keys.pop(future.key)
            records = future.result()
            submit_next()
            yield key, records
    finally:
        if client is not scheduler:
            client.close()


if __name__ == "__main__":
    _child_main()
