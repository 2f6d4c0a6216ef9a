"""Turn the EMA weights of a (chain of) DAO-G training run(s) into a shipped weight file with its training facts.

    python bench/ship_dao_g.py --runs runs/dao_g_mp20,runs/dao_g_mp20_b --name mp20 --step_lr 1e-5 \
        --benchmark "mp_20_biternary (also mpts_52 cells <= 20 atoms)" --out src/xtalforge/weights/dao_g_mp20.pt

``--runs`` lists the runs in training order (each later one initialised from the EMA of the one before); the last
run's ``ema.pt`` is shipped. Steps and wall seconds are summed from each run's ``log.jsonl``. ``--previous W`` (a
shipped weight file the first run was initialised from) carries its recorded runs over, so a chain continued in a
later session keeps its whole history:

    python bench/ship_dao_g.py --previous src/xtalforge/weights/dao_g_mp20.pt --runs runs/dao_g_mp20_d --name mp20 \
        --step_lr 1e-5 --benchmark "..." --out src/xtalforge/weights/dao_g_mp20.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xtalforge.models.dao_g import DAOG


def run_facts(run: Path) -> dict:
    """Steps, epochs and wall seconds of one run (from its last log line) and its training config."""
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    config = json.loads((run / "config.json").read_text())
    return {"run": str(run), "steps": lines[-1]["step"], "epochs": lines[-1]["epoch"],
            "wall_s": lines[-1]["seconds"], "final_loss": lines[-1]["loss"], "config": config}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="comma-separated run folders, in training order")
    ap.add_argument("--name", required=True)
    ap.add_argument("--step_lr", type=float, required=True, help="corrector step size stored with the weights")
    ap.add_argument("--benchmark", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--previous", type=Path, default=None, help="shipped weights the first run started from")
    ap.add_argument("--sampler_options", default="{}",
                    help='JSON of the default sampler settings stored with the weights, e.g. \'{"steps": 50, '
                         '"anti_anneal": 2}\' (DAOGMethod reads them)')
    args = ap.parse_args()
    runs = [run_facts(Path(r)) for r in args.runs.split(",")]
    if args.previous is not None:
        runs = list(DAOG.load(args.previous).meta.get("train_runs", [])) + runs
    model = DAOG.load(Path(args.runs.split(",")[-1]) / "ema.pt")
    model.meta.update({
        "name": args.name, "step_lr": args.step_lr, "benchmark": args.benchmark,
        "train_steps": sum(r["steps"] for r in runs), "train_wall_s": sum(r["wall_s"] for r in runs),
        "train_runs": runs, "sampler_options": json.loads(args.sampler_options),
    })
    model.save(args.out)
    print(json.dumps({k: v for k, v in model.meta.items() if k not in ("z_prior", "train_runs")}, indent=1))
    for r in runs:
        print(r["run"], r["steps"], "steps", round(r["wall_s"] / 60), "min", "loss", round(r["final_loss"], 3))


if __name__ == "__main__":
    main()
