"""Ranking without an oracle: rank-1-of-20 match rate under several rankings vs oracle-of-20 on a test split.

For ``--n`` random test entries of ``--bench`` (default MP-20 bi/ternary; ``sample_indices(len(test), n, seed)``)
and 20 candidates per entry from

* ``template``: raw template candidates (pooled library, dedupe off), read from the full-test run
  ``runs/template_csp/mp_20_biternary_pooled_none_nodedupe_n6000_s0/candidates.jsonl`` (entries missing there are
  generated here with the same settings);
* ``dao-g``: DAO-G samples (mp20 weights, pc 50 steps), read from
  ``runs/bench_dao_g/mp_20_biternary_mp20_dao-g_pc50_t100_r20_n100_k20/candidates.jsonl`` (covers
  ``sample_indices(5676, 100, 0)``; entries it lacks are skipped and counted),

every candidate is matched against the true structure (xtalforge's evaluation matching, StructureMatcher stol 0.5,
angle_tol 10, ltol 0.3) and scored by each ranking of :mod:`xtalforge.ranking`: the method's own order, DAO-P energy,
CHGNet static energy. Reported: the share of entries whose rank-1 candidate matches, next to oracle-of-20 (any of the
20 matches). ``chgnet-relax`` (CHGNet energy after ``--relax-steps`` FIRE steps; the relaxed structure is the one
matched) is run on the ``--relax-top`` candidates with the lowest static CHGNet energy, for a random subset of
``--relax-n`` entries, because relaxing all 20 of every entry costs ~1 s per FIRE step of a DAO-G sample here.

Per-entry results go to ``runs/ranking/<bench>_n<n>_s<seed>/<source>_{static,relax}.jsonl`` (resumable; rerun the
same command to continue). ``--summarize`` only rebuilds the table and JSON from what is there.

Usage::

    nice -n 10 python bench/ranking.py --n 100 --relax-n 20 --relax-top 3 --relax-steps 20 --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from xtalforge.crystal import Crystal
from xtalforge.data.protocol import load_split, sample_indices
from xtalforge.evaluation.csp import _resume, append_jsonl, read_jsonl
from xtalforge.evaluation.matching import MatchTolerance
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.evaluation.workers import pairwise_matches
from xtalforge.ranking import (
    chgnet_energy,
    chgnet_relaxed_energy,
    consensus_order,
    consensus_position,
    dao_p_energy,
    method_score,
    order_of,
    plausible,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "ranking_mp20.json"
DEFAULT_BENCH = "mp_20_biternary"
SOURCES = {
    "template": ROOT / "runs/template_csp/mp_20_biternary_pooled_none_nodedupe_n6000_s0/candidates.jsonl",
    "dao-g": ROOT / "runs/bench_dao_g/mp_20_biternary_mp20_dao-g_pc50_t100_r20_n100_k20/candidates.jsonl",
}
K = 20
#: Rankings computed from the static per-candidate values (name -> values, lower is better).
STATIC_RANKINGS = ("score", "dao-p", "dao-p+plausible", "chgnet", "consensus")


def load_candidates(source: str, rows: list[int], test, bench: str, k: int = K) -> dict[int, list[Crystal]]:
    """Up to ``k`` candidates per requested test row, in the method's own order."""
    wanted, out = set(rows), {}
    for entry in read_jsonl(SOURCES[source]):
        i = int(entry["index"])
        if i in wanted and entry.get("candidates"):
            if entry["material_id"] != test.ids[i]:
                raise SystemExit(f"{SOURCES[source]} row {i} is {entry['material_id']}, test has {test.ids[i]}")
            out[i] = [Crystal(np.array(c["lattice"]), np.array(c["frac"]), np.array(c["numbers"]),
                              {"score": c["score"] if c["score"] is not None else -np.inf}) for c in
                      entry["candidates"][:k]]
    missing = [r for r in rows if r not in out]
    if missing and source == "template":  # generate what the stored run lacks, with the run's settings
        from xtalforge.methods import get_method
        from xtalforge.templates import benchmark_library

        method = get_method("template", library=benchmark_library(bench, pooled=True), dedupe=False)
        for r, cands in zip(missing, method.generate([test.atoms_of(r).tolist() for r in missing], k, 0)):
            if cands:  # a template-free entry has none
                out[r] = cands
    return out


def match(test, row: int, crystals: list[Crystal | None], tol: MatchTolerance) -> list[float | None]:
    """rms distance of each crystal to the true structure of ``row`` (None: no match or no crystal)."""
    from xtalforge.evaluation.workers import make_task, run_tasks

    idx = [i for i, c in enumerate(crystals) if c is not None]
    target = (test.lattices[row], test.frac_coords[test.offsets[row]: test.offsets[row + 1]], test.atoms_of(row))
    cands = [(crystals[i].lattice, crystals[i].frac_coords, crystals[i].numbers) for i in idx]
    out: list[float | None] = [None] * len(crystals)
    for _, records in run_tasks(iter([(row, make_task(target, cands, tol, 30.0))]), workers=0):
        for r in records:
            out[idx[r["rank"]]] = r["rms"]
    return out


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def static_record(test, row: int, cands: list[Crystal], tol: MatchTolerance, threads: int) -> dict:
    seconds = {}
    t = time.perf_counter()
    rms = match(test, row, cands, tol)
    seconds["match"] = time.perf_counter() - t
    t = time.perf_counter()
    valid = [plausible(c) for c in cands]
    seconds["plausible"] = time.perf_counter() - t
    t = time.perf_counter()
    e_dao = dao_p_energy(cands, threads=threads)
    seconds["dao-p"] = time.perf_counter() - t
    t = time.perf_counter()
    e_chg = chgnet_energy(cands, threads=threads)
    seconds["chgnet"] = time.perf_counter() - t
    t = time.perf_counter()
    adj = pairwise_matches([(c.lattice, c.frac_coords, c.numbers) for c in cands], tol)
    seconds["consensus"] = time.perf_counter() - t
    return {"index": row, "material_id": test.ids[row], "num_atoms": int(cands[0].num_atoms), "k": len(cands),
            "rms": rms, "plausible": valid, "score": _nan_to_none(-method_score(cands)),
            "dao_p": _nan_to_none(e_dao), "chgnet": _nan_to_none(e_chg),
            "matches": [np.flatnonzero(row).tolist() for row in adj], "seconds": seconds}


def relax_record(test, row: int, cands: list[Crystal], static: dict, tol: MatchTolerance, top: int, steps: int,
                 threads: int) -> dict:
    """Relax the ``top`` candidates with the lowest static CHGNet energy; match the relaxed structures."""
    chg = np.array([np.nan if v is None else v for v in static["chgnet"]])
    chosen = [int(i) for i in order_of(chg)[:top] if np.isfinite(chg[i])]
    t = time.perf_counter()
    relaxed, energies = chgnet_relaxed_energy([cands[i] for i in chosen], steps=steps, threads=threads)
    t_relax = time.perf_counter() - t
    t = time.perf_counter()
    rms = match(test, row, relaxed, tol)
    return {"index": row, "material_id": test.ids[row], "relaxed_of": chosen, "energy": _nan_to_none(energies),
            "rms": rms, "steps": [None if c is None else c.properties.get("relax_steps") for c in relaxed],
            "seconds": {"chgnet-relax": t_relax, "match": time.perf_counter() - t}}


def consensus_matches(rec: dict, p: int | None = None) -> np.ndarray:
    """(p, p) bool matches among the first ``p`` (default all) candidates of a static record, implausible
    candidates matching nothing, as in :func:`xtalforge.ranking.consensus`."""
    p = len(rec["rms"]) if p is None else p
    adj = np.zeros((p, p), dtype=bool)
    for i, js in enumerate(rec["matches"][:p]):
        adj[i, [j for j in js if j < p]] = True
    ok = np.array(rec["plausible"][:p], dtype=bool)
    return adj & ok[:, None] & ok[None, :]


def distinct_leaders(matches: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The distinct structures at the head of a :func:`~xtalforge.ranking.leaders_first` order (``matches``: (k, k)
    bool, row j = the candidates j covers): the prefix up to the first candidate that one before it covers."""
    covered = np.triu(matches[np.ix_(order, order)], k=1).any(axis=0)
    return order[: int(np.argmax(covered)) if covered.any() else len(order)]


def values_of(rec: dict, ranking: str) -> np.ndarray:
    def arr(key: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in rec[key]], dtype=np.float64)

    if ranking == "score":  # the method's own order, as stored
        return np.arange(len(rec["rms"]), dtype=np.float64)
    if ranking == "dao-p":
        return arr("dao_p")
    if ranking == "dao-p+plausible":
        return np.where(rec["plausible"], arr("dao_p"), np.nan)
    if ranking == "consensus":  # the position in consensus_order (matches of the other candidates, then CHGNet)
        return consensus_position(consensus_matches(rec), arr("chgnet"))
    return arr("chgnet")


def complement(template: list[dict], generated: list[dict]) -> dict:
    """What DAO-G samples could add at k=1 to the template list, on the entries DAO-G sampled (an entry without
    template candidates counts as a template miss): the template's own rank-1, DAO-G's CHGNet rank-1, the entries
    only the latter gets right (the most any rule choosing between the two rank-1 candidates could add), and one
    rule with nothing to tune: the lower static CHGNet energy wins."""
    tmpl = {r["index"]: r for r in template}
    empty = {"rms": [None], "chgnet": [None], "score": [0.0]}  # no template candidate: a miss at infinite energy
    both = [(tmpl.get(g["index"], empty), g) for g in generated]
    if not both:
        return {"entries": 0}

    def first(rec: dict, ranking: str) -> int:
        return int(order_of(values_of(rec, ranking))[0])

    def energy(rec: dict, j: int) -> float:
        return np.inf if rec["chgnet"][j] is None else float(rec["chgnet"][j])

    t_hit, g_hit, rule_hit = [], [], []
    for t, g in both:
        jt, jg = first(t, "score"), first(g, "chgnet")
        t_hit.append(t["rms"][jt] is not None)
        g_hit.append(g["rms"][jg] is not None)
        rule_hit.append(g_hit[-1] if energy(g, jg) < energy(t, jt) else t_hit[-1])
    t_hit, g_hit, rule_hit = map(np.array, (t_hit, g_hit, rule_hit))

    def pct(hits: np.ndarray) -> float:
        return 100.0 * float(np.mean(hits))

    return {"entries": len(both), "with_template_candidates": sum(g["index"] in tmpl for g in generated),
            "template_rank1": pct(t_hit), "dao-g_chgnet_rank1": pct(g_hit),
            "dao-g_only": pct(g_hit & ~t_hit), "template_only": pct(t_hit & ~g_hit),
            "lower_chgnet_energy_rank1": pct(rule_hit)}


def pool_curve(static: list[dict], sizes: list[int]) -> list[dict]:
    """Match rates (%) when only the first ``p`` candidates of each entry are drawn, for each pool size ``p``:
    rank-1 by consensus and by CHGNet, any of the consensus top 20 (``--pool`` > 20: more samples, the 20 most
    agreed-on distinct ones kept), and oracle-of-p. Samples are i.i.d., so a prefix is a smaller pool; an entry
    whose sampler dropped degenerate samples ranks the fewer it has, as ``predict`` would."""
    out = []
    for pool in sizes:
        r1, c1, top20, oracle, short = [], [], [], [], 0
        for rec in static:
            p = min(pool, rec["k"])
            short += p < pool
            hit = np.array([x is not None for x in rec["rms"][:p]])
            chg = np.array([np.nan if v is None else v for v in rec["chgnet"][:p]], dtype=np.float64)
            order = consensus_order(consensus_matches(rec, p), chg)
            r1.append(hit[order[0]])
            c1.append(hit[order_of(chg)[0]])
            top20.append(hit[order[:20]].any())
            oracle.append(hit.any())
        out.append({"pool": pool, "entries": len(static), "entries_with_fewer": short,
                    "rank1_consensus": 100.0 * float(np.mean(r1)),
                    "rank1_chgnet": 100.0 * float(np.mean(c1)), "top20_consensus": 100.0 * float(np.mean(top20)),
                    "oracle": 100.0 * float(np.mean(oracle))})
    return out


def summarize(static: list[dict], relax: list[dict]) -> dict:
    """Rank-1 match rates (%) per ranking and oracle-of-k, on all static entries and on the relaxed subset."""
    def rates(records: list[dict]) -> dict:
        out = {"entries": len(records)}
        if not records:
            return out
        for r in STATIC_RANKINGS:
            hits = [rec["rms"][int(order_of(values_of(rec, r))[0])] is not None for rec in records]
            out[f"rank1_{r}"] = 100.0 * float(np.mean(hits))
        out["oracle"] = 100.0 * float(np.mean([any(x is not None for x in rec["rms"]) for rec in records]))
        # a uniformly random pick of one candidate: the expected rank-1 rate with no ranking at all
        out["random_expected"] = 100.0 * float(np.mean([np.mean([x is not None for x in rec["rms"]])
                                                        for rec in records]))
        return out

    by_index = {r["index"]: r for r in static}
    rel = [r for r in relax if r["index"] in by_index]
    block = {"all": rates(static), "relax_subset": rates([by_index[r["index"]] for r in rel])}
    if rel:
        first = [r["rms"][int(order_of(np.array([np.nan if e is None else e for e in r["energy"]]))[0])] is not None
                 for r in rel]
        block["relax_subset"]["rank1_chgnet-relax"] = 100.0 * float(np.mean(first))
        # the static CHGNet favourite, relaxed: relaxed_of is sorted by static energy, so position 0
        block["relax_subset"]["rank1_chgnet_then_relax_top1"] = 100.0 * float(np.mean([r["rms"][0] is not None
                                                                                          for r in rel]))
        block["relax_subset"]["oracle_relaxed_top"] = 100.0 * float(np.mean([any(x is not None for x in r["rms"])
                                                                             for r in rel]))
    timing = {}
    for name in ("match", "dao-p", "chgnet", "plausible", "consensus"):
        vals = [r["seconds"][name] for r in static]
        timing[f"{name}_s_per_entry"] = float(np.mean(vals)) if vals else None
    vals = [r["seconds"]["chgnet-relax"] for r in rel]
    timing["chgnet-relax_s_per_entry"] = float(np.mean(vals)) if vals else None
    block["timings"] = timing
    return block


def markdown(results: dict, settings: dict) -> str:
    cols = [("score", "method order"), ("dao-p", "DAO-P"), ("dao-p+plausible", "DAO-P, implausible last"),
            ("chgnet", "CHGNet static"), ("consensus", "consensus (CHGNet ties)")]
    rows = ("tune rows (outside the 200 report rows)" if settings.get("rows") == "tune"
            else f"random entries seed {settings['seed']}")
    lines = [f"Rank-1-of-{settings['k']} match rate (%), {settings['bench']} test, {rows}; "
             "StructureMatcher stol 0.5, angle_tol 10, ltol 0.3; chgnet-relax: relaxed structure matched "
             f"(top {settings['relax_top']} by static CHGNet, {settings['relax_steps']} FIRE steps).", "",
             "| source | entries | random pick | " + " | ".join(c for _, c in cols)
             + f" | CHGNet relaxed | oracle-of-{settings['k']} | s/entry DAO-P | s/entry CHGNet"
             " | s/entry consensus matching"
             " | s/entry relax |",
             "|---" * (len(cols) + 9) + "|"]
    for source, block in results.items():
        for subset in ("all", "relax_subset"):
            b = block[subset]
            if not b.get("entries"):
                continue
            t = block["timings"]
            row = [f"{source} ({'all' if subset == 'all' else 'relax subset'})", str(b["entries"]),
                   f"{b['random_expected']:.1f}"]
            row += [f"{b[f'rank1_{r}']:.1f}" for r, _ in cols]
            row.append(f"{b['rank1_chgnet-relax']:.1f}" if "rank1_chgnet-relax" in b else "-")
            row.append(f"{b['oracle']:.1f}")
            row += [f"{t['dao-p_s_per_entry']:.3f}", f"{t['chgnet_s_per_entry']:.2f}",
                    f"{t['consensus_s_per_entry']:.2f}",
                    "-" if t["chgnet-relax_s_per_entry"] is None else f"{t['chgnet-relax_s_per_entry']:.1f}"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=DEFAULT_BENCH, help="benchmark whose test split is ranked (the template "
                    "source's stored run is MP-20's; another benchmark needs --sources dao-g --dao-g-candidates)")
    ap.add_argument("--n", type=int, default=100, help="random test entries")
    ap.add_argument("--seed", type=int, default=0, help="seed of the entry sample")
    ap.add_argument("--rows", choices=("random", "tune"), default="random", help="random: --n entries of seed --seed "
                    "(seed 0, n 200: the model cards' report rows); tune: --n entries outside those 200, the rows "
                    "bench/dao_g_sampler_options.py --rows tune samples")
    ap.add_argument("--sources", default="template,dao-g")
    ap.add_argument("--relax-n", type=int, default=20, help="entries (random subset of the n) for chgnet-relax")
    ap.add_argument("--relax-top", type=int, default=3, help="candidates relaxed per entry (lowest static CHGNet)")
    ap.add_argument("--relax-steps", type=int, default=20, help="FIRE steps of the short relaxation")
    ap.add_argument("--pool", type=int, default=K, help="candidates ranked per entry (the DAO-G run must hold "
                    "that many); above 20 the summary adds the match rates of pools of 20, 40, ... up to it")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarize", action="store_true", help="only rebuild table + JSON from the per-entry files")
    ap.add_argument("--dao-g-candidates", default=None,
                    help="candidates.jsonl of another DAO-G run (default: SOURCES['dao-g']); its folder names the run")
    ap.add_argument("--out", default=None, help=f"results JSON (default {RESULTS.name} for MP-20, "
                    "ranking_<bench>.json otherwise)")
    args = ap.parse_args(argv)
    if args.dao_g_candidates:
        SOURCES["dao-g"] = Path(args.dao_g_candidates).resolve()
    import torch

    torch.set_num_threads(args.threads)
    out = args.out or (RESULTS if args.bench == DEFAULT_BENCH else RESULTS.with_name(f"ranking_{args.bench}.json"))
    test = load_split(args.bench, "test")
    if args.rows == "tune":
        from dao_g_sampler_options import rows_for  # sibling script

        rows = [int(r) for r in rows_for(len(test), "tune", args.n)]
    else:
        rows = [int(r) for r in sample_indices(len(test), args.n, args.seed)]
    relax_rows = [rows[int(i)] for i in sample_indices(len(rows), args.relax_n, args.seed)]
    run = ROOT / "runs" / "ranking" / (f"{args.bench}_tune{args.n}" if args.rows == "tune" else
                                       f"{args.bench}_n{args.n}_s{args.seed}")
    if args.dao_g_candidates:  # another run's samples must not resume into the default run's files
        run = run.with_name(f"{run.name}_{SOURCES['dao-g'].parent.name}")
    if args.pool != K:
        run = run.with_name(f"{run.name}_pool{args.pool}")
    sources = args.sources.split(",")
    tol = MatchTolerance()
    files = {s: (run / f"{s}_static.jsonl", run / f"{s}_relax.jsonl") for s in sources}
    wall = time.perf_counter()
    if not args.summarize:
        cands = {s: load_candidates(s, rows, test, args.bench, args.pool) for s in sources}
        for s in sources:  # pass 1: the cheap rankings on every entry
            done = _resume(files[s][0])
            with open(files[s][0], "a") as fh:
                for r in rows:
                    if r in cands[s] and r not in done:
                        append_jsonl(fh, [static_record(test, r, cands[s][r], tol, args.threads)])
        static = {s: {rec["index"]: rec for rec in read_jsonl(files[s][0])} for s in sources}
        done = {s: _resume(files[s][1]) for s in sources}
        for r in relax_rows:  # pass 2: relaxation, sources interleaved so an early stop leaves both comparable
            for s in sources:
                if r in cands[s] and r not in done[s]:
                    rec = relax_record(test, r, cands[s][r], static[s][r], tol, args.relax_top, args.relax_steps,
                                       args.threads)
                    with open(files[s][1], "a") as fh:
                        append_jsonl(fh, [rec])
    wanted, wanted_relax = set(rows), set(relax_rows)
    static = {s: [rec for rec in read_jsonl(files[s][0]) if rec["index"] in wanted] for s in sources}
    results = {}
    for s in sources:
        relax = [rec for rec in read_jsonl(files[s][1]) if rec["index"] in wanted_relax]
        results[s] = summarize(static[s], relax)
        if args.pool > K:
            results[s]["pool_curve"] = pool_curve(static[s], list(range(K, args.pool, K)) + [args.pool])
    both = complement(static["template"], static["dao-g"]) if {"template", "dao-g"} <= set(sources) else None
    settings = {"bench": args.bench, "split": "test", "rows": args.rows, "n": args.n, "seed": args.seed, "k": args.pool,
                "sources":
                {s: str(SOURCES[s].relative_to(ROOT)) for s in sources}, "relax_n": args.relax_n,
                "relax_top": args.relax_top, "relax_steps": args.relax_steps, "relax_fmax": 0.1,
                "relax_preselect": "lowest static CHGNet energy", "threads": args.threads,
                "tolerance": tol.as_dict(), "dao_p_weights": "dao_p_energy_mp20.pt (formation energy label)",
                "run_dir": str(run.relative_to(ROOT)),
                "timing_note": "wall seconds per entry (--pool candidates), 1 torch thread, shared 2-core CPU"}
    report = {"settings": settings, "data": {"test_rows": len(test), "entries_sampled": len(rows),
                                             "relax_entries_sampled": len(relax_rows)},
              "results": results, "template_vs_dao-g_at_k1": both,
              "wall_s_this_call": time.perf_counter() - wall, "versions": package_versions()}
    write_json(out, report)
    print(markdown(results, settings))
    for s, block in results.items():
        for row in block.get("pool_curve", []):
            rates = ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.startswith(("rank1", "top20", "oracle")))
            print(f"{s} pool {row['pool']}: {rates} ({row['entries']} entries)")
    if both:
        print("\nk=1, template rank-1 vs DAO-G CHGNet rank-1 (%):",
              ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in both.items()))


if __name__ == "__main__":
    main()
