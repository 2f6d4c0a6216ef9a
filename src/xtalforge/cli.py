"""The ``xtalforge`` command line: predict, evaluate, relax, train, datasets.

Every user error becomes one line on stderr naming the problem and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from xtalforge.errors import XtalforgeError


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (steps, threads, workers, sample sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def device_name(text: str) -> str:
    """An argparse type: a torch device name (checked for availability when a model loads)."""
    from xtalforge.device import check_device_name

    try:
        return check_device_name(text)
    except XtalforgeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_name, default="cpu",
                   help="torch device for neural methods: cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, metavar="NAME|PATH",
                   help="DAO-G weights of dao-g / auto: a shipped name (mp20, mp20_flow, mpts52, perov_5, carbon_24) "
                        "or a file; default: mp20_flow (mp20 with --guidance), and mpts52 for cells of 21-52 atoms "
                        "with --method dao-g")


#: methods whose ``weights`` are DAO-G weights (the template method's ``weights`` are its ranking weights)
DAO_G_WEIGHTS_METHODS = ("auto", "dao-g", "template+dao-g")


def _dao_g_weights(args) -> dict:
    """``{"weights": ...}`` for ``--weights``, refused for a method that samples no DAO-G."""
    if not args.weights:
        return {}
    if args.method not in DAO_G_WEIGHTS_METHODS:
        raise XtalforgeError(f"--weights (DAO-G weights) applies to --method {', '.join(DAO_G_WEIGHTS_METHODS)}, "
                             f"not {args.method}")
    return {"weights": args.weights}


def _add_guidance(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guidance", type=float, default=0.0, metavar="S",
                   help="energy guidance strength s of DAO-G sampling by the shipped DAO-P energy model (default 0 = "
                   "off; bench/guidance.py measured no gain at s = 1 or 20)")


def _rank_note() -> str:
    from xtalforge.prediction import RANK_NOTE

    return RANK_NOTE.replace("%", "%%")  # argparse formats help strings with %


def build_parser() -> argparse.ArgumentParser:
    import xtalforge
    from xtalforge.prediction import GENERATOR_POOL

    parser = argparse.ArgumentParser(prog="xtalforge", description="Crystal structure prediction on a laptop CPU.")
    parser.add_argument("--version", action="version", version=f"xtalforge {xtalforge.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="ranked candidate structures for a formula, written as CIF files")
    p.add_argument("formula", help="e.g. CsV3Sb5 (reduced: Z is enumerated) or Ga4Te4 (exact cell)")
    p.add_argument("--n", type=int, default=20, help="number of candidates (default 20)")
    p.add_argument("--method", default="auto", help="auto (default: template candidates; re-decorated templates "
                   "and DAO-G samples fill the slots templates leave empty, up to ~1 min of CHGNet per cell; a "
                   "composition no template fits gets all three in turn), template, redecorate, dao-g")
    p.add_argument("--no-redecorate", action="store_true",
                   help="auto without re-decorated templates (no CHGNet calls: seconds instead of up to a minute)")
    p.add_argument("--relax", default="none", choices=["none", "chgnet"],
                   help="relax the returned candidates with CHGNet (DAO-G samples after ranking them by consensus)")
    p.add_argument("--rank-by", default="auto", metavar="{auto,score,dao-p,chgnet,consensus}",
                   help="order of the candidates: score (the method's own order), dao-p (DAO-P predicted energy), "
                   "chgnet (CHGNet energy per atom; of the relaxed structures with --relax chgnet), consensus (the "
                   "structure a generator drew most often first, ties by CHGNet energy); auto (default): the "
                   "method's order, CHGNet energy with --relax chgnet, consensus for --method dao-g (with --relax "
                   "too: the samples as drawn are ranked, then the best --n relaxed). " + _rank_note())
    p.add_argument("--z", type=int, default=None, help="formula units per cell (fixes the cell of a reduced formula)")
    p.add_argument("--pool", type=positive_int, default=None, help="candidates drawn before ranking, the best --n "
                   f"returned (default --n; for --method dao-g at least {GENERATOR_POOL}, unless --relax chgnet with "
                   "an energy --rank-by, which relaxes every drawn candidate)")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps of diffusion methods")
    _add_weights(p)
    _add_guidance(p)
    p.add_argument("--out", default=None, help="output folder (default ./xtalforge_<formula>)")
    p.add_argument("--seed", type=int, default=0)
    _add_device(p)

    p = sub.add_parser("evaluate", help="CSP match rate / RMSE of a method on a benchmark or CSV test set")
    p.add_argument("--data", required=True, help="benchmark name (see `xtalforge datasets`) or a CSV with a cif column")
    p.add_argument("--method", default="template")
    p.add_argument("--k", default="1,20", help="comma-separated k values (default 1,20)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="evaluate a reproducible random sample of N entries")
    p.add_argument("--library", default="pooled+aflow", choices=["pooled+aflow", "pooled", "own"],
                   help="template library / training data: pooled val splits and the AFLOW structures (default, "
                        "as the shipped library), pooled val splits only, or the benchmark's own val split")
    p.add_argument("--out", default=None, help="the run's folder: candidates.jsonl, matches.jsonl, report.json; "
                   "rerun with the same settings to resume (default results/<data>_<method>)")
    p.add_argument("--workers", type=positive_int, default=None, help="matching processes (default: all cores)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address; default local processes")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per structure pair before giving up")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps of diffusion methods")
    _add_weights(p)
    _add_guidance(p)
    p.add_argument("--seed", type=int, default=0)
    _add_device(p)

    p = sub.add_parser("relax", help="relax a structure with a universal potential")
    p.add_argument("file", help="CIF, POSCAR or extxyz file")
    p.add_argument("--potential", default="chgnet", choices=["chgnet"])
    p.add_argument("--fmax", type=float, default=0.1, help="force tolerance in eV/A")
    p.add_argument("--steps", type=positive_int, default=500)
    p.add_argument("--out", default=None, help="relaxed structure file (default <file>_relaxed.cif)")

    p = sub.add_parser("property", help="predict a property of a structure with shipped weights "
                       "(fine-tuned DAO-P; composition model for Tc)")
    p.add_argument("file", nargs="+", help="CIF, POSCAR or extxyz file(s), or compositions (a structure is generated "
                   "first with --method)")
    p.add_argument("--property", required=True, help="formation_energy, band_gap, tc, bulk_modulus, shear_modulus, "
                   "debye_temperature, thermal_conductivity or thermal_expansion")
    p.add_argument("--model", default=None, choices=["dao_p", "composition"],
                   help="model kind (default: the shipped one of the property)")
    p.add_argument("--method", default="auto", help="CSP method that generates a structure for a composition")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train a model (e.g. `xtalforge train dao-g --data mp_20_biternary`)")
    p.add_argument("model", choices=["dao-g"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the model's training script")

    sub.add_parser("datasets", help="list the benchmark data sets and the protocol")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return {"predict": cmd_predict, "evaluate": cmd_evaluate, "relax": cmd_relax, "property": cmd_property,
                "train": cmd_train,
                "datasets": cmd_datasets}[args.command](args)
    except XtalforgeError as exc:
        print(f"xtalforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xtalforge: interrupted (finished results are kept; rerun to resume)", file=sys.stderr)
        return 130


def cmd_predict(args) -> int:
    from xtalforge.prediction import format_table, predict, write_candidates

    t0 = time.perf_counter()
    kwargs = {} if args.steps is None else {"steps": args.steps}
    if args.guidance:
        kwargs["guidance"] = args.guidance
    kwargs.update(_dao_g_weights(args))
    if args.no_redecorate:
        if args.method != "auto":
            raise XtalforgeError(f"--no-redecorate applies to --method auto, not {args.method}")
        kwargs["redecorate_candidates"] = 0
    candidates = predict(args.formula, n=args.n, method=args.method, relax=args.relax, seed=args.seed, z=args.z,
                         device=args.device, rank_by=args.rank_by, pool=args.pool, **kwargs)
    out = Path(args.out or f"xtalforge_{args.formula}")
    settings = {k: v for k, v in vars(args).items() if k != "command"}
    write_candidates(candidates, out, settings)
    print(format_table(candidates))
    print(f"\n{len(candidates)} candidates written to {out}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_evaluate(args) -> int:
    from xtalforge.data import BENCHMARKS, load_csv, load_split, training_set
    from xtalforge.evaluation import evaluate_csp, markdown_table
    from xtalforge.methods import get_method, method_parameters

    ks = tuple(int(k) for k in args.k.split(","))
    out = Path(args.out) if args.out else Path("results") / f"{Path(args.data).name}_{args.method}"
    if out.suffix == ".json":  # the old spelling <folder>/report.json; any other file name would be ignored
        if out.name != "report.json":
            raise XtalforgeError(f"--out is the run's folder (it gets candidates, matches and report.json), "
                                 f"not a report file: {out}")
        out = out.parent
    if args.data in BENCHMARKS:
        test = load_split(args.data, "test")
        pooled, aflow = args.library != "own", args.library == "pooled+aflow"
        library = training_set(args.data, pooled=pooled, aflow=aflow)
    else:
        test = load_csv(args.data)
        library = None
    params = method_parameters(args.method)
    kwargs: dict = {"device": args.device} if "device" in params else {}  # the neural methods
    if args.steps is not None and "steps" in params:
        kwargs["steps"] = args.steps
    if args.guidance and "guidance" in params:
        kwargs["guidance"] = args.guidance
    kwargs.update(_dao_g_weights(args))
    if library is not None and "library" in params:
        from xtalforge.templates.library import benchmark_library

        # the protocol-clean library for this benchmark (cached on disk after the first symmetry analysis)
        kwargs["library"] = benchmark_library(args.data, pooled=pooled, aflow=aflow)
    method = get_method(args.method, **kwargs)
    report = evaluate_csp(method, test, ks=ks, out_dir=out, limit=args.limit, seed=args.seed,
                          workers=args.workers, scheduler=args.scheduler, library=library, timeout=args.timeout)
    print(markdown_table(report))
    print(f"\nreport written to {out / 'report.json'}")
    return 0


def cmd_relax(args) -> int:
    from xtalforge.crystal import Crystal, atomic_write_text
    from xtalforge.relax import relax

    crystal = Crystal.read(args.file)
    result = relax(crystal, potential=args.potential, fmax=args.fmax, steps=args.steps)
    out = Path(args.out or Path(args.file).with_suffix("").as_posix() + "_relaxed.cif")
    energies_csv = out.with_suffix(".energies.csv")
    atomic_write_text(energies_csv, "step,energy_eV_per_atom\n" + "".join(
        f"{i},{e:.6f}\n" for i, e in enumerate(result.energies)))
    result.crystal.write(out)
    state = "converged" if result.converged else "NOT converged"
    print(f"energy {result.energies[0]:.4f} -> {result.energies[-1]:.4f} eV/atom in {result.steps} steps ({state}); "
          f"wrote {out} and {energies_csv}")
    return 0


def cmd_property(args) -> int:
    from xtalforge.properties import PROPERTIES, load_property_model, resolve_structure

    regressor = load_property_model(args.property, args.model)  # unknown property: fail before generating anything
    for f in args.file:
        crystal = resolve_structure(f, method=args.method, seed=args.seed)
        value = float(regressor.predict([crystal])[0])
        source = ""
        if "generated_by" in crystal.properties:
            source = f"\t(structure generated by {args.method}: {crystal.formula}, {len(crystal.numbers)} atoms)"
        print(f"{f}\t{args.property}\t{value:.4f} {PROPERTIES[args.property].unit}{source}")
    return 0


def cmd_train(args) -> int:
    from xtalforge.training.train import train_main

    return int(train_main(args.rest) or 0)


def cmd_datasets(args) -> int:
    from xtalforge.data.protocol import BENCHMARKS, data_root, split_path

    root = data_root()
    print(f"data root: {root}\nprotocol: models and template libraries train on val; results are reported on test\n")
    print("| benchmark | train (val) file | test file | max atoms |")
    print("|---|---|---|---|")
    for b in BENCHMARKS.values():
        tr, te = split_path(b.name, b.train_split), split_path(b.name, b.test_split)
        ok = lambda p: p.name if p.is_file() else "missing"  # noqa: E731
        print(f"| {b.name} | {ok(tr)} | {ok(te)} | {b.max_atoms} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
