"""The symmetry proposer against two baselines on test rows: does the true (space group, Wyckoff assignment) appear
among the top k answers?

    python bench/symmetry_proposer.py --data mp_20_biternary,mpts_52 --limit 500 --seed 1

For each row (random, reproducible: ``--limit``, ``--seed``), the truth is the row's own symmetric description
(pyxtal at symprec 0.01 A, primitive cell). Given its composition (Z free among the divisors of the cell's formula
units), three ranked lists of answers are scored:

* ``proposer``: the shipped (or ``--weights``) proposer's beam search, by probability;
* ``frequency``: space groups in order of their share of the benchmark's own training data (its val split,
  symmetrised), keeping those that hold the composition, each followed by its assignments with the fewest orbits (at
  most 4 per group);
* ``library``: the symmetry of the template method's candidates (library structures of the same anonymised formula,
  ``benchmark_library(data, pooled=True, aflow=True)``), in the template method's order;
* ``library+proposer``: the library's answers, then the proposer's that are not among them (the symmetry method's
  ``source="both"`` order).

Top-k of the space group counts the distinct groups of the list in order; top-k of the assignment needs the group
and the multiset of (element, Wyckoff letter) equal. ROUGE-1/2/L (``rouge-score``, F-measure) compare the text form
of the top answer with that of the truth, the seed's measure of its language model.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import xtalforge
from xtalforge.data import load_split
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.models.symmetry_proposer import Proposal, SymmetryProposer, propose
from xtalforge.models.symmetry_proposer.propose import answer_log_probs
from xtalforge.models.wyckoff_flow.method import divisors
from xtalforge.symmetry import assignments, from_structure
from xtalforge.symmetry.wyckoff import position_table

KS = (1, 5, 20)


def frequency_answers(counts: Counter, zs: list[int], prior: dict[int, float], k: int) -> list[tuple]:
    g = int(np.gcd.reduce(list(counts.values())))
    unit = {e: c // g for e, c in counts.items()}
    out = []
    for group in sorted(prior, key=lambda x: -prior[x]):
        for z in sorted(zs):
            cell = {e: c * z for e, c in unit.items()}
            if not all(position_table(group)[2][-1, min(c, 64)] for c in cell.values()):
                continue
            try:
                out += [(group, tuple(a)) for a in assignments(group, cell, limit=4)]
            except XtalforgeError:
                continue
            break
        if len(out) >= k:
            break
    return out[:k]


def library_answers(templates, cell: list[int], k: int) -> tuple[list[tuple], list[int]]:
    """The distinct answers of the template method's first ``2 k`` candidates in its order (at most ``k``), and how
    many candidates gave each (its votes)."""
    out: list[tuple] = []
    votes: Counter = Counter()
    for cand in templates.generate([cell], 2 * k)[0]:
        try:
            sym = from_structure(cand)
        except XtalforgeError:
            continue
        answer = (sym.spacegroup, tuple((o.number, o.index) for o in sym.orbits))
        votes[answer] += 1
        if answer not in out:
            out.append(answer)
    return out[:k], [votes[a] for a in out[:k]]


def ranks(answers: list[tuple], truth: tuple) -> tuple[int | None, int | None]:
    """(rank of the true group among distinct groups, rank of the true assignment), 1-based, None = absent."""
    groups, g_rank, a_rank = [], None, None
    for i, (group, orbits) in enumerate(answers):
        if group not in groups:
            groups.append(group)
            if group == truth[0] and g_rank is None:
                g_rank = len(groups)
        if a_rank is None and group == truth[0] and Counter(orbits) == Counter(truth[1]):
            a_rank = i + 1
    return g_rank, a_rank


def summarise(rows: list[dict], name: str) -> dict:
    out = {}
    for what in ("group", "assignment"):
        r = [row[name][what] for row in rows]
        out[what] = {f"top{k}": 100.0 * np.mean([x is not None and x <= k for x in r]) for k in KS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mp_20_biternary,mpts_52")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", default="mp")
    parser.add_argument("--all-template-free", action="store_true",
                        help="also score template-free test rows (at most --limit) as that subset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/symmetry_proposer.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rouge_score import rouge_scorer

    from xtalforge.methods import get_method
    from xtalforge.templates.library import benchmark_library

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    model = SymmetryProposer.load(args.weights)
    from xtalforge.data.symmetric import symmetrize
    from xtalforge.training.train import TrainConfig, load_training_data

    pooled, _ = load_training_data(TrainConfig(data=model.meta["data"], max_atoms=model.meta.get("max_atoms", 52)))
    pooled_sym = symmetrize(pooled)  # cached by training
    results, table = {}, ["| data | answers | entries | group top-1 | top-5 | top-20 | assignment top-1 | top-5 | "
                          "top-20 | ROUGE-1 | ROUGE-2 | ROUGE-L | s/entry |", "|---" * 13 + "|"]
    for data in args.data.split(","):
        test = load_split(data, "test")
        rng = np.random.default_rng(args.seed)
        idx = np.sort(rng.choice(len(test), min(args.limit, len(test)), replace=False))
        templates = get_method("template", library=benchmark_library(data, pooled=True, aflow=True))
        from xtalforge.data import training_set
        from xtalforge.evaluation.csp import template_free_mask

        free_mask = template_free_mask(test, training_set(data, pooled=True, aflow=True))
        own = set(load_split(data, "val").ids)
        groups, counts_ = np.unique([g for g, i in zip(pooled_sym.spacegroup, pooled_sym.ids) if i in own],
                                    return_counts=True)
        prior = {int(g): float(c / counts_.sum()) for g, c in zip(groups, counts_)}
        rows, seconds = [], Counter()
        sampled = set(idx.tolist())
        if args.all_template_free:  # template-free test rows (all, or --limit random ones) join that subset
            free = np.flatnonzero(free_mask)
            idx = np.union1d(idx, rng.choice(free, min(len(free), args.limit), replace=False)).astype(int)
        for i in tqdm(idx, desc=data, mininterval=10):
            try:
                sym = from_structure(test[int(i)])
            except XtalforgeError:
                continue
            truth = (sym.spacegroup, tuple((o.number, o.index) for o in sym.orbits))
            counts = Counter(int(z) for z in test[int(i)].numbers)
            zs = divisors(counts)
            row = {"index": int(i), "truth": [truth[0], list(truth[1])], "template_free": bool(free_mask[int(i)]),
                   "sampled": int(i) in sampled}
            t = time.perf_counter()
            found = propose(model, dict(counts), k=max(KS), z=zs)
            seconds["proposer"] += time.perf_counter() - t
            lists = {"proposer": [(p.spacegroup, p.orbits) for p in found]}
            t = time.perf_counter()
            lists["frequency"] = frequency_answers(counts, zs, prior, max(KS))
            seconds["frequency"] += time.perf_counter() - t
            t = time.perf_counter()
            lists["library"], votes = library_answers(templates, [int(z) for z in test[int(i)].numbers], max(KS))
            seconds["library"] += time.perf_counter() - t
            # what a merged ranking needs: the proposer's log-probability of every answer, the library's votes
            row["features"] = {"proposer": [[a[0], [list(o) for o in a[1]], p.log_prob]
                                            for a, p in zip(lists["proposer"], found)],
                               "library": [[a[0], [list(o) for o in a[1]], v, float(lp)] for a, v, lp in
                                           zip(lists["library"], votes, answer_log_probs(model, lists["library"]))]}
            lists["library+proposer"] = (lists["library"] + [a for a in lists["proposer"] if a not in
                                                            lists["library"]])[: max(KS)]
            true_text = Proposal(truth[0], truth[1], 0, 0.0).text()
            for name, answers in lists.items():
                g, a = ranks(answers, truth)
                top = Proposal(answers[0][0], answers[0][1], 0, 0.0).text() if answers else ""
                scores = scorer.score(true_text, top)
                row[name] = {"group": g, "assignment": a, **{m: scores[m].fmeasure for m in scores}}
            rows.append(row)
        seconds["library+proposer"] = seconds["library"] + seconds["proposer"]
        results[data] = {"entries": sum(r["sampled"] for r in rows), "rows_drawn": len(sampled), "rows": rows,
                         "frequency_prior": prior,
                         "seconds_per_entry": {k: v / max(1, len(rows)) for k, v in seconds.items()}}
        for (subset, sel), name in itertools.product(
                (("", [r for r in rows if r["sampled"]]),
                 (" template-free", [r for r in rows if r["template_free"]])),
                ("proposer", "frequency", "library", "library+proposer")):
            if not sel:
                continue
            s = summarise(sel, name)
            rouge = {m: 100.0 * np.mean([row[name][m] for row in sel]) for m in ("rouge1", "rouge2", "rougeL")}
            results[data][name + subset.replace(" ", "_")] = {**s, "rouge": rouge, "entries": len(sel)}
            table.append(f"| {data}{subset} | {name} | {len(sel)} | " + " | ".join(
                f"{s['group'][f'top{k}']:.1f}" for k in KS) + " | " + " | ".join(
                f"{s['assignment'][f'top{k}']:.1f}" for k in KS) + " | " + " | ".join(
                f"{rouge[m]:.1f}" for m in ("rouge1", "rouge2", "rougeL")) +
                f" | {results[data]['seconds_per_entry'][name]:.2f} |")
        print("\n".join(table), flush=True)
    write_json(Path(args.out), {
        "benchmark": "symmetry_proposer", "settings": vars(args), "results": results, "table": "\n".join(table),
        "truth": "pyxtal symmetric description of the test row at symprec 0.01 A (primitive cell)",
        "weights_meta": {k: v for k, v in model.meta.items() if k not in ("group_prior", "z_prior")},
        "versions": {**package_versions(), "xtalforge": xtalforge.__version__}, "machine": platform.platform()})


if __name__ == "__main__":
    main()
