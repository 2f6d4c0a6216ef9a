"""DAO-G on CPU: training throughput, sampling time vs steps, peak memory, CSP match rates (and template refinement).

Sections (run one or several; each merges its results into bench/results/dao_g.json):

* ``throughput``: forward + backward + AdamW step of the loss on MP-20 bi/ternary val batches (size-bucketed,
  ``--batch_atoms`` padded atoms per batch), crystals/s at 1 and 2 threads, default and paper-sized backbones.
* ``sampling``: seconds per generated structure vs sampler steps, sampled as ``predict`` does (``--samples_per_entry``
  samples of each of ``--sample_batch`` test compositions, size-bucketed batches). Rows without ``batching`` are
  older measurements of one padded batch of 32 compositions (padding to the largest cell cost 2-3x).
* ``csp``: :func:`xtalforge.evaluation.evaluate_csp` on ``--limit`` test entries (k = 1 and 20) for DAO-G and for
  ``template+dao-g`` (template candidates noised to ``--start_t`` and denoised), run folders under ``runs/bench_dao_g``.

Usage::

    nice python bench/dao_g.py --sections throughput
    nice python bench/dao_g.py --sections sampling --weights perov_5 --bench perov_5
    nice python bench/dao_g.py --sections csp --weights perov_5 --bench perov_5 --limit 100 --steps 50
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from template_csp import settings_tag  # noqa: I001  (sibling script)

from xtalforge.backbone.crysformer import CrysformerConfig
from xtalforge.data.batch import collate, size_bucketed_batches
from xtalforge.data.protocol import BENCHMARKS, load_split, sample_indices
from xtalforge.evaluation.report import package_versions, write_json
from xtalforge.models.dao_g import DAOG, DAOGMethod

RESULTS = Path(__file__).resolve().parent / "results" / "dao_g.json"
RUNS = Path(__file__).resolve().parent.parent / "runs" / "bench_dao_g"


def weights_tag(weights: str) -> str:
    """Run-folder name part for DAO-G weights: the shipped name, or a file's stem plus a hash of its bytes (two runs'
    ``ema.pt`` must not share a resumable folder)."""
    path = Path(weights)
    if not path.is_file():
        return weights
    return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_throughput(args) -> list[dict]:
    data = load_split("mp_20_biternary", "val")
    batches = size_bucketed_batches(data.num_atoms, args.batch_atoms, np.random.default_rng(0), 256)
    rows = []
    for name, cfg, n_batches in (("default", CrysformerConfig(), 12), ("paper", CrysformerConfig.paper(), 3)):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = DAOG(cfg)
            opt = torch.optim.AdamW(model.parameters(), 1e-4)
            crystals, seconds = 0, 0.0
            for i, idx in enumerate(batches[: n_batches + 1]):
                batch = collate(data, idx)
                t0 = time.perf_counter()
                loss, _ = model.loss(batch, torch.Generator().manual_seed(i))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i > 0:  # the first step warms up allocators
                    seconds += time.perf_counter() - t0
                    crystals += len(idx)
            rows.append({"backbone": name, "params": sum(p.numel() for p in model.parameters()), "threads": threads,
                         "crystals_per_s": crystals / seconds, "batches": n_batches, "crystals": crystals,
                         "peak_rss_mb": peak_rss_mb()})
            print(rows[-1], flush=True)
    return rows


def bench_sampling(args) -> list[dict]:
    """CPU time per structure as ``predict`` / ``evaluate`` sample: ``--samples_per_entry`` samples of each of
    ``--sample_batch`` test compositions through :meth:`DAOGMethod.generate` (size-bucketed batches of up to 256
    cells, plus the final scoring call)."""
    torch.set_num_threads(args.threads)
    model = DAOG.load(args.weights)
    test = load_split(args.bench, "test")
    idx = sample_indices(len(test), args.sample_batch, seed=0)
    targets = [test.atoms_of(i).tolist() for i in idx]
    n_structures = len(targets) * args.samples_per_entry
    rows = []
    for spec in args.sampling_grid.split(","):
        sampler, steps = spec.split(":")
        method = DAOGMethod(model, steps=int(steps), sampler=sampler, step_lr=BENCHMARKS[args.bench].step_lr)
        t0, c0 = time.perf_counter(), time.process_time()
        method.generate(targets, args.samples_per_entry, seed=0)
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0  # CPU time is robust to a shared machine
        calls = int(steps) * (2 if sampler == "pc" else 1)
        rows.append({"weights": args.weights, "bench": args.bench, "sampler": sampler, "steps": int(steps),
                     "network_calls": calls, "batching": "size-bucketed, as predict/evaluate",
                     "entries": len(idx), "samples_per_entry": args.samples_per_entry,
                     "mean_atoms": float(test.num_atoms[idx].mean()), "s_per_structure": sec / n_structures,
                     "cpu_s_per_structure": cpu / n_structures, "threads": args.threads,
                     "peak_rss_mb": peak_rss_mb(), "torch": torch.__version__})
        print(rows[-1], flush=True)
    return rows


def bench_csp(args) -> list[dict]:
    from xtalforge.evaluation import evaluate_csp, template_free_mask
    from xtalforge.methods import get_method
    from xtalforge.models.dao_g import TemplateRefine
    from xtalforge.templates import benchmark_library

    torch.set_num_threads(args.threads)
    test = load_split(args.bench, "test")
    ks = [int(k) for k in args.ks.split(",")]
    step_lr = BENCHMARKS[args.bench].step_lr
    rows = []
    for spec in args.csp_methods.split(","):
        t0 = time.perf_counter()
        dao = DAOGMethod(DAOG.load(args.weights), steps=args.steps, sampler=args.sampler, step_lr=step_lr)
        if spec == "dao-g":
            method = dao
        elif spec == "template":  # the baseline the refinement must beat, on the same entries
            method = get_method("template", library=benchmark_library(args.bench, pooled=False))
        elif spec == "auto":  # what `xtalforge predict` runs: templates, DAO-G samples for the slots they leave
            from xtalforge.pipeline import TemplatesThenGenerator

            method = TemplatesThenGenerator(get_method("template", library=benchmark_library(args.bench, pooled=False)),
                                            lambda dao=dao: dao)
        else:  # template+dao-g[:mode]
            library = benchmark_library(args.bench, pooled=False)
            dao.steps = args.refine_steps
            mode = spec.split(":")[1] if ":" in spec else "refined"
            method = TemplateRefine(get_method("template", library=library), dao, start_t=args.start_t, mode=mode)
        out = RUNS / f"{args.bench}_{weights_tag(args.weights)}_{spec.replace(':', '_')}_{args.sampler}{args.steps}" \
            f"_t{args.start_t}_r{args.refine_steps}_n{args.limit}_k{max(ks)}" \
            f"{'' if args.subset == 'all' else '_' + args.subset}_{settings_tag(method)}"
        # the template-free subset: test entries whose anonymised formula is absent from the benchmark's val split
        library = load_split(args.bench, BENCHMARKS[args.bench].train_split)
        rows_of = test if args.subset == "all" else test.subset(np.nonzero(template_free_mask(test, library))[0])
        report = evaluate_csp(method, rows_of, ks=ks, out_dir=out, limit=args.limit, workers=1, progress=False,
                              library=library)
        row = {"method": spec, "weights": args.weights, "bench": args.bench, "sampler": args.sampler,
               "steps": args.steps, "start_t": args.start_t if spec.startswith("template+") else None,
               "refine_steps": args.refine_steps if spec.startswith("template+") else None,
               "entries": min(args.limit, len(rows_of)), "subset": args.subset,
               "results": report["results"], "generation_s_per_entry": report["timings"]["generation_s_per_entry"],
               "wall_s": time.perf_counter() - t0, "run_dir": str(out)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(results: dict) -> str:
    lines = []
    if results.get("throughput"):
        lines += ["| backbone | params | threads | crystals/s | peak RSS MB |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['backbone']} | {r['params']} | {r['threads']} | {r['crystals_per_s']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} |" for r in results["throughput"]]
    if results.get("sampling"):
        lines += ["", "| weights | sampler | steps | net calls | batching | threads | s/structure | CPU-s/structure |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['weights']} | {r['sampler']} | {r['steps']} | {r['network_calls']} | "
                  f"{r.get('batching', 'one padded batch')} | {r['threads']} | "
                  f"{r['s_per_structure']:.3f} | {r.get('cpu_s_per_structure', float('nan')):.3f} |"
                  for r in results["sampling"]]
    if results.get("csp"):
        lines += ["", "| bench | method | sampler/steps | start_t | entries | k | match % | RMSE |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["csp"]:
            for k, m in r["results"]["metrics"].items():
                lines.append(f"| {r['bench']} | {r['method']} | {r['sampler']}/{r['steps']} | {r['start_t']} | "
                             f"{r['entries']} | {k} | {m['match_rate']:.1f} | "
                             f"{m['rmse'] if m['rmse'] is None else round(m['rmse'], 4)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="throughput,sampling,csp")
    p.add_argument("--out", default=str(RESULTS), help="results JSON (rows are appended to its sections)")
    p.add_argument("--weights", default="mp20", help="shipped name or path of DAO-G weights")
    p.add_argument("--bench", default="mp_20_biternary")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch_atoms", type=int, default=1024)
    p.add_argument("--sample_batch", type=int, default=32, help="sampling: test compositions")
    p.add_argument("--samples_per_entry", type=int, default=20, help="sampling: samples of each composition")
    p.add_argument("--sampling_grid", default="ode:20,ode:50,pc:50,pc:100,pc:1000")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--ks", default="1,20")
    p.add_argument("--sampler", default="ode")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--csp_methods", default="dao-g,template+dao-g")
    p.add_argument("--start_t", type=int, default=100)
    p.add_argument("--refine_steps", type=int, default=20)
    p.add_argument("--subset", choices=["all", "template_free"], default="all",
                   help="test rows: all, or those whose anonymised formula is absent from the val split")
    args = p.parse_args()
    out = Path(args.out)
    new_rows = {section: {"throughput": bench_throughput, "sampling": bench_sampling, "csp": bench_csp}[section](args)
                for section in args.sections.split(",")}
    # read the file only now: another run may have appended rows while this one was computing
    results = json.loads(out.read_text()) if out.is_file() else {}
    for section, rows in new_rows.items():
        results[section] = results.get(section, []) + rows
    results["versions"] = package_versions()
    results["settings_last_run"] = vars(args)
    write_json(out, results)
    print(markdown(results))


if __name__ == "__main__":
    main()
