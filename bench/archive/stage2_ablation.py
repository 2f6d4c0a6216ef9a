"""Stage II ablation (issue 4 item 3): DAO-G fine-tuned on the DAO-P-relaxed MP-20 bi/ternary val set against the
same fine-tuning on the unrelaxed set (the control), both from the shipped ``dao_g_mp20`` (stage I), evaluated on the
same random test entries.

The two fine-tuning runs are plain training commands (identical except ``--data`` and ``--out_dir``)::

    nice -n 10 python -m xtalforge.training.train --init_from mp20 --data DATA --out_dir runs/stage2_NAME \\
        --max_steps 1000 --warmup_steps 50 --lr 1e-4 --batch_atoms 1024 --threads 1 --seed 0 --ckpt_minutes 4 \\
        --log_every 20

with DATA = ``runs/stage2_data/mp20_val_relaxed_dao_p.csv.gz`` (bench/dataset_relaxation.py) or the shared
``mp_20_biternary/val.csv.gz``. Then::

    nice -n 10 python bench/stage2_ablation.py --limit 60 --ks 1,20

evaluates each model with :func:`xtalforge.evaluation.evaluate_csp` (DAO-G default sampler: predictor-corrector,
50 steps, step_lr 1e-5; StructureMatcher stol 0.5 / angle_tol 10 / ltol 0.3; raw candidates, no relaxation) and
writes ``bench/results/stage2_ablation.json`` plus a markdown table. Evaluation folders ``runs/stage2_eval/<name>``
resume.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from xtalforge.data.protocol import BENCHMARKS, load_split
from xtalforge.evaluation import evaluate_csp
from xtalforge.evaluation.report import command_line, package_versions, write_json
from xtalforge.models.dao_g import DAOG, DAOGMethod, resolve_weights

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "stage2_ablation.json"
EVAL_DIR = ROOT / "runs" / "stage2_eval"
BENCHMARK = "mp_20_biternary"


def training_summary(weights: str) -> dict:
    """Training facts of a fine-tuning run folder (config, steps, wall seconds, mean loss of the last 3 log lines)."""
    run = Path(weights).parent
    if not (run / "log.jsonl").is_file():
        return {"weights": weights, "fine_tuned": False}
    lines = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if ln]
    last = lines[-3:]
    mean = {k: sum(r[k] for r in last) / len(last) for k in ("loss", "loss_lattice", "loss_coord")}
    cfg = json.loads((run / "config.json").read_text())
    return {"weights": weights, "fine_tuned": True, "data": cfg["data"], "init_from": cfg["init_from"],
            "steps": lines[-1]["step"], "wall_seconds": lines[-1]["seconds"], "lr": cfg["lr"],
            "warmup_steps": cfg["warmup_steps"], "batch_atoms": cfg["batch_atoms"],
            "crystals_per_s_last": lines[-1]["crystals_per_s"], "final_loss_mean_last_3_logs": mean,
            "first_loss": lines[0]["loss"]}


def hits(matches_jsonl: Path, k: int) -> dict[int, bool]:
    """Test row -> matched within the first k candidates."""
    out = {}
    for line in matches_jsonl.read_text().splitlines():
        r = json.loads(line)
        out[r["index"]] = any(x is not None for x in r["rms"][:k])
    return out


def paired(a: Path, b: Path, ks: list[int]) -> dict:
    """Entries matched by only one of two models at each k, with the exact two-sided McNemar (sign test) p-value."""
    from math import comb

    out = {}
    for k in ks:
        ha, hb = hits(a, k), hits(b, k)
        only_a = sum(ha[i] and not hb[i] for i in ha)
        only_b = sum(hb[i] and not ha[i] for i in ha)
        n = only_a + only_b
        p = min(1.0, 2 * sum(comb(n, j) for j in range(min(only_a, only_b) + 1)) / 2**n) if n else 1.0
        out[str(k)] = {"only_first": only_a, "only_second": only_b, "mcnemar_exact_p": p}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="stage1=mp20,control=runs/stage2_control/ema.pt,"
                    "relaxed=runs/stage2_relaxed/ema.pt", help="name=weights pairs")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--ks", default="1,20")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sampler", default="pc")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test = load_split(BENCHMARK, "test")
    library = load_split(BENCHMARK, BENCHMARKS[BENCHMARK].train_split)
    ks = [int(k) for k in args.ks.split(",")]
    rows = {}
    for spec in args.models.split(","):
        name, weights = spec.split("=")
        if not resolve_weights(weights).is_file():
            continue
        t0 = time.time()
        method = DAOGMethod(DAOG.load(weights), steps=args.steps, sampler=args.sampler,
                            step_lr=BENCHMARKS[BENCHMARK].step_lr)
        report = evaluate_csp(method, test, ks=ks, out_dir=EVAL_DIR / f"{name}_n{args.limit}_k{max(ks)}",
                              limit=args.limit, seed=args.seed, workers=1, progress=False, library=library)
        rows[name] = {"training": training_summary(weights), "results": report["results"],
                      "matches": report["files"]["matches"],
                      "counts": report["counts"], "timings": report["timings"], "eval_wall_s": time.time() - t0}
        print(name, json.dumps(report["results"]["metrics"]), flush=True)
    comparisons = {}
    names = list(rows)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            comparisons[f"{a} vs {b}"] = paired(Path(rows[a]["matches"]), Path(rows[b]["matches"]), ks)
    result = {"command": command_line(), "settings": vars(args), "benchmark": BENCHMARK, "test_split": "test (visible)",
              "entries": args.limit, "tolerance": "stol 0.5, angle_tol 10, ltol 0.3; raw candidates, no relaxation",
              "models": rows, "paired": comparisons, "versions": package_versions()}
    write_json(args.out, result)
    print(table(result))


def table(result: dict) -> str:
    lines = ["| model | fine-tune data | steps | k | match % | RMSE | valid-only match % | gen s/entry |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["models"].items():
        tr = r["training"]
        data = Path(tr["data"]).name if tr.get("fine_tuned") else "none (stage I)"
        for k, m in r["results"]["metrics"].items():
            valid = r["results"].get("metrics_valid_only", {}).get(k, {}).get("match_rate")
            rmse = "-" if m["rmse"] is None else f"{m['rmse']:.3f}"
            lines.append(f"| {name} | {data} | {tr.get('steps', 0)} | {k} | {m['match_rate']:.1f} | {rmse} | "
                         f"{'-' if valid is None else f'{valid:.1f}'} | "
                         f"{r['timings']['generation_s_per_entry']:.2f} |")
    seed = result["settings"]["seed"]
    lines.append(f"\nn = {result['entries']} random visible test entries (seed {seed})\n")
    lines += ["| pair (first vs second) | k | matched only by first | only by second | exact McNemar p |",
              "| --- | --- | --- | --- | --- |"]
    for pair, per_k in result.get("paired", {}).items():
        for k, v in per_k.items():
            lines.append(f"| {pair} | {k} | {v['only_first']} | {v['only_second']} | {v['mcnemar_exact_p']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
