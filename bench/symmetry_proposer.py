"""The symmetry proposer against two baselines on test rows: does the true (space group, Wyckoff assignment) appear
among the top k answers?

    python bench/symmetry_proposer.py --data mp_20_biternary,mpts_52 --limit 500 --seed 1

For each row (random, reproducible: ``--limit``, ``--seed``), the truth is the row's own symmetric description
(pyxtal at symprec 0.01 A, primitive cell). Given its composition (Z free among the divisors of the cell's formula
units), three ranked lists of answers are scored:

* ``proposer``: the shipped (or ``--weights``) proposer's beam search, by probability;
* ``frequency``: space groups in order of their share of the proposer's training data, keeping those that hold the
  composition, each followed by its assignments with the fewest orbits (at most 4 per group);
* ``library``: the symmetry of the template method's candidates (library structures of the same anonymised formula,
  ``benchmark_library(data, pooled=True, aflow=True)``), in the template method's order.

Top-k of the space group counts the distinct groups of the list in order; top-k of the assignment needs the group
and the multiset of (element, Wyckoff letter) equal. ROUGE-1/2/L (``rouge-score``, F-measure) compare the text form
of the top answer with that of the truth, the seed's measure of its language model.
"""

from __future__ import annotations

import argparse
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
from xtalforge.symmetry import assignments, from_structure
from xtalforge.symmetry.wyckoff import position_table

KS = (1, 5, 20)


def divisors(counts: Counter) -> list[int]:
    g = int(np.gcd.reduce(list(counts.values())))
    return [z for z in range(1, g + 1) if g % z == 0]


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


def library_answers(templates, cell: list[int], k: int) -> list[tuple]:
    out = []
    for cand in templates.generate([cell], 2 * k)[0]:
        try:
            sym = from_structure(cand)
        except XtalforgeError:
            continue
        answer = (sym.spacegroup, tuple((o.number, o.index) for o in sym.orbits))
        if answer not in out:
            out.append(answer)
    return out[:k]


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
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/symmetry_proposer.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rouge_score import rouge_scorer

    from xtalforge.methods import get_method
    from xtalforge.templates.library import benchmark_library

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    model = SymmetryProposer.load(args.weights)
    prior = {int(g): p for g, p in model.meta["group_prior"].items()}
    results, table = {}, ["| data | answers | entries | group top-1 | top-5 | top-20 | assignment top-1 | top-5 | "
                          "top-20 | ROUGE-1 | ROUGE-2 | ROUGE-L | s/entry |", "|---" * 13 + "|"]
    for data in args.data.split(","):
        test = load_split(data, "test")
        rng = np.random.default_rng(args.seed)
        idx = np.sort(rng.choice(len(test), min(args.limit, len(test)), replace=False))
        templates = get_method("template", library=benchmark_library(data, pooled=True, aflow=True))
        rows, seconds = [], Counter()
        for i in tqdm(idx, desc=data, mininterval=10):
            try:
                sym = from_structure(test[int(i)])
            except XtalforgeError:
                continue
            truth = (sym.spacegroup, tuple((o.number, o.index) for o in sym.orbits))
            counts = Counter(int(z) for z in test[int(i)].numbers)
            zs = divisors(counts)
            row = {"index": int(i), "truth": [truth[0], list(truth[1])]}
            t = time.perf_counter()
            found = propose(model, dict(counts), k=max(KS), z=zs)
            seconds["proposer"] += time.perf_counter() - t
            lists = {"proposer": [(p.spacegroup, p.orbits) for p in found]}
            t = time.perf_counter()
            lists["frequency"] = frequency_answers(counts, zs, prior, max(KS))
            seconds["frequency"] += time.perf_counter() - t
            t = time.perf_counter()
            lists["library"] = library_answers(templates, [int(z) for z in test[int(i)].numbers], max(KS))
            seconds["library"] += time.perf_counter() - t
            true_text = Proposal(truth[0], truth[1], 0, 0.0).text()
            for name, answers in lists.items():
                g, a = ranks(answers, truth)
                top = Proposal(answers[0][0], answers[0][1], 0, 0.0).text() if answers else ""
                scores = scorer.score(true_text, top)
                row[name] = {"group": g, "assignment": a, **{m: scores[m].fmeasure for m in scores}}
            rows.append(row)
        results[data] = {"entries": len(rows), "rows_drawn": len(idx), "rows": rows,
                         "seconds_per_entry": {k: v / max(1, len(rows)) for k, v in seconds.items()}}
        for name in ("proposer", "frequency", "library"):
            s = summarise(rows, name)
            rouge = {m: 100.0 * np.mean([row[name][m] for row in rows]) for m in ("rouge1", "rouge2", "rougeL")}
            results[data][name] = {**s, "rouge": rouge}
            table.append(f"| {data} | {name} | {len(rows)} | " + " | ".join(
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
