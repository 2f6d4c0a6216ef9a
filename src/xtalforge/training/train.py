"""Train DAO-G: one readable loop for single-process and DDP runs (nanoGPT style).

    python -m xtalforge.training.train --data mp_20_biternary+mpts_52 --out_dir runs/dao_g_mp --threads 1
    torchrun --nproc_per_node=2 -m xtalforge.training.train --data perov_5 --out_dir runs/dao_g_perov

Configuration is :class:`TrainConfig`: defaults, then a JSON file (``--config cfg.json``), then ``--field value``
overrides. AdamW, EMA of the weights, linear warm-up then cosine decay, gradient clipping, size-bucketed batches.
Every ``ckpt_minutes`` (and at the end) ``out_dir/ckpt.pt`` is written atomically together with ``out_dir/ema.pt``
(the EMA weights as a loadable :class:`~xtalforge.models.dao_g.DAOG`); rerunning the same command resumes from it,
bit-identically: data order depends only on (seed, epoch) and the noise of step s only on (seed, s, rank).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from xtalforge.backbone.crysformer import CrysformerConfig
from xtalforge.checkpoints import save_atomic
from xtalforge.crystal import atomic_write_text
from xtalforge.data.batch import collate, size_bucketed_batches
from xtalforge.data.dataset import CrystalDataset, load_csv
from xtalforge.data.protocol import BENCHMARKS, aflow_structures, check_no_leak, load_split, training_set
from xtalforge.device import torch_device
from xtalforge.errors import XtalforgeError
from xtalforge.models.dao_g.model import DAOG, z_prior


@dataclass
class TrainConfig:
    """Training settings (all plain values; a JSON file or the command line overrides them).

    Attributes:
        data: a benchmark name (its protocol training set), several joined by ``+`` (their val splits pooled, minus
            every row whose material_id is in any of their test splits), or a CSV path. ``+aflow`` adds the AFLOW
            structures of :func:`~xtalforge.data.protocol.aflow_structures` (no test formula of any benchmark).
        pooled: for a single benchmark, use :func:`training_set` with ``pooled=True``.
        max_atoms: drop training crystals with more atoms.
        out_dir: checkpoints, EMA weights and ``log.jsonl``.
        init_from: weights to start from (fine-tuning); ignored when resuming.
        hidden, layers, heads, n_freq: backbone size (see :class:`CrysformerConfig`).
        lr, weight_decay, warmup_steps, max_steps, min_lr_ratio: AdamW with warm-up and cosine decay to
            ``min_lr_ratio * lr`` at ``max_steps``.
        max_minutes: stop (with a checkpoint) after this much wall time in this process; 0 = no limit.
        batch_atoms, max_crystals: a batch holds at most this many padded atoms / crystals.
        ema_decay, grad_clip, seed, ckpt_minutes, log_every: as named.
        threads: torch CPU threads per process; device: ``cpu`` or ``cuda``.
        model: ``dao-g`` (diffusion only), ``dao-g-flow`` (the same backbone trained by flow matching,
            ``models/dao_g/flow.py``), ``dao-p`` (diffusion + exponential energy loss, see ``models/dao_p.py``) or
            ``wyckoff-flow`` (flow matching of the free Wyckoff and lattice parameters, ``models/wyckoff_flow``;
            the training crystals are symmetrised first, ``data/symmetric.py``) or ``symmetry-proposer`` (the
            autoregressive space group + Wyckoff proposer, ``models/symmetry_proposer``; ``batch_atoms`` counts
            tokens) or ``cdvae`` (the VAE with a score decoder, ``models/cdvae``; its property head learns the
            energy column).
        energy_column: DAO-P label column (eV/atom); empty = the benchmarks' ``energy_column``.
        cdvae_config: CDVAE only: :class:`~xtalforge.models.cdvae.CDVAEConfig` fields to change, as
            ``name=value`` pairs joined by commas (e.g. ``cost_composition=10``).
    """

    data: str = "mp_20_biternary"
    pooled: bool = False
    max_atoms: int = 52
    out_dir: str = "runs/dao_g"
    init_from: str = ""
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    n_freq: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    max_steps: int = 20000
    min_lr_ratio: float = 0.05
    max_minutes: float = 0.0
    batch_atoms: int = 2048
    max_crystals: int = 256
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_minutes: float = 5.0
    log_every: int = 20
    threads: int = 1
    device: str = "cpu"
    model: str = "dao-g"
    energy_column: str = ""
    cdvae_config: str = ""

    def model_config(self) -> CrysformerConfig:
        return CrysformerConfig(hidden=self.hidden, layers=self.layers, heads=self.heads, n_freq=self.n_freq)


def load_training_data(cfg: TrainConfig) -> tuple[CrystalDataset, list[str]]:
    """The training set (cells of at most ``cfg.max_atoms`` atoms) and the benchmarks whose test splits it was checked
    to hold no ``material_id`` of (protocol §5): a model may be reported only on those."""
    if Path(cfg.data).suffix in (".csv", ".gz") or Path(cfg.data).is_file():
        # a user's own file is not checked against the benchmarks (that would load every test split): the weights
        # record an empty `checked_no_leak`, so they are not claimed clean for any benchmark
        data = load_csv(cfg.data)
        return data.subset(np.flatnonzero(data.num_atoms <= cfg.max_atoms)), []
    names = cfg.data.split("+")
    extra = [aflow_structures()] if "aflow" in names else []
    names = [n for n in names if n != "aflow"]
    for name in names:
        if name not in BENCHMARKS:
            raise XtalforgeError(f"unknown benchmark '{name}' in --data (choose from {', '.join(BENCHMARKS)}, "
                                 "and 'aflow' for the AFLOW structures)")
    if not names:
        raise XtalforgeError("--data needs at least one benchmark next to 'aflow'")
    if len(names) == 1:
        data = training_set(names[0], pooled=cfg.pooled)
    else:
        forbidden = set().union(*(load_split(n, BENCHMARKS[n].test_split).ids for n in names))
        parts = []
        for n in names:
            val = load_split(n, BENCHMARKS[n].train_split)
            parts.append(val.subset([i for i, mid in enumerate(val.ids) if mid not in forbidden]))
        data = CrystalDataset.concat(parts, source=f"val splits of {cfg.data} minus their test ids")
    if extra:
        data = CrystalDataset.concat([data, *extra], source=f"{data.source} + {extra[0].source}")
    for name in names:
        check_no_leak(data, name)
    keep = np.flatnonzero(data.num_atoms <= cfg.max_atoms)
    return data.subset(keep), names


def energy_column(cfg: TrainConfig) -> str | None:
    """The label column a DAO-P run trains on (None for DAO-G): one column shared by every named benchmark."""
    if cfg.model in ("dao-g", "dao-g-flow", "wyckoff-flow", "symmetry-proposer"):
        return None
    if cfg.energy_column:
        return cfg.energy_column
    columns = {BENCHMARKS[n].energy_column for n in cfg.data.split("+") if n in BENCHMARKS}
    if len(columns) != 1 or None in columns:
        raise XtalforgeError(f"--data {cfg.data} has no single energy label: pass --energy_column")
    return columns.pop()


def build_model(cfg: TrainConfig, data, meta: dict) -> torch.nn.Module:
    """The model named by ``cfg.model`` (DAO-P gets its energy scaling from the training labels, the Wyckoff flow
    its property normalisation)."""
    if cfg.model == "dao-g":
        return DAOG(cfg.model_config(), meta=meta)
    if cfg.model == "dao-g-flow":
        from xtalforge.models.dao_g.flow import DAOGFlow

        return DAOGFlow(cfg.model_config(), meta=meta)
    if cfg.model == "dao-p":
        from xtalforge.models.dao_p import DAOP

        column = energy_column(cfg)
        return DAOP.for_labels(data.meta[column].to_numpy(), column, cfg=cfg.model_config(), meta=meta)
    if cfg.model == "wyckoff-flow":
        from xtalforge.models.wyckoff_flow import WyckoffFlow

        return WyckoffFlow.for_data(data.properties, cfg.model_config(), meta)
    if cfg.model == "cdvae":
        from xtalforge.models.cdvae import CDVAE

        return CDVAE.for_data(data, cfg.model_config(), meta, energy_column(cfg), cdvae_overrides(cfg.cdvae_config))
    if cfg.model == "symmetry-proposer":
        from xtalforge.models.symmetry_proposer import ProposerConfig, SymmetryProposer

        return SymmetryProposer(ProposerConfig(hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads), meta)
    raise XtalforgeError(f"unknown model '{cfg.model}' (choose dao-g, dao-g-flow, dao-p, wyckoff-flow, "
                         "symmetry-proposer or cdvae)")


def cdvae_overrides(text: str) -> dict[str, float]:
    """``"cost_composition=10,beta_kl=0.005"`` -> CDVAEConfig field values (one clear error for a wrong name)."""
    from xtalforge.models.cdvae import CDVAEConfig

    kinds = {f.name: f.type for f in fields(CDVAEConfig)}  # annotations are strings ("int", "float")
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or name not in kinds:
            raise XtalforgeError(f"--cdvae_config: '{item}' is not NAME=VALUE with NAME one of {', '.join(kinds)}")
        try:
            out[name] = (int if kinds[name] == "int" else float)(value)
        except ValueError:
            raise XtalforgeError(f"--cdvae_config: '{item}' has no number after '='") from None
    return out


def initialise(model: torch.nn.Module, init_from: str, device: str) -> None:
    """Fine-tuning start: a checkpoint of the same kind of model (all its weights), else a DAO-G checkpoint: its
    backbone (Wyckoff flow, CDVAE) or all of it (DAO-P)."""
    ckpt = torch.load(shipped_or_path(init_from), map_location=device, weights_only=False)
    if ckpt.get("format") == model.checkpoint()["format"]:
        model.load_state_dict(ckpt["state_dict"])
    elif hasattr(model, "load_backbone"):
        model.load_backbone(init_from)
    else:
        model.load_state_dict(DAOG.load(init_from, device).state_dict())


def shipped_or_path(name: str) -> Path:
    """A checkpoint file from a path or a shipped DAO-G / Wyckoff flow name."""
    from xtalforge.checkpoints import WEIGHTS_DIR

    for candidate in (Path(name), WEIGHTS_DIR / f"wyckoff_flow_{name}.pt", WEIGHTS_DIR / f"dao_g_{name}.pt"):
        if candidate.is_file():
            return candidate
    raise XtalforgeError(f"no weights '{name}' (neither a file nor shipped weights)")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_batches(num_atoms: np.ndarray, cfg: TrainConfig, epoch: int, rank: int, world: int) -> list[np.ndarray]:
    """This rank's batches of one epoch (same on every restart; every rank gets the same number)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = size_bucketed_batches(num_atoms, cfg.batch_atoms, rng, cfg.max_crystals)
    batches = batches[: len(batches) - len(batches) % world]
    return batches[rank::world]


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the path of the EMA weights."""
    torch_device(cfg.device)  # a missing GPU is one clear error, before any data is read
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if cfg.device.startswith("cuda") else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if cfg.device.startswith("cuda") else "cpu"
    else:
        rank, world, device = 0, 1, cfg.device
    master = rank == 0
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    ckpt_path, ema_path, log_path = out / "ckpt.pt", out / "ema.pt", out / "log.jsonl"

    data, checked = load_training_data(cfg)
    cells = [data.atoms_of(i).tolist() for i in range(len(data))]
    meta = {"data": cfg.data, "source": data.source, "n_train": len(data), "checked_no_leak": checked,
            "max_atoms": int(data.num_atoms.max()), "z_prior": z_prior(cells)}
    label_column = energy_column(cfg)
    if cfg.model in ("wyckoff-flow", "symmetry-proposer"):
        from xtalforge.data.symmetric import collate_rows, symmetrize

        data = symmetrize(data)  # cached: the first run of a data set spends ~20 ms a crystal here
        meta.update(n_train=len(data), symmetrized=f"{data.source}; left out: {data.skipped}")

        def make_batch(idx):
            return collate_rows(data, idx)
    if cfg.model == "symmetry-proposer":
        from xtalforge.models.symmetry_proposer.model import ProposerBatch, frequency_prior
        from xtalforge.models.symmetry_proposer.tokens import encode

        data = encode(data)  # token sequences; `num_atoms` is their length
        meta.update(n_train=len(data), group_prior=frequency_prior(data))

        def make_batch(idx):
            return ProposerBatch(data, idx)
    if cfg.model not in ("wyckoff-flow", "symmetry-proposer"):
        def make_batch(idx):
            return collate(data, idx, energy_column=label_column)

    model = build_model(cfg, data, meta).to(device)
    state = {"step": 0, "epoch": 0, "pos": 0, "seconds": 0.0}
    resume = ckpt_path.is_file()
    if resume:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
    elif cfg.init_from:
        initialise(model, cfg.init_from, device)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resume:
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    net = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        # DAO-G leaves the type and scalar heads unused, so DDP must look for parameters without gradients
        net = DistributedDataParallel(model, device_ids=[int(os.environ["LOCAL_RANK"])] if device != "cpu" else None,
                                      find_unused_parameters=True)

    if master:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
        if log_path.is_file():  # drop log lines written after the checkpoint we resume from
            lines = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= state["step"]]
            atomic_write_text(log_path, "".join(ln + "\n" for ln in lines))

    def save_checkpoint() -> None:
        if master:
            save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                         "state": state, "train_config": asdict(cfg)}, ckpt_path)
            ema.save(ema_path)

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=state["step"], disable=not master, mininterval=10, desc=cfg.model)
    start = last_ckpt = time.time()
    seconds0 = state["seconds"]
    window = {"crystals": 0, "t0": time.time(), "logs": []}
    batches = epoch_batches(data.num_atoms, cfg, state["epoch"], rank, world)
    while state["step"] < cfg.max_steps:
        if state["pos"] >= len(batches):
            state["epoch"], state["pos"] = state["epoch"] + 1, 0
            batches = epoch_batches(data.num_atoms, cfg, state["epoch"], rank, world)
        idx = batches[state["pos"]]
        batch = make_batch(idx).to(device)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["step"] * world + rank)
        for group in opt.param_groups:
            group["lr"] = lr_at(state["step"], cfg)
        model.train()
        loss, logs = model.loss(batch, gen, forward=net)  # through the DDP wrapper so gradients are all-reduced
        opt.zero_grad(set_to_none=True)
        loss.backward()
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + state["step"]) / (10 + state["step"]))
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        state["step"] += 1
        state["pos"] += 1
        window["crystals"] += len(idx) * world
        window["logs"].append(logs)
        bar.update(1)
        now = time.time()
        state["seconds"] = seconds0 + now - start
        if master and state["step"] % cfg.log_every == 0:
            mean = {k: float(np.mean([lg[k] for lg in window["logs"]])) for k in window["logs"][0]}
            rec = {"step": state["step"], "epoch": state["epoch"], "lr": lr_at(state["step"] - 1, cfg), **mean,
                   "crystals_per_s": window["crystals"] / max(1e-9, now - window["t0"]),
                   "seconds": state["seconds"]}
            with open(log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{mean['loss']:.3f}", cps=f"{rec['crystals_per_s']:.0f}")
            window = {"crystals": 0, "t0": now, "logs": []}
        out_of_time = cfg.max_minutes > 0 and now - start > 60 * cfg.max_minutes
        if ddp:  # every rank must stop at the same step
            flag = torch.tensor([float(out_of_time)])
            torch.distributed.all_reduce(flag)
            out_of_time = bool(flag.item() > 0)
        if now - last_ckpt > 60 * cfg.ckpt_minutes or out_of_time or state["step"] >= cfg.max_steps:
            save_checkpoint()
            last_ckpt = now
        if out_of_time:
            break
    bar.close()
    if ddp:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return ema_path


def export_weights(run_dir: str | os.PathLike, dest: str | os.PathLike, **meta) -> Path:
    """Copy a run's EMA weights to ``dest`` (e.g. ``src/xtalforge/weights/dao_g_<name>.pt``), adding ``meta``
    (name, step_lr, ...) and the training step / CPU seconds reached; returns ``dest``."""
    run_dir = Path(run_dir)
    ckpt = torch.load(run_dir / "ema.pt", map_location="cpu", weights_only=False)
    state = torch.load(run_dir / "ckpt.pt", map_location="cpu", weights_only=False)["state"]
    ckpt["meta"] = {**ckpt.get("meta", {}), **meta, "train_steps": state["step"], "train_epochs": state["epoch"],
                    "train_wall_s": state["seconds"],
                    "train_config": json.loads((run_dir / "config.json").read_text())}
    save_atomic(ckpt, dest)
    return Path(dest)


#: One line of ``--help`` per TrainConfig field (the class docstring has the details).
FIELD_HELP = {
    "data": "benchmark, benchmarks joined by + (val pooled, test rows removed), +aflow, or a CSV",
    "pooled": "a single benchmark's protocol training set with the other val splits pooled",
    "max_atoms": "drop training crystals with more atoms",
    "out_dir": "checkpoints, EMA weights and log.jsonl; rerun to resume",
    "init_from": "weights to fine-tune from (ignored when resuming)",
    "hidden": "backbone width", "layers": "backbone layers", "heads": "attention heads",
    "n_freq": "Fourier frequencies of the fractional-coordinate features",
    "lr": "peak AdamW learning rate", "weight_decay": "AdamW weight decay", "warmup_steps": "linear warm-up steps",
    "max_steps": "optimiser steps (cosine decay ends here)", "min_lr_ratio": "final learning rate / lr",
    "max_minutes": "stop with a checkpoint after this wall time (0: no limit)",
    "batch_atoms": "most padded atoms per batch", "max_crystals": "most crystals per batch",
    "ema_decay": "decay of the EMA weights that are saved", "grad_clip": "gradient-norm clip",
    "seed": "random seed", "ckpt_minutes": "minutes between checkpoints", "log_every": "steps between log lines",
    "threads": "torch CPU threads per process", "device": "cpu or cuda",
    "model": "dao-g (diffusion), dao-g-flow (flow matching), dao-p (+ energy head), wyckoff-flow (symmetry), "
             "symmetry-proposer or cdvae (VAE + score decoder)",
    "energy_column": "DAO-P / CDVAE property label column (default: the benchmark's)",
    "cdvae_config": "CDVAE settings to change, e.g. cost_composition=10,beta_kl=0.005",
}


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """TrainConfig from defaults, ``--config file.json`` and ``--field value`` overrides."""
    parser = argparse.ArgumentParser(prog="xtalforge train dao-g", usage="%(prog)s [--config FILE] [--FIELD VALUE ...]",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="JSON file with TrainConfig fields")
    for f in fields(TrainConfig):
        kind = {"bool": lambda s: s.lower() in ("1", "true", "yes"), "int": int, "float": float}.get(str(f.type), str)
        parser.add_argument(f"--{f.name}", type=kind, default=None, metavar=f.name.split("_")[0].upper(),
                            help=f"{FIELD_HELP.get(f.name, '')} (default {f.default!r})")
    args = parser.parse_args(argv)
    values: dict = {}
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise XtalforgeError(f"unknown training setting(s) in {args.config}: {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    return TrainConfig(**values)


def train_main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``xtalforge train dao-g ...`` forwards its arguments here)."""
    path = train(parse_config(argv))
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"EMA weights: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(train_main())
