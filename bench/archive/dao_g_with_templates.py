"""Two more ways DAO-G could add to template candidates, measured on a finished template run.

Input: a ``bench/template_csp.py`` run folder (``candidates.jsonl`` + ``matches.jsonl``, 20 candidates per test
entry, each already matched to the true structure; e.g. the whole MP-20 bi/ternary or MPTS-52 test split with the
learned ranker). Cells larger than the DAO-G weights allow are left out and counted.

* ``rescore``: rank each entry's template candidates by DAO-G's denoising loss (the training loss of reference §2:
  MSE of eps_L plus MSE of the normalised coordinate score, averaged over ``--times`` and ``--draws`` noise draws,
  the same draws for every candidate of an entry; a diffusion model's ELBO up to weights and constants), alone and
  added to the template ranker's score (``-score + lambda * loss``). Reported: rank-1 match rate of each order on
  ``--limit`` random entries, next to the template order and the oracle of the candidates.
* ``fill``: for the entries whose template list is short (< 20 candidates, maybe none) and has no match, fill the
  empty slots with (a) DAO-G samples from noise (what ``auto`` does), (b) DAO-G refinements of the entry's own
  template candidates (noised to ``t`` and denoised with ``--refine-steps`` steps, cycling through the candidates in
  rank order; an empty list keeps its samples from noise), (c) half of each, alternating. Template candidates are
  kept, so the entries these fills newly match are exactly the k=20 gain of each policy on the whole split
  (reported as points over it); which entries to compute is picked with the labels, only to save time. With
  ``--fill-limit`` a random subset of them is filled and the points are scaled up (an estimate; entries counted).

Results: ``bench/results/dao_g_with_templates.json`` (one row per run folder and section; a finished row is kept on
a rerun unless ``--force``). Usage::

    python bench/dao_g_with_templates.py --bench mp_20_biternary \
        --run runs/template_csp/mp_20_biternary_pooled_none_learned-a644f02e_n6000_s0 --sections rescore,fill
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from xtalforge.crystal import Crystal
from xtalforge.data.batch import CrystalBatch
from xtalforge.data.protocol import load_split, sample_indices
from xtalforge.evaluation.csp import read_jsonl
from xtalforge.evaluation.matching import PairMatcher
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.models.dao_g import DAOG, DAOGMethod

RESULTS = Path(__file__).resolve().parents[1] / "results" / "dao_g_with_templates.json"


def load_run(run: Path) -> list[dict]:
    """Entries of a template run: test row ``index``, ``num_atoms``, ``candidates`` and their match ``status``."""
    status = {r["index"]: r["status"] for r in read_jsonl(run / "matches.jsonl")}
    entries = []
    for r in read_jsonl(run / "candidates.jsonl"):
        r["status"] = status[r["index"]]
        entries.append(r)
    return entries


def crystals(entry: dict) -> list[Crystal]:
    return [Crystal(np.array(c["lattice"]), np.array(c["frac"]), c["numbers"]) for c in entry["candidates"]]


@torch.no_grad()
def denoising_loss(model: DAOG, entries: list[dict], times: list[int], draws: int, seed: int) -> list[np.ndarray]:
    """Per entry, (k,) mean denoising loss of its candidates (lower = more typical of the training data).

    All candidates of an entry share each noise draw (common random numbers), so their differences are not noise.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for e in tqdm(entries, desc="denoising loss", mininterval=10):
        k, n = len(e["candidates"]), e["num_atoms"]
        reps = len(times) * draws
        lat = torch.tensor([c["lattice"] for c in e["candidates"]], dtype=torch.float32).repeat(reps, 1, 1)
        frac = torch.tensor([c["frac"] for c in e["candidates"]], dtype=torch.float32).remainder(1.0)
        types = torch.tensor([c["numbers"] for c in e["candidates"]])
        batch = CrystalBatch(lat, frac.repeat(reps, 1, 1), types.repeat(reps, 1), torch.ones(k * reps, n, dtype=bool))
        t = torch.tensor(times, dtype=torch.long).repeat_interleave(draws * k)
        eps_l = torch.randn(reps, 3, 3, generator=gen).repeat_interleave(k, 0)
        eps_f = torch.randn(reps, n, 3, generator=gen).repeat_interleave(k, 0)
        lattice_mse, coord_sse = model.squared_errors(batch, t, eps=(eps_l, eps_f))
        loss = lattice_mse + coord_sse / (3.0 * n)
        out.append(loss.view(reps, k).mean(0).numpy())
    return out


def rescore(args, model: DAOG, entries: list[dict]) -> dict:
    rows = sample_indices(len(entries), args.limit, args.seed)
    limit = model.meta["max_atoms"]
    usable = [entries[i] for i in rows if entries[i]["candidates"] and entries[i]["num_atoms"] <= limit]
    c0 = time.process_time()
    losses = denoising_loss(model, usable, args.times, args.draws, args.seed)
    cpu = time.process_time() - c0
    orders = {"template score": lambda e, loss: -np.array([c["score"] for c in e["candidates"]]),
              "denoising loss": lambda e, loss: loss}
    for lam in args.lambdas:
        orders[f"score + {lam:g} x loss"] = (
            lambda e, loss, lam=lam: -np.array([c["score"] for c in e["candidates"]]) + lam * loss)
    table = {name: 100 * np.mean([e["status"][int(np.argmin(f(e, loss)))] == "match"
                                  for e, loss in zip(usable, losses)]) for name, f in orders.items()}
    table["oracle"] = 100 * np.mean([("match" in e["status"]) for e in usable])
    return {"entries_sampled": len(rows), "entries_scored": len(usable), "rank1_match_rate": table,
            "cpu_s_per_entry": cpu / max(1, len(usable)), "times": args.times, "draws": args.draws}


def fill(args, model: DAOG, entries: list[dict], bench: str) -> dict:
    test = load_split(bench, "test")
    short = [e for e in entries if len(e["candidates"]) < args.k]
    low, high = args.min_atoms, model.meta["max_atoms"]
    todo = [e for e in short if "match" not in e["status"] and low <= e["num_atoms"] <= high]
    eligible = len(todo)
    if args.fill_limit and args.fill_limit < eligible:  # a random subset; gains are then scaled up to all eligible
        todo = [todo[i] for i in sorted(sample_indices(eligible, args.fill_limit, args.seed))]
    method = DAOGMethod(model, steps=args.steps)
    refiner = DAOGMethod(model, steps=args.refine_steps)
    slots = [(e, s) for e in todo for s in range(args.k - len(e["candidates"]))]
    cells = [test.atoms_of(e["index"]).tolist() for e, _ in slots]
    c0 = time.process_time()
    fills = {"noise": method.sample_cells(cells, seed=args.seed)}
    timing = {"noise": time.process_time() - c0}
    # an empty template list has nothing to refine: its slots keep the samples from noise under every policy
    ref = [i for i, (e, _) in enumerate(slots) if e["candidates"]]
    own = {e["index"]: crystals(e) for e in todo if e["candidates"]}
    inits = [own[slots[i][0]["index"]][slots[i][1] % len(slots[i][0]["candidates"])] for i in ref]
    for t in args.refine_times:
        c0 = time.process_time()
        refined = refiner.sample_cells([cells[i] for i in ref], seed=args.seed, init=inits, start_t=t)
        timing[f"refine t={t}"] = time.process_time() - c0
        fills[f"refine t={t}"] = list(fills["noise"])
        for i, r in zip(ref, refined):
            fills[f"refine t={t}"][i] = r
    if args.refine_times:  # half and half: even slots from the first refinement time, odd ones from noise
        mix_t = args.refine_times[0]
        fills[f"alternate refine t={mix_t} / noise"] = [
            fills[f"refine t={mix_t}"][i] if s % 2 == 0 else fills["noise"][i] for i, (_, s) in enumerate(slots)]
    matcher = PairMatcher()
    targets = {e["index"]: matcher.prepare(test[e["index"]].to_structure()) for e in todo}
    newly: dict[str, list[int]] = {}
    for name, samples in fills.items():
        hit = set()
        for (e, _), c in tqdm(list(zip(slots, samples)), desc=name, mininterval=10):
            if c is None or e["index"] in hit:
                continue
            if matcher.rms(matcher.prepare(c.to_structure()), targets[e["index"]]):
                hit.add(e["index"])
        newly[name] = sorted(hit)
    scale = eligible / max(1, len(todo))
    gain = {name: {"entries": len(h), "points_on_split": 100 * len(h) * scale / len(entries)}
            for name, h in newly.items()}
    return {"entries_in_split": len(entries), "short_lists": len(short),
            "empty_lists_filled": sum(not e["candidates"] for e in todo), "atoms": [low, high],
            "short_unmatched_within_atom_limit": eligible, "entries_filled": len(todo),
            "short_unmatched_beyond_atom_limit": sum(
                "match" not in e["status"] and e["num_atoms"] > high for e in short),
            "slots_filled": len(slots), "k20_gain": gain, "newly_matched_indices": newly,
            "cpu_s_per_filled_slot": {k: v / max(1, len(slots)) for k, v in timing.items()},
            "sampler": {"noise": f"pc {args.steps} steps", "refine": f"pc {args.refine_steps} steps from t"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", required=True)
    ap.add_argument("--run", required=True, type=Path, help="a bench/template_csp.py run folder")
    ap.add_argument("--weights", default="mp20")
    ap.add_argument("--sections", default="rescore,fill")
    ap.add_argument("--limit", type=int, default=1000, help="entries for rescore (random, --seed)")
    ap.add_argument("--times", type=lambda s: [int(x) for x in s.split(",")], default=[5, 20, 50, 100, 200, 400, 700])
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--lambdas", type=lambda s: [float(x) for x in s.split(",")], default=[0.3, 1.0, 3.0])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50, help="pc steps of samples from noise (auto's default)")
    ap.add_argument("--refine-times", type=lambda s: [int(x) for x in s.split(",") if x not in ("", "none")],
                    default=[200, 50, 100, 400], help="'none' for samples from noise only")
    ap.add_argument("--fill-limit", type=int, default=0, help="fill a random subset of this many eligible entries")
    ap.add_argument("--refine-steps", type=int, default=20)
    ap.add_argument("--min-atoms", type=int, default=1, help="fill only cells with at least this many atoms")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    model = DAOG.load(args.weights)
    entries = load_run(args.run)
    for section in args.sections.split(","):
        key = {"bench": args.bench, "run": str(args.run), "weights": args.weights, "section": section,
               "min_atoms": args.min_atoms}
        done = [r for r in results["rows"] if all(r.get(k) == v for k, v in key.items())]
        if done and not args.force:
            print(f"{section}: kept the finished row (--force to redo)")
            continue
        t0 = time.time()
        out = rescore(args, model, entries) if section == "rescore" else fill(args, model, entries, args.bench)
        results["rows"] = [r for r in results["rows"] if r not in done] + [
            {**key, **out, "wall_s": time.time() - t0, "settings": {k: str(v) for k, v in vars(args).items()}}]
        results["versions"] = package_versions()
        write_json(RESULTS, results)
    for r in results["rows"]:
        if r["bench"] != args.bench:
            continue
        print(f"\n{r['bench']} {r['section']} ({r['weights']})")
        if r["section"] == "rescore":
            print(f"rank-1 match % over {r['entries_scored']} entries:")
            for name, v in r["rank1_match_rate"].items():
                print(f"  {name:28s} {v:6.1f}")
        else:
            print(f"{r['short_unmatched_within_atom_limit']} short unmatched lists of {r['atoms'][0]}-{r['atoms'][1]} "
                  f"atoms, {r['entries_filled']} filled ({r['slots_filled']} slots); "
                  f"{r['short_unmatched_beyond_atom_limit']} beyond the atom limit")
            for name, g in r["k20_gain"].items():
                print(f"  {name:32s} +{g['entries']:4d} entries  +{g['points_on_split']:.2f} points at k=20")


if __name__ == "__main__":
    main()
