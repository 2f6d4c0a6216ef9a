"""Train TemplateCSP's learned re-ranker on leave-one-out val entries (never on test).

1. Collect: for each sampled val entry of each benchmark (its own material_id hidden from the pooled library, as in
   bench/tune_template_weights.py), the best ``--top`` structure types by the hand-made score are described by
   :func:`xtalforge.templates.ranker.candidate_features` and labelled by matching them against the entry
   (StructureMatcher tolerances of the evaluation). Saved per benchmark under runs/template_ranker/ (resumable).
2. Cross-validate: 5 folds over entries; a two-layer network trained listwise (softmax cross-entropy over each
   entry's candidates, entries with a match only) re-orders the top candidates; k = 1 / 20 per benchmark against the
   hand-made order on the same entries. Training lists never compare a known structure of the target's composition
   with a substituted template (see :mod:`xtalforge.templates.ranker`): an entry that has both keeps only its known
   structures for training; evaluation uses the full lists and the shipped ordering rule.
3. Fit on all collected entries and write src/xtalforge/weights/template_ranker.npz (+ the JSON in bench/results/).

    nice python bench/train_template_ranker.py --limit 10000 --workers 2   # every val entry (5 x hidden 32, 120 epochs)

``--no-aflow`` builds the libraries without the AFLOW structures (the shipped ranker before they were added).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import platform
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from template_csp import RESULTS, HoldOutTemplateCSP  # noqa: I001  (sibling script)
from tqdm import tqdm

from xtalforge.crystal import atomic_save_npz, atomic_write_text
from xtalforge.data.protocol import BENCHMARKS, check_no_leak, load_split, sample_indices
from xtalforge.evaluation.matching import MatchTolerance, reduce_structure, rms_dist_reduced
from xtalforge.templates import benchmark_library
from xtalforge.templates.csp import RERANK_TOP
from xtalforge.templates.ranker import FEATURES, SHIPPED_RANKER, TemplateRanker, candidate_features, is_identity

RUNS = Path(__file__).resolve().parent.parent / "runs" / "template_ranker"
_W: dict = {}


def _init(bench: str, aflow: bool) -> None:
    # TemplateCSP's own pool size and library: the features of a candidate must be what inference computes
    _W["method"] = HoldOutTemplateCSP(benchmark_library(bench, pooled=True, aflow=aflow), ranker=None)
    _W["data"] = load_split(bench, "val")
    _W["tol"] = MatchTolerance()


def _entry(i: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Features (T, F) and match labels (T,) of the top structure types of val entry ``i``."""
    method, data = _W["method"], _W["data"]
    target = data[i]
    method.held_out = str(data.ids[i])
    pools = method._pools(target.numbers, 20)
    if not pools:
        return i, np.zeros((0, len(FEATURES))), np.zeros(0, bool)
    types = method._structure_types(pools, method.weights)
    top = types.ranked[:RERANK_TOP]
    x = candidate_features(method, pools, types, top, target.numbers)
    reduced = reduce_structure(target.to_structure())
    y = np.zeros(len(top), bool)
    for n, type_id in enumerate(top):
        k, j = types.origin[types.representative[type_id]]
        cand = method._reduced_candidate(pools[k], j)
        y[n] = rms_dist_reduced(cand, reduced, _W["tol"], first=True) is not None
    return i, x, y


def collect(bench: str, limit: int, seed: int, workers: int, aflow: bool) -> dict:
    version = hashlib.sha1(",".join(FEATURES).encode()).hexdigest()[:8]  # a changed feature set collects anew
    path = RUNS / f"{bench}_n{limit}_s{seed}_top{RERANK_TOP}_{version}{'_aflow' if aflow else ''}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    _init(bench, aflow)  # parse and cache the data here: pool workers are daemons and cannot start parsers of their own
    n_val = len(_W["data"])
    indices = [int(i) for i in sample_indices(n_val, limit, seed)]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers, initializer=_init, initargs=(bench, aflow)) as pool:
        rows = list(tqdm(pool.imap_unordered(_entry, indices, chunksize=4), total=len(indices), desc=bench))
    rows.sort(key=lambda r: r[0])
    x = np.concatenate([r[1] for r in rows])
    y = np.concatenate([r[2] for r in rows])
    entry = np.concatenate([np.full(len(r[2]), n) for n, r in enumerate(rows)])
    out = {"x": x, "y": y, "entry": entry, "n_entries": np.int64(len(rows)),
           "seconds": np.float64(time.perf_counter() - t0)}
    atomic_save_npz(path, **out)
    return out


def _lists(x: np.ndarray, y: np.ndarray, entry: np.ndarray, entries: np.ndarray):
    """Padded (E, T, F) features, (E, T) labels and mask of the given entries."""
    width = RERANK_TOP
    xs = np.zeros((len(entries), width, x.shape[1]))
    ys = np.zeros((len(entries), width), bool)
    mask = np.zeros((len(entries), width), bool)
    start = np.searchsorted(entry, entries)  # rows of one entry are contiguous, entries in order
    stop = np.searchsorted(entry, entries, side="right")
    for n, (a, b) in enumerate(zip(start, stop)):
        xs[n, : b - a], ys[n, : b - a], mask[n, : b - a] = x[a:b], y[a:b], True
    return xs, ys, mask


def within_class(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Training mask: an entry with both known structures of its composition and substituted templates keeps only
    the known ones, so no training list compares the two classes."""
    known = is_identity(x) & mask
    mixed = known.any(axis=1) & (mask & ~known).any(axis=1)
    return np.where(mixed[:, None], known, mask)


def fit(x: np.ndarray, y: np.ndarray, mask: np.ndarray, hidden: int, epochs: int, seed: int,
        weight_decay: float, members: int = 1) -> TemplateRanker:
    """Listwise training: maximise log sum_{matching c} softmax(score)_c over each entry's candidates; ``members``
    networks from seeds ``seed``, ``seed + 100``, ... averaged."""
    if members > 1:
        return TemplateRanker.ensemble([fit(x, y, mask, hidden, epochs, seed + 100 * m, weight_decay)
                                        for m in range(members)])
    torch.manual_seed(seed)
    mask = within_class(x, mask)
    flat = x[mask]
    mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-6
    keep = (y & mask).any(axis=1)  # entries without any match carry no ranking signal
    xt = torch.tensor((x[keep] - mean) / std, dtype=torch.float32)
    yt, mt = torch.tensor(y[keep]), torch.tensor(mask[keep])
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1,
                                                                                                       bias=False))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=weight_decay)
    for _ in range(epochs):
        for batch in torch.randperm(len(xt)).split(256):
            s = net(xt[batch]).squeeze(-1).masked_fill(~mt[batch], -1e9)
            loss = -(torch.logsumexp(s.masked_fill(~yt[batch], -1e9), 1) - torch.logsumexp(s, 1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    w1, b1 = net[0].weight.detach().double().numpy().T, net[0].bias.detach().double().numpy()
    return TemplateRanker(mean, std, w1, b1, net[2].weight.detach().double().numpy()[0])


def learned_order_scores(ranker: TemplateRanker, xs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(E, T) scores that sort each entry's candidates as TemplateCSP does with ``ranker``."""
    out = np.full(mask.shape, -np.inf)
    for e in range(len(xs)):
        t = int(mask[e].sum())
        out[e, ranker.order(xs[e, :t])] = -np.arange(t)
    return out


def hits(order_scores: np.ndarray, y: np.ndarray, mask: np.ndarray, ks=(1, 20)) -> dict[int, float]:
    """Share (%) of entries with a match among the k best candidates under ``order_scores`` (E, T)."""
    s = np.where(mask, order_scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    ranked_y = np.take_along_axis(y & mask, order, axis=1)
    return {k: float(100.0 * ranked_y[:, :k].any(axis=1).mean()) for k in ks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default="mp_20_biternary,mpts_52,perov_5,carbon_24")
    ap.add_argument("--limit", type=int, default=1200, help="val entries per benchmark")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--weight_decay", type=float, default=1e-3)
    ap.add_argument("--members", type=int, default=5, help="networks averaged (seed ensemble)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--aflow", action=argparse.BooleanOptionalAction, default=True,
                    help="template library with the AFLOW structures, as the shipped library has them")
    ap.add_argument("--out", type=Path, default=SHIPPED_RANKER)
    ap.add_argument("--report", type=Path, default=RESULTS / "template_ranker.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    benches = args.benchmarks.split(",")
    data = {b: collect(b, args.limit, args.seed, args.workers, args.aflow) for b in benches}
    # one ranker serves every benchmark, so no entry whose material_id is in any test split may train it (MP-20 and
    # MPTS-52 share Materials Project ids)
    test_ids = set().union(*(load_split(b, BENCHMARKS[b].test_split).ids for b in BENCHMARKS))
    lists, train_ids, dropped = {}, [], {}
    for b, d in data.items():
        val = load_split(b, "val")
        ids = np.asarray(val.ids)[sample_indices(len(val), args.limit, args.seed)]  # entry n = row ids[n]
        keep = np.array([mid not in test_ids for mid in ids])
        lists[b] = _lists(d["x"], d["y"], d["entry"], np.nonzero(keep)[0])
        train_ids += [str(mid) for mid in ids[keep]]
        dropped[b] = int((~keep).sum())
    for b in BENCHMARKS:
        check_no_leak(train_ids, b)
    rng = np.random.default_rng(args.seed)
    folds = {b: rng.integers(0, args.folds, len(lists[b][0])) for b in benches}
    cv = {b: {"hand": [], "learned": []} for b in benches}
    for f in range(args.folds):
        train = [np.concatenate([lists[b][i][folds[b] != f] for b in benches]) for i in range(3)]
        ranker = fit(*train, args.hidden, args.epochs, args.seed + f, args.weight_decay, args.members)
        for b in benches:
            xs, ys, mask = (a[folds[b] == f] for a in lists[b])
            cv[b]["hand"].append((hits(-np.arange(xs.shape[1])[None].repeat(len(xs), 0), ys, mask), len(xs)))
            cv[b]["learned"].append((hits(learned_order_scores(ranker, xs, mask), ys, mask), len(xs)))
    table = {}
    print(f"| benchmark (val, leave-one-out, {args.folds}-fold CV) | entries | hand-made k=1 / k=20 "
          "| learned k=1 / k=20 |\n|---|---|---|---|")
    for b in benches:
        row = {}
        for name, parts in cv[b].items():
            n = sum(m for _, m in parts)
            row[name] = {k: sum(h[k] * m for h, m in parts) / n for k in (1, 20)}
        row["entries"] = len(lists[b][0])
        table[b] = row
        print(f"| {b} | {row['entries']} | {row['hand'][1]:.1f} / {row['hand'][20]:.1f} "
              f"| {row['learned'][1]:.1f} / {row['learned'][20]:.1f} |")
    everything = [np.concatenate([lists[b][i] for b in benches]) for i in range(3)]
    t0 = time.perf_counter()
    ranker = fit(*everything, args.hidden, args.epochs, args.seed, args.weight_decay, args.members)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["top"] = RERANK_TOP
    info = {"trained_on": {b: len(lists[b][0]) for b in benches}, "dropped_test_ids": dropped,
            "clean_for": sorted(BENCHMARKS), "settings": settings,
            "fit_seconds": time.perf_counter() - t0, "cv": table}
    ranker.info = json.dumps(info)
    ranker.save(args.out)
    report = {**info, "collect_seconds": {b: float(data[b]["seconds"]) for b in benches},
              "candidates": {b: int(len(data[b]["y"])) for b in benches}, "features": list(FEATURES),
              "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                           "xtalforge": version("xtalforge")}}
    atomic_write_text(args.report, json.dumps(report, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
