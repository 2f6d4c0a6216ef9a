"""The ``xtalforge`` command line: predict, design, evaluate, generate, evaluate-generation, optimize, relax,
property, train, datasets.

Every user error becomes one line on stderr naming the problem and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
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
    p.add_argument("--device", type=device_name, default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")


def _add_cdvae(p: argparse.ArgumentParser, command: str) -> None:
    """Options of the commands that run the shipped CDVAE weights of a benchmark (generate, optimize)."""
    p.add_argument("--data", default="mp_20_biternary", help="benchmark whose shipped CDVAE weights to use")
    p.add_argument("--sampler", default=None, choices=["fast", "medium", "faithful"],
                   help="Langevin steps per noise level: fast 1 (default), medium 10, faithful 100 (the paper's)")
    p.add_argument("--weights", default=None, metavar="NAME|PATH", help="CDVAE weights (default: those of --data)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default=None, help=f"output folder (default ./xtalforge_{command}_<data>)")
    _add_device(p)


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, metavar="NAME|PATH",
                   help="model weights: a shipped name (src/xtalforge/weights/) or a file")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps of DAO-G (default: the weights')")
    p.add_argument("--guidance", type=float, default=0.0, metavar="S",
                   help="DAO-P energy guidance strength of DAO-G sampling (default 0: off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


#: methods whose ``weights`` are DAO-G weights (the template method's ``weights`` are its ranking weights)
DAO_G_WEIGHTS_METHODS = ("auto", "dao-g", "template+dao-g")
#: methods that take ``--weights`` (the symmetry method: Wyckoff flow weights)
WEIGHTS_METHODS = (*DAO_G_WEIGHTS_METHODS, "symmetry")


def _add_symmetry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spacegroup", type=positive_int, default=None, metavar="N",
                   help="sample in space group N (1-230) with the symmetry method")
    p.add_argument("--wyckoff", default=None, metavar="EL:LETTER ...",
                   help='Wyckoff positions of that group, e.g. "Mg:a B:d" (default: every fitting assignment)')
    p.add_argument("--target", default=None, metavar="PROP=VALUE,...",
                   help="property targets of the symmetry method: formation_energy (eV/atom), band_gap (eV)")


def parse_targets(text: str | None) -> dict[str, float]:
    """``"band_gap=1.5,formation_energy=-2"`` -> {"band_gap": 1.5, "formation_energy": -2.0}."""
    out: dict[str, float] = {}
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise XtalforgeError(f"--target takes PROPERTY=NUMBER pairs, got '{item}'") from None
    return out


def _dao_g_weights(args, benchmark: str | None = None) -> dict:
    """``{"weights": ...}`` for ``--weights`` (or the weights trained for ``benchmark``), refused for a method that
    samples no DAO-G."""
    if args.weights and args.method not in WEIGHTS_METHODS:
        raise XtalforgeError(f"--weights (model weights) applies to --method {', '.join(WEIGHTS_METHODS)}, "
                             f"not {args.method}")
    if args.weights:
        return {"weights": args.weights}
    if benchmark is not None and args.method in DAO_G_WEIGHTS_METHODS:
        from xtalforge.data.protocol import BENCHMARKS

        own = BENCHMARKS[benchmark].dao_g_weights
        return {"weights": own} if own else {}
    return {}


def _method_kwargs(args, benchmark: str | None = None) -> dict:
    """Keyword arguments of the method from the sampling options, only those it takes."""
    from xtalforge.methods import method_parameters

    params = method_parameters(args.method)
    kwargs: dict = {}
    if args.steps is not None:
        if "steps" not in params:
            raise XtalforgeError(f"--steps applies to sampling methods, not {args.method}")
        kwargs["steps"] = args.steps
    if args.guidance:
        if "guidance" not in params:
            raise XtalforgeError(f"--guidance applies to DAO-G sampling, not {args.method}")
        kwargs["guidance"] = args.guidance
    kwargs.update(_dao_g_weights(args, benchmark))
    symmetry = {"spacegroup": getattr(args, "spacegroup", None), "wyckoff": getattr(args, "wyckoff", None),
                **parse_targets(getattr(args, "target", None))}
    symmetry = {k: v for k, v in symmetry.items() if v is not None}
    if symmetry and args.method != "symmetry":
        raise XtalforgeError(f"--spacegroup, --wyckoff and --target apply to --method symmetry, not {args.method}")
    unknown = set(symmetry) - {"spacegroup", "wyckoff", "formation_energy", "band_gap"}
    if unknown:
        raise XtalforgeError(f"unknown --target property '{sorted(unknown)[0]}' (choose formation_energy, band_gap)")
    kwargs.update(symmetry)
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    import xtalforge
    from xtalforge.generation import PRIOR_WEIGHT
    from xtalforge.prediction import GENERATOR_POOLS, RANK_BY

    parser = argparse.ArgumentParser(prog="xtalforge", description="Crystal structure prediction on a laptop CPU.",
                                     epilog="`xtalforge COMMAND --help` for each command; docs/ for how methods work.")
    parser.add_argument("--version", action="version", version=f"xtalforge {xtalforge.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="ranked candidate structures for a formula, as CIF files and a report",
                       description="Ranked candidate structures for a formula: CIFs, summary.csv, run.json and "
                       "index.html in --out. A formula without a common factor (CsV3Sb5) is reduced: every Z that "
                       "fits is tried and each candidate's Z is shown; --z fixes it.")
    p.add_argument("formula", help="e.g. CsV3Sb5 (reduced: Z enumerated) or Ga4Te4 (exact cell)")
    p.add_argument("--n", type=positive_int, default=20, help="number of candidates (default 20)")
    p.add_argument("--z", type=positive_int, default=None, help="formula units per cell")
    p.add_argument("--method", default="auto",
                   help="auto (default), template, redecorate, dao-g, symmetry; see docs/methods.md")
    p.add_argument("--relax", default="none", choices=["none", "chgnet"], help="relax the candidates with CHGNet")
    p.add_argument("--rank-by", default="auto", choices=RANK_BY,
                   help="candidate order; auto: the method's, consensus for dao-g, CHGNet energy for symmetry "
                        "and with --relax")
    p.add_argument("--pool", type=positive_int, default=None,
                   help="candidates drawn before ranking (default --n; "
                        + ", ".join(f"{v} for {k}" for k, v in GENERATOR_POOLS.items()) + ")")
    p.add_argument("--no-redecorate", action="store_true", help="auto without re-decorated templates (no CHGNet)")
    p.add_argument("--no-report", action="store_true", help="skip index.html (pictures of the candidates)")
    _add_symmetry(p)
    _add_sampling(p)
    p.add_argument("--out", default=None, help="output folder (default ./xtalforge_<formula>)")
    _add_device(p)

    p = sub.add_parser("design", help="structures of given elements aimed at a band gap / formation energy",
                       description="Charge-balanced compositions of the elements (SMACT), symmetry from the proposer, "
                       "structures from the property-conditioned Wyckoff flow; ranked by closeness of the predicted "
                       "properties (DAO-P) to the targets plus CHGNet energy above the lowest found per composition.")
    p.add_argument("--elements", required=True, help="comma-separated, e.g. Li,Fe,P,O")
    p.add_argument("--band-gap", type=float, default=None, help="target band gap (eV)")
    p.add_argument("--formation-energy", type=float, default=None, help="target formation energy (eV/atom)")
    p.add_argument("--spacegroup", type=positive_int, default=None, metavar="N", help="only space group N")
    p.add_argument("--max-atoms", type=positive_int, default=40, help="largest cell (default 40)")
    p.add_argument("--n", type=positive_int, default=20, help="structures returned (default 20)")
    p.add_argument("--compositions", type=positive_int, default=6, help="compositions sampled (default 6)")
    p.add_argument("--samples", type=positive_int, default=8, help="samples per composition (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default=None, help="output folder (default ./xtalforge_design_<elements>)")
    _add_device(p)

    p = sub.add_parser("evaluate", help="CSP match rate and RMSE of a method on a benchmark or a CSV of structures",
                       description="Runs what `predict` runs on every test structure's exact cell and matches the "
                       "candidates with StructureMatcher (get_rms_dist, stol 0.5, ltol 0.3, angle_tol 10). "
                       "Resumable: rerun with the same --out.")
    p.add_argument("--data", required=True, help="benchmark name (`xtalforge datasets`) or a CSV with a cif column")
    p.add_argument("--method", default=None, help="template (default), auto, dao-g, redecorate, symmetry")
    p.add_argument("--given-symmetry", action="store_true",
                   help="sample each test structure's own space group and Wyckoff positions (--method symmetry)")
    p.add_argument("--k", default="1,20", help="comma-separated k values (default 1,20)")
    p.add_argument("--limit", type=positive_int, default=None, help="a reproducible random sample of N entries")
    p.add_argument("--rank-by", default="auto", choices=RANK_BY, help="candidate order, as for predict")
    p.add_argument("--pool", type=positive_int, default=None, help="candidates drawn before ranking, as for predict")
    p.add_argument("--library", default="pooled+aflow", choices=["pooled+aflow", "pooled", "own"],
                   help="template library: pooled val splits + AFLOW (default), pooled val, own val split")
    p.add_argument("--out", default=None, help="the run's folder (default results/<data>_<method>)")
    p.add_argument("--workers", type=positive_int, default=None, help="matching processes (default: all cores)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (default: local processes)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per structure pair before giving up")
    _add_sampling(p)
    _add_device(p)

    p = sub.add_parser("generate", help="new crystals from scratch (no composition given) with CDVAE",
                       description="De novo crystals from the generative model trained on a benchmark: "
                       "structures/*.cif, generated.csv (formula, atoms, space group, density, validity, DAO-P "
                       "formation energy) and run.json in --out. Resumable in batches: rerun with the same options.")
    p.add_argument("--model", default="cdvae", choices=["cdvae"], help="generative model (default cdvae)")
    p.add_argument("--n", type=positive_int, default=100, help="number of structures (default 100)")
    p.add_argument("--relax", default="none", choices=["none", "chgnet"], help="relax each structure with CHGNet")
    p.add_argument("--batch", type=positive_int, default=250, help="structures per resumable batch (default 250)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes making batches, one torch thread each (default 1; the structures do not change)")
    p.add_argument("--latent", default="auto", choices=["auto", "prior", "mixture"],
                   help="latents from N(0, I) (prior, the paper's) or from the Gaussian mixture of the training "
                   "crystals' latents (closer to the data); auto (default): the mixture if the weights carry one")
    _add_cdvae(p, "generate")

    p = sub.add_parser("evaluate-generation", help="de novo metrics of a generate run against a benchmark",
                       description="Validity, COV-R / COV-P, Wasserstein distances (density, elements, formation "
                       "energy), uniqueness, novelty and the share above P1 of a finished `generate` folder; "
                       "writes metrics.json there.")
    p.add_argument("folder", help="the --out folder of `xtalforge generate`")
    p.add_argument("--reference", required=True, help="benchmark: test split for the metrics, its training split "
                   "for novelty")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes for the fingerprints, matching and CHGNet (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the 1,000 valid samples behind the distances")
    p.add_argument("--stability", action="store_true",
                   help="also the CHGNet stability proxy (within 0.1 eV/atom of the lowest found per formula)")

    p = sub.add_parser("optimize", help="push crystals down (or up) a property in CDVAE's latent space",
                       description="CDVAE's latent property optimisation: encode each starting crystal, take Adam "
                       "steps on its latent against the property head, decode snapshots along the path. Writes "
                       "structures/*.cif, optimized.csv (with the independent DAO-P formation energy) and run.json "
                       "in --out; resumable: rerun with the same options.")
    p.add_argument("start", nargs="*", help="starting CIF / POSCAR / extxyz files (default: --n random test "
                   "crystals of --data)")
    p.add_argument("--property", default="formation_energy",
                   help="the property of the weights' head (default formation_energy)")
    p.add_argument("--maximize", action="store_true", help="raise the property instead of lowering it")
    p.add_argument("--n", type=positive_int, default=100, help="random test crystals to start from (default 100)")
    p.add_argument("--steps", type=positive_int, default=5000, help="Adam steps on each latent (default 5000)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3, the paper's)")
    p.add_argument("--snapshots", type=positive_int, default=10, help="latents decoded along each path (default 10)")
    p.add_argument("--prior-weight", type=float, default=PRIOR_WEIGHT, metavar="W",
                   help=f"weight of the latent prior term |z|^2/2 that keeps paths where the decoder was trained "
                   f"(default {PRIOR_WEIGHT:g}; the paper's protocol: 0)")
    _add_cdvae(p, "optimize")

    p = sub.add_parser("relax", help="relax a structure with CHGNet", description="Relax atoms and cell with "
                       "CHGNet (FIRE); writes the relaxed CIF and the energy of every step.")
    p.add_argument("file", help="CIF, POSCAR or extxyz file")
    p.add_argument("--potential", default="chgnet", choices=["chgnet"], help="universal potential (default chgnet)")
    p.add_argument("--fmax", type=float, default=0.1, help="force tolerance in eV/A (default 0.1)")
    p.add_argument("--steps", type=positive_int, default=500, help="most optimiser steps (default 500)")
    p.add_argument("--out", default=None, help="relaxed structure file (default <file>_relaxed.cif)")

    p = sub.add_parser("property", help="predict a property of structures or compositions with shipped weights",
                       description="Predict a property with the shipped weights (fine-tuned DAO-P; a composition "
                       "model for Tc). A composition gets a structure from --method first.")
    p.add_argument("file", nargs="+", help="CIF, POSCAR or extxyz file(s), or compositions")
    p.add_argument("--property", required=True, help="formation_energy, band_gap, tc, bulk_modulus, shear_modulus, "
                   "debye_temperature, thermal_conductivity or thermal_expansion")
    p.add_argument("--model", default=None, choices=["dao_p", "composition"], help="model kind (default: shipped)")
    p.add_argument("--method", default="auto", help="CSP method for compositions (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed of that method (default 0)")

    p = sub.add_parser("train", help="train DAO-G / DAO-P / the Wyckoff flow / the symmetry proposer / CDVAE",
                       description="Train a model; every option after the model name goes to its training script.")
    p.add_argument("model", choices=["dao-g", "wyckoff-flow", "symmetry-proposer", "cdvae"],
                   help="dao-g (its --model dao-g-flow / dao-p selects the variant), wyckoff-flow, symmetry-proposer "
                   "or cdvae")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the training script (--help lists them)")

    sub.add_parser("datasets", help="list the benchmark data sets and the protocol")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return {"predict": cmd_predict, "design": cmd_design, "evaluate": cmd_evaluate, "relax": cmd_relax,
                "generate": cmd_generate, "evaluate-generation": cmd_evaluate_generation,
                "optimize": cmd_optimize, "property": cmd_property,
                "train": cmd_train,
                "datasets": cmd_datasets}[args.command](args)
    except XtalforgeError as exc:
        print("xtalforge: error: " + " ".join(str(exc).split()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("xtalforge: interrupted (finished results are kept; rerun to resume)", file=sys.stderr)
        return 130


def cmd_predict(args) -> int:
    from xtalforge.prediction import format_table, predict, write_candidates

    t0 = time.perf_counter()
    if args.spacegroup is not None and args.method == "auto":  # a requested group is what the symmetry method is
        args.method = "symmetry"
    kwargs = _method_kwargs(args)
    if args.no_redecorate:
        if args.method != "auto":
            raise XtalforgeError(f"--no-redecorate applies to --method auto, not {args.method}")
        kwargs["redecorate_candidates"] = 0
    candidates = predict(args.formula, n=args.n, method=args.method, relax=args.relax, seed=args.seed, z=args.z,
                         device=args.device, rank_by=args.rank_by, pool=args.pool, **kwargs)
    out = Path(args.out or f"xtalforge_{args.formula}")
    settings = {k: v for k, v in vars(args).items() if k != "command"}
    write_candidates(candidates, out, settings, report=not args.no_report)
    print(format_table(candidates))
    zs = Counter(c.z for c in candidates)
    cells = ", ".join(f"Z={z}: {k}" for z, k in sorted(zs.items()))
    print(f"\n{len(candidates)} candidates ({cells}) written to {out}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_evaluate(args) -> int:
    from xtalforge.data import BENCHMARKS, load_csv, load_split, training_set
    from xtalforge.evaluation import evaluate_csp, markdown_table
    from xtalforge.methods import method_parameters
    from xtalforge.prediction import predictor

    args.method = args.method or ("symmetry" if args.given_symmetry else "template")
    try:
        ks = tuple(sorted({int(k) for k in args.k.split(",")}))
    except ValueError:
        raise XtalforgeError(f"--k takes comma-separated whole numbers, got '{args.k}'") from None
    if not ks or ks[0] < 1:
        raise XtalforgeError(f"--k values must be at least 1, got '{args.k}'")
    out = Path(args.out) if args.out else Path("results") / f"{Path(args.data).name}_{args.method}"
    if out.suffix == ".json":  # the old spelling <folder>/report.json; any other file name would be ignored
        if out.name != "report.json":
            raise XtalforgeError(f"--out is the run's folder (it gets candidates, matches and report.json), "
                                 f"not a report file: {out}")
        out = out.parent
    benchmark = args.data if args.data in BENCHMARKS else None
    if benchmark:
        test = load_split(args.data, "test")
        pooled, aflow = args.library != "own", args.library == "pooled+aflow"
        library = training_set(args.data, pooled=pooled, aflow=aflow)
    else:
        test = load_csv(args.data)
        library = None
    kwargs = _method_kwargs(args, benchmark)
    if library is not None and "library" in method_parameters(args.method):
        from xtalforge.templates.library import benchmark_library

        # the protocol-clean library for this benchmark (cached on disk after the first symmetry analysis)
        kwargs["library"] = benchmark_library(args.data, pooled=pooled, aflow=aflow)
    method = predictor(args.method, n=max(ks), rank_by=args.rank_by, pool=args.pool, device=args.device, **kwargs)
    report = evaluate_csp(method, test, ks=ks, out_dir=out, limit=args.limit, seed=args.seed,
                          workers=args.workers, scheduler=args.scheduler, library=library, timeout=args.timeout,
                          given_symmetry=args.given_symmetry)
    curve = _plot_curve(out, max(ks), f"{args.method} on {Path(args.data).name}")
    print(markdown_table(report))
    print(f"\nreport written to {out / 'report.json'}" + (f", match rate against k in {curve}" if curve else ""))
    return 0


def _plot_curve(out: Path, k_max: int, title: str) -> Path | None:
    """``match_rate.png`` of an evaluate run: match rate against k (None when there is nothing to plot)."""
    from xtalforge.visualize import match_rate_curve, plot_match_rate_curve

    matches = out / "matches.jsonl"
    if not matches.is_file():
        return None
    return plot_match_rate_curve(match_rate_curve(matches, k_max), out / "match_rate.png", title)


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


def cmd_design(args) -> int:
    import logging

    from xtalforge.design import as_candidates, check_targets, design, format_designs
    from xtalforge.prediction import write_candidates

    t0 = time.perf_counter()
    logging.basicConfig(format="xtalforge: warning: %(message)s", level=logging.WARNING)
    targets = check_targets({k: v for k, v in (("band_gap", args.band_gap),
                                               ("formation_energy", args.formation_energy)) if v is not None})
    elements = args.elements.split(",")
    found = design(elements, targets, spacegroup=args.spacegroup, max_atoms=args.max_atoms, n=args.n,
                   compositions_tried=args.compositions, samples=args.samples, seed=args.seed, device=args.device)
    out = Path(args.out or f"xtalforge_design_{''.join(e.strip() for e in elements)}")
    settings = {k: v for k, v in vars(args).items() if k != "command"}
    write_candidates(as_candidates(found), out, settings)
    print(format_designs(found, targets))
    print(f"\n{len(found)} structures written to {out}/ in {time.perf_counter() - t0:.1f} s "
          "(* = predicted property within the hit window of its target)")
    return 0


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from xtalforge.generation import generate_to_folder

    t0 = time.perf_counter()
    out = Path(args.out or f"xtalforge_generate_{args.data}")
    with tqdm(total=args.n, desc="generate", unit="structure", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        table = generate_to_folder(out, model=args.model, data=args.data, n=args.n, seed=args.seed,
                                   sampler=args.sampler, weights=args.weights, relax=args.relax, device=args.device,
                                   batch_size=args.batch, progress=progress, latent=args.latent,
                                   workers=args.workers)
    import pandas as pd

    frame = pd.read_csv(table)
    print(f"{len(frame)} structures in {out}/ ({time.perf_counter() - t0:.1f} s): "
          f"{100 * frame['struct_valid'].mean():.1f}% structurally valid, {100 * frame['smact_valid'].mean():.1f}% "
          f"SMACT-valid, {100 * (frame['spacegroup'].fillna(1) > 1).mean():.1f}% above P1; table: {table}")
    return 0


def cmd_evaluate_generation(args) -> int:
    from xtalforge.generation import evaluate_generation

    m = evaluate_generation(args.folder, args.reference, workers=args.workers, seed=args.seed,
                            stability=args.stability)
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print("| metric | value |\n|---|---|")
    for key in ("n_generated", "struct_valid", "comp_valid", "valid", "cov_recall", "cov_precision",
                "wdist_density", "wdist_num_elems", "wdist_formation_energy", "unique", "novel", "unique_and_novel",
                "above_p1", "reference_above_p1", "stable", "sun_proxy"):
        if key in m:
            print(f"| {key} | {fmt(m[key]) if key != 'n_generated' else m[key]} |")
    print(f"\nwritten to {Path(args.folder) / 'metrics.json'}")
    return 0


def cmd_optimize(args) -> int:
    from tqdm import tqdm

    from xtalforge.crystal import Crystal
    from xtalforge.generation import optimize_to_folder

    t0 = time.perf_counter()
    starts = [Crystal.read(f) for f in args.start] or None
    out = Path(args.out or f"xtalforge_optimize_{args.data}")
    with tqdm(total=len(starts) if starts else args.n, desc="optimize", unit="start", disable=None) as bar:
        table = optimize_to_folder(out, data=args.data, prop=args.property, starts=starts, n=args.n,
                                   maximize=args.maximize, steps=args.steps, lr=args.lr, snapshots=args.snapshots,
                                   sampler=args.sampler, seed=args.seed, weights=args.weights, device=args.device,
                                   prior_weight=args.prior_weight,
                                   progress=lambda done, total: bar.update(done - bar.n))
    import pandas as pd

    frame = pd.read_csv(table)
    valid = frame[frame["struct_valid"].astype(bool)]
    best = valid.groupby("start")["formation_energy"].agg("max" if args.maximize else "min")
    first = frame[frame["snapshot"] == 1].set_index("start")["formation_energy"]
    print(f"{frame['start'].nunique()} starting crystals, {len(frame)} decoded ({100 * len(valid) / len(frame):.1f}% "
          f"structurally valid) in {out}/ ({time.perf_counter() - t0:.1f} s); DAO-P formation energy, first "
          f"snapshot mean {first.mean():.3f}, best along each path mean {best.mean():.3f} eV/atom; table: {table}")
    return 0


def cmd_train(args) -> int:
    from xtalforge.training.train import train_main

    rest = args.rest if args.model == "dao-g" else ["--model", args.model, *args.rest]
    return int(train_main(rest) or 0)


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
