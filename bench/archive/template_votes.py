"""DAO-G samples as votes on template candidates: can a pool of generated structures fix the template ranker's k=1?

For each test entry: the template candidates ``predict --method template`` gives (shipped library and ranker, up to
20) and a pool of DAO-G samples (``--pool``, from a ``bench/dao_g_sampler_options.py`` run with ``--k 1,20,<pool>``)
are matched against the true structure and against each other (``pairwise_matches`` on the union, benchmark
tolerances; implausible candidates match nothing, as in :func:`xtalforge.ranking.consensus`), and the pool gets CHGNet
static energies (the consensus tie-break). Per-entry records go to ``runs/template_votes/<name>/records.jsonl``
(resumable); the policies are then computed from them without any more matching:

* ``votes >= m``: a template candidate that at least ``m`` pool samples match moves ahead of those with fewer
  (most votes first, template order within equal votes); ``m = inf`` is the template order.
* ``leader >= c``: if no template candidate has ``m`` votes, the pool's consensus leader that matches no template
  candidate goes first when at least ``c`` other samples match it.
* ``r`` new leaders: the last ``r`` of the 20 slots go to the pool's consensus leaders (most agreed-on distinct
  structures first) that match no template candidate (an entry with a short template list gets more).

Chosen on ``--rows tune`` (100 entries outside the model cards' 200), reported on ``--rows report`` (those 200).

Result (2026-12-03, MP-20 bi/ternary, the 100 tune entries, shipped flow weights, pools of 60 samples with 50 Euler
steps, ``bench/results/template_votes_tune.json``): templates alone k=1 / k=20 73 / 91; votes hurt k=1 at every
threshold (m = 1 / 3 / 5: 57 / 59 / 61; m = 5 against the template order 5 entries gained, 17 lost), and so does
putting the pool's leader first when no template candidate has votes (c = 20 / 10: 70 / 55); 5 slots for new
leaders gave k=20 93 (2 gained, 0 lost), and 91 (no gain) on a second pool of the same entries drawn with 100 steps
(``template_votes_tune_steps100.json``). Where a template exists, DAO-G's agreement is not evidence the ranker lacks,
so ``auto`` keeps the template order and spends no samples there. On the 200 report rows (2026-12-04,
``template_votes_report.json``, scored once): templates alone 72.5 / 87.5, m = 1 / 2 k=1 56.0 / 58.5, c = 20 69.5,
r = 0 / 2 / 5 / 10 k=20 88.5 / 88.0 / 88.0 / 88.5: the tune rows' answer holds.

Usage::

    python bench/template_votes.py --rows tune --limit 100 --pool 60 \
        --dao-g-candidates runs/bench_dao_g_sampler_options/<run>/candidates_test_index.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # archived: the kept bench/ scripts it imports
from dao_g_sampler_options import rows_for  # noqa: I001  (sibling scripts)
from ranking import consensus_matches, distinct_leaders, match

from xtalforge.crystal import Crystal
from xtalforge.data.protocol import load_split
from xtalforge.evaluation.csp import _resume, append_jsonl, read_jsonl
from xtalforge.evaluation.matching import MatchTolerance
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.evaluation.workers import pairwise_matches
from xtalforge.ranking import chgnet_energy, consensus_order, plausible

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "template_votes.json"
K = 20
M_GRID = (1, 2, 3, 5, np.inf)
C_GRID = (np.inf, 3, 5, 10, 20)
R_GRID = (0, 2, 5, 10)


def pool_of(path: Path, rows: list[int], test, pool: int) -> dict[int, list[Crystal]]:
    """The first ``pool`` DAO-G samples of each requested row of a ``candidates_test_index.jsonl``."""
    wanted, out = set(rows), {}
    for entry in read_jsonl(path):
        i = int(entry["index"])
        if i in wanted and entry.get("candidates"):
            if entry["material_id"] != test.ids[i]:
                raise SystemExit(f"{path} row {i} is {entry['material_id']}, test has {test.ids[i]}")
            out[i] = [Crystal(np.array(c["lattice"]), np.array(c["frac"]), np.array(c["numbers"]))
                      for c in entry["candidates"][:pool]]
    return out


def record(test, row: int, templates: list[Crystal], pool: list[Crystal], tol: MatchTolerance, threads: int) -> dict:
    t = time.perf_counter()
    union = templates + pool
    rms = match(test, row, union, tol)
    ok = [plausible(c) for c in union]
    energy = np.full(len(union), np.nan)
    energy[len(templates):] = chgnet_energy(pool, threads=threads)
    idx = [i for i, good in enumerate(ok) if good]
    adj = np.zeros((len(union), len(union)), dtype=bool)
    adj[np.ix_(idx, idx)] = pairwise_matches([(union[i].lattice, union[i].frac_coords, union[i].numbers)
                                              for i in idx], tol)
    return {"index": row, "material_id": test.ids[row], "num_atoms": int(test.num_atoms[row]),
            "n_template": len(templates), "n_pool": len(pool), "rms": rms, "plausible": ok,
            "chgnet": [float(e) if np.isfinite(e) else None for e in energy],
            "matches": [np.flatnonzero(a).tolist() for a in adj], "seconds": time.perf_counter() - t}


def pool_consensus(rec: dict) -> tuple[np.ndarray, np.ndarray]:
    """The record's (n, n) match matrix over templates + pool and the pool's consensus order (indices into the
    pool), as ``predict --method dao-g`` ranks it; computed once per record for every policy."""
    nt = rec["n_template"]
    adj = consensus_matches(rec)
    energy = np.array([np.inf if e is None else e for e in rec["chgnet"][nt:]], dtype=np.float64)
    return adj, consensus_order(adj[nt:, nt:], energy)


def policy_list(rec: dict, adj: np.ndarray, order: np.ndarray, m: float, c: float, r: int, k: int = K) -> list[int]:
    """Union indices of the first ``k`` candidates under the policy (m, c, r) of the module docstring, given the
    record's :func:`pool_consensus`."""
    nt = rec["n_template"]
    votes = adj[:nt, nt:].sum(axis=1)
    counted = np.where(votes >= m, votes, 0)
    templates = sorted(range(nt), key=lambda i: (-counted[i], i))
    pool_adj = adj[nt:, nt:]
    # the distinct structures of the pool, most agreed-on first, that no template candidate is
    leaders = [int(j) for j in distinct_leaders(pool_adj, order)
               if not adj[nt + j, :nt].any() and rec["plausible"][nt + j]]
    first = []
    if leaders and (not counted.any()) and pool_adj[leaders[0]].sum() >= c:
        first = [nt + leaders.pop(0)]
    new = [nt + j for j in leaders]
    keep = k - len(first) - min(r, len(new))
    return (first + templates[:keep] + new + templates[keep:])[:k]


def summarize(records: list[dict]) -> dict:
    def rate(hits: list[bool]) -> float:
        return 100.0 * float(np.mean(hits)) if hits else float("nan")

    views = [pool_consensus(rec) for rec in records]
    grid = []
    for m, c, r in itertools.product(M_GRID, C_GRID, R_GRID):
        lists = [policy_list(rec, *view, m, c, r) for rec, view in zip(records, views)]
        k1 = [bool(ls) and rec["rms"][ls[0]] is not None for rec, ls in zip(records, lists)]
        k20 = [any(rec["rms"][i] is not None for i in ls) for rec, ls in zip(records, lists)]
        grid.append({"m": None if np.isinf(m) else int(m), "c": None if np.isinf(c) else int(c), "r": r,
                     "k1": rate(k1), "k20": rate(k20), "hits_k1": [rec["index"] for rec, h in zip(records, k1) if h],
                     "hits_k20": [rec["index"] for rec, h in zip(records, k20) if h]})
    alone = [policy_list(rec, *view, np.inf, np.inf, 0)[: rec["n_template"]] for rec, view in zip(records, views)]
    alone_k1 = [bool(ls) and rec["rms"][ls[0]] is not None for rec, ls in zip(records, alone)]
    nt = [rec["n_template"] for rec in records]
    pooled = [(rec, order) for rec, (_, order) in zip(records, views) if rec["n_pool"]]
    pool_k1 = [rec["rms"][rec["n_template"] + order[0]] is not None for rec, order in pooled]
    pool_k20 = [any(rec["rms"][rec["n_template"] + j] is not None for j in order[:K]) for rec, order in pooled]
    oracle_t = [any(x is not None for x in rec["rms"][: rec["n_template"]]) for rec in records]
    oracle_all = [any(x is not None for x in rec["rms"]) for rec in records]
    return {"entries": len(records), "entries_without_templates": int(sum(n == 0 for n in nt)),
            "templates_alone": {"k1": rate(alone_k1), "k20": rate(oracle_t)},
            "dao_g_consensus_alone": {"entries": len(pooled), "k1": rate(pool_k1), "k20": rate(pool_k20)},
            "template_oracle": rate(oracle_t), "union_oracle": rate(oracle_all),
            "s_per_entry": float(np.mean([rec["seconds"] for rec in records])) if records else None, "grid": grid}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", default="mp_20_biternary")
    p.add_argument("--rows", choices=["tune", "report", "random"], default="tune")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--max_atoms", type=int, default=20, help="rows with larger cells are left out (no DAO-G pool)")
    p.add_argument("--pool", type=int, default=60)
    p.add_argument("--dao-g-candidates", required=True)
    p.add_argument("--part", default="0/1", help="i/n: this process takes every n-th row from the i-th (2 cores)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summarize", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    import torch

    from xtalforge.methods import get_method

    torch.set_num_threads(args.threads)
    test = load_split(args.bench, "test")
    rows = [int(r) for r in rows_for(len(test), args.rows, args.limit) if test.num_atoms[r] <= args.max_atoms]
    source = Path(args.dao_g_candidates).resolve()
    if not source.is_file():
        raise SystemExit(f"no DAO-G candidates at {source}")
    name = f"{args.bench}_{args.rows}{args.limit}_{source.parent.name}_pool{args.pool}"
    run = ROOT / "runs" / "template_votes" / name
    files = sorted(run.glob("records*.jsonl"))
    tol = MatchTolerance()
    wall = time.perf_counter()
    if not args.summarize:
        part, parts = map(int, args.part.split("/"))
        mine = rows[part::parts]
        path = run / f"records_{part}.jsonl"
        # only this part's file may be repaired; another part may be appending to its own right now
        done = {rec["index"] for f in files if f != path for rec in read_jsonl(f)} | _resume(path)
        todo = [r for r in mine if r not in done]
        pools = pool_of(source, todo, test, args.pool)
        method = get_method("template")
        from tqdm.auto import tqdm

        with open(path, "a") as fh:
            for r in tqdm(todo, desc="template votes"):
                templates = method.generate([test.atoms_of(r).tolist()], K, 0)[0]
                append_jsonl(fh, [record(test, r, templates, pools.get(r, []), tol, args.threads)])
        files = sorted(run.glob("records*.jsonl"))
    wanted = set(rows)
    records = sorted((rec for f in files for rec in read_jsonl(f) if rec["index"] in wanted), key=lambda x: x["index"])
    summary = summarize(records)
    best1 = max(summary["grid"], key=lambda g: g["k1"])
    base = summary["templates_alone"]
    print(f"{summary['entries']} entries ({len(rows)} wanted); templates alone k=1 {base['k1']:.1f} k=20 "
          f"{base['k20']:.1f}; template oracle {summary['template_oracle']:.1f}, with the pool "
          f"{summary['union_oracle']:.1f}; {summary['s_per_entry'] or 0:.1f} s per entry")
    alone = summary["dao_g_consensus_alone"]
    print(f"DAO-G pool alone, ranked by consensus ({alone['entries']} entries): k=1 {alone['k1']:.1f}, "
          f"top 20 {alone['k20']:.1f}")
    print("  m    c    r |  k=1   k=20")
    for g in summary["grid"]:
        print(f"{g['m']!s:>4} {g['c']!s:>4} {g['r']:>3} | {g['k1']:5.1f} {g['k20']:6.1f}")
    print(f"best k=1: m={best1['m']} c={best1['c']} r={best1['r']} {best1['k1']:.1f}")
    settings = {**vars(args), "run_dir": str(run.relative_to(ROOT)), "tolerance": tol.as_dict(),
                "templates": "get_method('template') defaults (shipped library and ranker)", "k": K}
    write_json(args.out, {"settings": settings, "data": {"test_rows": len(test), "rows": len(rows)},
                          "results": summary, "wall_s_this_call": time.perf_counter() - wall,
                          "versions": package_versions()})


if __name__ == "__main__":
    main()
