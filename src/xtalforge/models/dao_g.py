"""DAO-G: joint diffusion of the lattice (DDPM) and fractional coordinates (wrapped normal) on Crysformer.

:class:`DAOG` owns the noise processes and the training loss (reference §2); the Crysformer inside knows nothing
about them. :class:`DAOGMethod` (registered as ``"dao-g"``) turns target compositions into sampled candidates.

Sign convention: the coordinate output is the *true* score ``d log p(F_t | F_0) / dF`` divided by
``sqrt(sigma_norm_t)``; DiffCSP's code (and the guidance formula of reference §2) uses its negative.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xtalforge.backbone.crysformer import Crysformer, CrysformerConfig
from xtalforge.crystal import Crystal
from xtalforge.data.batch import CrystalBatch, collate_numbers
from xtalforge.device import torch_device
from xtalforge.diffusion.schedules import DiffusionSchedule
from xtalforge.diffusion.wrapped_normal import sample_wrapped_normal, wrapped_normal_score
from xtalforge.errors import AtomLimitError, StructureError, XtalforgeError
from xtalforge.methods import CSPMethod, register

log = logging.getLogger(__name__)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: Default weights for cells of <= 20 atoms: flow matching, better than the diffusion weights ``mp20`` on MP-20
#: (200 test entries: k=1 / k=20 25.0 / 76.5 vs 21.0 / 62.0, CHGNet-ranked k=1 40.5 vs 33.0; see its card).
DEFAULT_WEIGHTS = "mp20_flow"
#: The diffusion weights of the same cells; energy guidance needs a diffusion model, so guided sampling uses these.
DIFFUSION_WEIGHTS = "mp20"
#: Sampler settings of weights that store none in ``meta["sampler_options"]``.
SAMPLER_DEFAULTS = {"steps": 50, "coord_scale": 1.0, "eta": 1.0, "anti_anneal": 0.0}
#: Shipped weights for cells larger than DEFAULT_WEIGHTS allows (the default ``dao-g`` routes such cells to them).
LARGE_CELL_WEIGHTS = "mpts52"


@lru_cache(maxsize=4)
def _schedule(timesteps: int, sigma_begin: float, sigma_end: float) -> DiffusionSchedule:
    return DiffusionSchedule.create(timesteps, sigma_begin=sigma_begin, sigma_end=sigma_end)


class DAOG(nn.Module):
    """Crysformer plus the two noise processes.

    Args:
        cfg: backbone configuration.
        timesteps: T of both processes.
        sigma_begin, sigma_end: wrapped-normal sigma at t = 1 and t = T (fractional units).
        meta: free-form facts saved with the weights (training data, Z prior, max atoms, ...).
    """

    objective = "diffusion"  # DAOGFlow (models/dao_g_flow.py): "flow"
    default_sampler = "pc"

    def __init__(self, cfg: CrysformerConfig | None = None, timesteps: int = 1000, sigma_begin: float = 0.005,
                 sigma_end: float = 0.5, meta: dict | None = None) -> None:
        super().__init__()
        self.net = Crysformer(cfg)
        self.diffusion_args = {"timesteps": timesteps, "sigma_begin": sigma_begin, "sigma_end": sigma_end}
        self.schedule = _schedule(timesteps, sigma_begin, sigma_end)
        self.meta = dict(meta or {})

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def forward(self, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted lattice noise eps_L (B, 3, 3) and normalised coordinate score (B, N, 3) at integer times t (B,)."""
        out = self.net(lattice, frac, types, mask, t.to(lattice.dtype) / self.timesteps)
        return out["lattice"], out["coord"]

    def score(self, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
              t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """eps_L (B, 3, 3) and the unnormalised coordinate score d log p / dF (B, N, 3) used by samplers."""
        eps, coord = self(lattice, frac, types, mask, t)
        norm = self.schedule.sigma_norms.to(lattice.device)[t].to(lattice.dtype)
        return eps, coord * norm.sqrt()[:, None, None]

    def noise(self, batch: CrystalBatch, t: torch.Tensor, generator: torch.Generator | None = None,
              eps: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """Noised lattice and coordinates at integer times ``t`` (B,), with the regression targets.

        ``eps``: the standard-normal draws (lattice (B, 3, 3), coordinates (B, N, 3)) to use instead of fresh ones,
        e.g. the same draws for every candidate of one composition when comparing their losses.
        """
        sched = self.schedule
        dtype, dev = batch.lattice.dtype, batch.lattice.device
        abar = sched.alpha_bars.to(dev)[t].to(dtype)[:, None, None]
        sigma = sched.sigmas.to(dev)[t].to(dtype)[:, None, None]
        if eps is None:
            eps_l = torch.randn(batch.lattice.shape, generator=generator, dtype=dtype, device=dev)
            frac_t, eps_f = sample_wrapped_normal(batch.frac, sigma, generator)
        else:
            eps_l, eps_f = eps
            frac_t = torch.remainder(batch.frac + sigma * eps_f, 1.0)
        lattice_t = abar.sqrt() * batch.lattice + (1 - abar).sqrt() * eps_l
        norm = sched.sigma_norms.to(dev)[t].to(dtype)[:, None, None]
        target_f = wrapped_normal_score(sigma * eps_f, sigma) / norm.sqrt()
        return {"lattice": lattice_t, "frac": frac_t, "eps_lattice": eps_l, "target_coord": target_f}

    def squared_errors(self, batch: CrystalBatch, t: torch.Tensor, generator: torch.Generator | None = None,
                       eps: tuple[torch.Tensor, torch.Tensor] | None = None,
                       forward: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two training errors per crystal at integer times ``t`` (B,): the lattice noise MSE (B,) and the
        squared error of the normalised coordinate score summed over the crystal's real atoms (B,); divide the
        second by 3 x atoms for a mean. ``eps`` as in :meth:`noise`; ``forward`` as in :meth:`loss`."""
        forward = forward or self
        noised = self.noise(batch, t, generator, eps)
        eps_hat, coord_hat = forward(noised["lattice"], noised["frac"], batch.types, batch.mask, t)
        lattice_mse = ((eps_hat - noised["eps_lattice"]) ** 2).mean(dim=(1, 2))
        mask = batch.mask.to(coord_hat.dtype)[..., None]
        coord_sse = (((coord_hat - noised["target_coord"]) ** 2) * mask).sum(dim=(1, 2))
        return lattice_mse, coord_sse

    def loss(self, batch: CrystalBatch, generator: torch.Generator | None = None, t: torch.Tensor | None = None,
             forward: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE(eps_L) + MSE(normalised score_F) at t ~ U{1..T} per crystal (reference §2, equal weights).

        The coordinate MSE averages over real atoms only (padding excluded). ``forward`` is the module to call for
        the prediction (a DDP wrapper of this model during distributed training; default ``self``).
        """
        b = batch.lattice.shape[0]
        if t is None:
            t = torch.randint(1, self.timesteps + 1, (b,), generator=generator).to(batch.lattice.device)
        lattice_mse, coord_sse = self.squared_errors(batch, t, generator, forward=forward)
        loss_l = lattice_mse.mean()
        loss_f = coord_sse.sum() / (3.0 * batch.mask.sum())
        loss = loss_l + loss_f
        logs = {"loss": float(loss.detach()), "loss_lattice": float(loss_l.detach()),
                "loss_coord": float(loss_f.detach())}
        return loss, logs

    # ------------------------------------------------------------------ persistence
    def checkpoint(self) -> dict:
        """Everything needed to rebuild the model (config inside)."""
        return {"format": "xtalforge-dao-g-1", "config": self.net.cfg.to_dict(), "diffusion": self.diffusion_args,
                "meta": self.meta, "state_dict": self.state_dict()}

    def save(self, path: str | os.PathLike) -> None:
        """Write weights + config atomically (temp file + rename)."""
        save_atomic(self.checkpoint(), path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> DAOG:
        if ckpt.get("objective", "diffusion") == "flow" and cls is DAOG:
            from xtalforge.models.dao_g_flow import DAOGFlow

            cls = DAOGFlow
        model = cls(CrysformerConfig(**ckpt["config"]), meta=ckpt.get("meta"), **ckpt["diffusion"])
        model.load_state_dict(ckpt["state_dict"])
        return model

    @classmethod
    def load(cls, path_or_name: str | os.PathLike = DEFAULT_WEIGHTS, device: str | torch.device = "cpu") -> DAOG:
        """Load a saved model: a file path, or the name of shipped weights (``weights/dao_g_<name>.pt``)."""
        path = resolve_weights(path_or_name)
        device = torch_device(device)
        ckpt = torch.load(path, map_location=device, weights_only=False)
        if "state_dict" not in ckpt:
            raise XtalforgeError(f"{path} is not a DAO-G checkpoint")
        return cls.from_checkpoint(ckpt).to(device).eval()


def resolve_weights(path_or_name: str | os.PathLike) -> Path:
    """A weights file from a path or a shipped name (``mp20`` -> ``weights/dao_g_mp20.pt``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = WEIGHTS_DIR / f"dao_g_{path_or_name}.pt"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem.removeprefix("dao_g_") for p in WEIGHTS_DIR.glob("dao_g_*.pt"))
    raise XtalforgeError(f"no DAO-G weights '{path_or_name}' (shipped: {', '.join(names) or 'none'})")


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """torch.save through a temp file in the same folder + rename, so a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def reduced_key(numbers: Sequence[int]) -> tuple[str, int]:
    """(reduced anonymised formula like ``'1-1-3'``, Z) of a cell's atomic numbers."""
    counts = sorted(Counter(int(n) for n in numbers).values())
    z = int(np.gcd.reduce(counts))
    return "-".join(str(c // z) for c in counts), z


def z_prior(cells: Sequence[Sequence[int]]) -> dict[str, dict[str, int]]:
    """How often each Z occurs per reduced anonymised formula in a training set (saved in the weights' meta)."""
    table: dict[str, Counter] = {}
    for numbers in cells:
        key, z = reduced_key(numbers)
        table.setdefault(key, Counter())[str(z)] += 1
    return {k: dict(v) for k, v in table.items()}


# ---------------------------------------------------------------------- the CSP method
class DAOGMethod(CSPMethod):
    """CSP by sampling DAO-G: ``n`` independent samples per target cell, batched across targets.

    Score (higher = better): the negative mean square of the model's own denoising prediction on the final sample
    at a small noise level (t = ``score_t``), ``-(|eps_L|^2 / 9 + mean_atoms |score_F|^2 / 3)``. It measures how
    far the model would still move the structure; a heuristic for ranking, not an energy.

    For a reduced formula (unknown Z) :meth:`predict_target` spreads the ``n`` samples over Z values in proportion
    to how often each Z occurs for that reduced anonymised formula (e.g. ``1-1-3``) in the model's training data
    (the ``z_prior`` saved with the weights); an unseen formula gets the smallest Z with at least ``min_atoms``
    atoms.

    Default sampler: strided predictor-corrector with 50 steps (100 network calls, 20x fewer than the faithful
    1000-step sampler). Measured on Perov-5 (100 test entries, k = 1): 50% match at 0.14 s/entry against 46% at
    3.2 s/entry for 1000 steps (bench/dao_g.py). Weights trained by flow matching
    (:class:`~xtalforge.models.dao_g_flow.DAOGFlow`) take the ``flow`` sampler (Euler, 1 call per step) instead.
    ``coord_scale`` multiplies the coordinate score / velocity (> 1: lower-temperature sampling); ``eta`` is the
    lattice noise of ``pc``; ``anti_anneal`` the late-step speed-up of ``flow`` (see the samplers).
    """

    name = "dao-g"

    def __init__(self, model: DAOG, steps: int | None = None, sampler: str | None = None, step_lr: float | None = None,
                 batch_size: int = 256, device: str = "cpu", score_t: int = 5, min_atoms: int = 4,
                 guidance: float = 0.0, energy_weights: str = "energy_mp20", coord_scale: float | None = None,
                 eta: float | None = None, anti_anneal: float | None = None) -> None:
        from xtalforge.diffusion.samplers import SAMPLERS

        # unset sampler settings come from the weights (meta["sampler_options"], chosen when they were shipped)
        own = dict(SAMPLER_DEFAULTS)
        if sampler in (None, model.default_sampler):
            own.update(model.meta.get("sampler_options", {}))
        sampler = sampler or model.default_sampler
        steps = int(own["steps"]) if steps is None else steps
        coord_scale = float(own["coord_scale"]) if coord_scale is None else coord_scale
        eta = float(own["eta"]) if eta is None else eta
        anti_anneal = float(own["anti_anneal"]) if anti_anneal is None else anti_anneal
        if sampler not in SAMPLERS:
            raise XtalforgeError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
        if (sampler == "flow") != (model.objective == "flow"):
            raise XtalforgeError(f"sampler '{sampler}' does not fit DAO-G weights trained with the {model.objective} "
                                 f"objective (use '{model.default_sampler}')")
        if not np.isfinite(guidance) or guidance < 0:
            raise XtalforgeError(f"guidance strength must be a finite number >= 0, got {guidance}")
        if int(steps) != steps or not 1 <= steps <= model.timesteps:
            raise XtalforgeError(f"sampler steps must be an integer from 1 to {model.timesteps} (the training "
                                 f"schedule), got {steps}")
        self.model = model.to(device).eval()
        # energy guidance (reference §2): s * grad E_t of a DAO-P model added to every reverse step; 0 = off
        self.guidance, self.energy_weights = float(guidance), energy_weights
        self._guidance_hook = None
        if self.guidance > 0:
            from xtalforge.diffusion.guidance import EnergyGuidance
            from xtalforge.models.dao_p import DAOP

            self._guidance_hook = EnergyGuidance(DAOP.load(energy_weights, device).eval(), self.guidance)
        self.sample_fn = SAMPLERS[sampler]
        self.sampler, self.steps, self.batch_size, self.device = sampler, int(steps), int(batch_size), device
        self.step_lr = float(step_lr if step_lr is not None else model.meta.get("step_lr", 1e-5))
        if not (np.isfinite(coord_scale) and coord_scale > 0) or not (np.isfinite(eta) and 0 <= eta <= 1):
            raise XtalforgeError(f"coord_scale must be > 0 and eta in [0, 1], got {coord_scale} and {eta}")
        if sampler != "pc" and eta != 1.0:
            raise XtalforgeError("eta (lattice noise) applies to the 'pc' sampler only")
        if sampler == "flow" and guidance > 0:
            raise XtalforgeError("energy guidance works with the diffusion samplers only, not 'flow'")
        if sampler != "flow" and anti_anneal != 0.0:
            raise XtalforgeError("anti_anneal applies to the 'flow' sampler only")
        self.coord_scale, self.eta, self.anti_anneal = float(coord_scale), float(eta), float(anti_anneal)
        self.score_t, self.min_atoms = score_t, min_atoms
        self.max_atoms = int(model.meta.get("max_atoms", 52))

    def settings(self) -> dict:
        options = {"coord_scale": self.coord_scale, "eta": self.eta, "anti_anneal": self.anti_anneal}
        return {"method": self.name, "sampler": self.sampler, "steps": self.steps, "step_lr": self.step_lr,
                # only non-default sampler options, so older run folders keep their settings
                **{k: v for k, v in options.items() if v != SAMPLER_DEFAULTS[k]},
                "weights": self.model.meta.get("name", ""), "train_data": self.model.meta.get("data", ""),
                "train_steps": self.model.meta.get("train_steps"),  # tells apart versions of the same weights name
                "guidance": self.guidance, "energy_weights": self.energy_weights if self.guidance else None}

    def _check(self, targets: Sequence[Sequence[int]]) -> None:
        for cell in targets:
            if len(cell) > self.max_atoms:
                raise AtomLimitError(f"a target has {len(cell)} atoms; these DAO-G weights allow {self.max_atoms}")
            if len(cell) == 0:
                raise XtalforgeError("empty target composition")

    @torch.no_grad()
    def sample_cells(self, cells: Sequence[Sequence[int]], seed: int = 0, init: Sequence[Crystal] | None = None,
                     start_t: int | None = None) -> list[Crystal | None]:
        """One sample per cell (batched by size); with ``init`` + ``start_t`` each init crystal is refined.

        A sample whose lattice degenerates (volume below :data:`~xtalforge.crystal.MIN_VOLUME_PER_ATOM` per atom,
        NaN) is None, so callers return fewer candidates instead of failing.
        """
        from xtalforge.data.batch import size_bucketed_batches

        self._check(cells)
        weights_name = self.model.meta.get("name", "")
        gen = torch.Generator().manual_seed(int(seed))
        sizes = np.array([len(c) for c in cells])
        out: list[Crystal | None] = [None] * len(cells)
        for idx in size_bucketed_batches(sizes, self.batch_size * int(sizes.max()), None, self.batch_size):
            batch = collate_numbers([list(cells[i]) for i in idx])
            if init is not None:
                n_max = batch.frac.shape[1]
                batch.lattice = torch.as_tensor(np.stack([init[i].lattice for i in idx]), dtype=torch.float32)
                frac = np.zeros((len(idx), n_max, 3))
                for row, i in enumerate(idx):  # set-up loop over crystals, not in the model
                    frac[row, : init[i].num_atoms] = init[i].frac_coords
                batch.frac = torch.as_tensor(frac, dtype=torch.float32)
            batch = batch.to(self.device)
            extra = {"pc": {"eta": self.eta}, "flow": {"anti_anneal": self.anti_anneal}}.get(self.sampler, {})
            result = self.sample_fn(self.model, batch, self.steps, step_lr=self.step_lr, generator=gen,
                                    start_t=start_t, guidance=self._guidance_hook, coord_scale=self.coord_scale,
                                    **extra)
            scores = self._scores(result)
            lattices = result.lattice.double().cpu().numpy()
            fracs = result.frac.double().cpu().numpy()
            for row, i in enumerate(idx):
                n_atoms = len(cells[i])
                try:
                    out[i] = Crystal(lattices[row], fracs[row, :n_atoms], cells[i],
                                     {"score": float(scores[row]), "method": self.name, "weights": weights_name})
                except StructureError:  # a collapsed or non-finite lattice: drop the sample, never crash
                    log.warning("dao-g: dropped a degenerate sample of a %d-atom cell", n_atoms)
        return out

    def _scores(self, batch: CrystalBatch) -> np.ndarray:
        t = torch.full((batch.lattice.shape[0],), self.score_t, dtype=torch.long, device=batch.lattice.device)
        eps, coord = self.model(batch.lattice, batch.frac, batch.types, batch.mask, t)
        mask = batch.mask.to(coord.dtype)[..., None]
        coord_ms = ((coord**2) * mask).sum(dim=(1, 2)) / (3 * mask.sum(dim=(1, 2)))
        return (-(eps**2).mean(dim=(1, 2)) - coord_ms).cpu().numpy()

    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        cells = [list(t) for t in targets for _ in range(n)]
        samples = self.sample_cells(cells, seed)
        per_target = [[c for c in samples[i * n : (i + 1) * n] if c is not None] for i in range(len(targets))]
        return [sorted(c, key=lambda x: -x.properties["score"]) for c in per_target]

    def z_weights(self, target) -> list[tuple[list[int], float]]:
        """(cell, prior weight) for each allowed Z of a reduced target (see the class docstring)."""
        cells = target.cells(self.max_atoms)
        key, _ = reduced_key(cells[0])
        counts = self.model.meta.get("z_prior", {}).get(key, {})
        weights = [float(counts.get(str(z + 1), 0)) for z in range(len(cells))]
        if sum(weights) == 0:
            z = next((i for i, c in enumerate(cells) if len(c) >= self.min_atoms), len(cells) - 1)
            weights[z] = 1.0
        total = sum(weights)
        return [(c, w / total) for c, w in zip(cells, weights) if w > 0]

    def cells_for(self, target, n: int) -> list[list[int]]:
        """The ``n`` cells to sample for a target: the exact cell n times, or cells of each Z in proportion to the
        Z prior (rounded down; the most likely Z takes the remainder)."""
        if target.exact:
            return target.cells(self.max_atoms) * n
        options = self.z_weights(target)
        alloc = np.floor(np.array([w for _, w in options]) * n).astype(int)
        alloc[int(np.argmax([w for _, w in options]))] += n - alloc.sum()
        return [c for (c, _), k in zip(options, alloc) for _ in range(k)]

    def predict_target(self, target, n: int, seed: int = 0) -> list[Crystal]:
        """Candidates for a composition (see :meth:`cells_for`), best first."""
        merged = [c for c in self.sample_cells(self.cells_for(target, n), seed) if c is not None]
        return sorted(merged, key=lambda x: -x.properties["score"])


@register("dao-g")
def _make_dao_g(weights: str | None = None, steps: int | None = None, device: str = "cpu", sampler: str | None = None,
                batch_size: int = 256, step_lr: float | None = None, guidance: float = 0.0,
                energy_weights: str = "energy_mp20") -> CSPMethod:
    """``get_method("dao-g", weights=None | name | path, steps=None, sampler=None | "pc" | "ode" | "flow",
    device="cpu", guidance=0.0, energy_weights="energy_mp20", ...)``; ``sampler`` defaults to the weights' own
    (``pc``, or ``flow`` for flow-matching weights) and ``steps`` to theirs (``meta["sampler_options"]``, else 50).

    Without ``weights``: the shipped MP-20 weights for cells of <= 20 atoms (:data:`DEFAULT_WEIGHTS`; with
    ``guidance`` > 0 the diffusion ones, :data:`DIFFUSION_WEIGHTS`) and the MPTS-52 weights for larger cells
    (:data:`LARGE_CELL_WEIGHTS`, routed by :class:`~xtalforge.pipeline.BySize`).
    """
    def make(name: str) -> DAOGMethod:
        return DAOGMethod(DAOG.load(name, device), steps=steps, sampler=sampler, step_lr=step_lr,
                          batch_size=batch_size, device=device, guidance=guidance, energy_weights=energy_weights)

    if weights is not None:
        return make(weights)
    from xtalforge.pipeline import BySize

    return BySize([make(default_weights(guidance)), make(LARGE_CELL_WEIGHTS)])


def default_weights(guidance: float = 0.0) -> str:
    """The shipped weights for cells of <= 20 atoms: :data:`DEFAULT_WEIGHTS`, or the diffusion weights when energy
    guidance is asked for (a flow-matching model has no score to guide)."""
    return DIFFUSION_WEIGHTS if guidance > 0 else DEFAULT_WEIGHTS


# ---------------------------------------------------------------------- templates refined by DAO-G
class TemplateRefine(CSPMethod):
    """Template candidates refined by DAO-G: each candidate is noised to ``start_t`` and denoised (SDEdit-style).

    The template supplies the prototype (which the generative model alone rarely finds on this data budget); the
    diffusion model adapts the lattice and positions to the substituted chemistry. ``mode="refined"`` returns the
    refined candidates in template order; ``mode="both"`` interleaves template and refined candidates
    (t1, r1, t2, r2, ...), so k candidates hold k/2 templates. Candidates with more atoms than the DAO-G weights
    allow are returned unrefined. The score is the template's. ``refiner``: a :class:`DAOGMethod`, or a
    :class:`~xtalforge.pipeline.BySize` of them (the default ``dao-g``): anything with
    ``sample_cells(cells, seed, init=..., start_t=...)``.
    """

    name = "template+dao-g"

    def __init__(self, templates: CSPMethod, refiner: CSPMethod, start_t: int = 100, mode: str = "refined") -> None:
        if mode not in ("refined", "both"):
            raise XtalforgeError(f"unknown refinement mode '{mode}' (choose 'refined' or 'both')")
        self.templates, self.refiner, self.start_t, self.mode = templates, refiner, int(start_t), mode
        self.max_atoms = templates.max_atoms

    def settings(self) -> dict:
        return {"method": self.name, "templates": self.templates.settings(), "refiner": self.refiner.settings(),
                "start_t": self.start_t, "mode": self.mode}

    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        n_base = n if self.mode == "refined" else (n + 1) // 2
        base = self.templates.generate(targets, n_base, seed)
        flat = [c for cands in base for c in cands if c.num_atoms <= self.refiner.max_atoms]
        refined = self.refiner.sample_cells([c.numbers.tolist() for c in flat], seed, init=flat,
                                            start_t=self.start_t) if flat else []
        by_id = {id(c): r for c, r in zip(flat, refined)}
        out = []
        for cands in base:
            row = []
            for c in cands:
                r = by_id.get(id(c)) or c  # unrefined when too large or when the refined lattice degenerated
                if r is not c:
                    r.properties = {**c.properties, "refined_from": c.properties.get("template_id", ""),
                                    "refine_score": r.properties["score"], "method": self.name}
                row.extend([c, r] if self.mode == "both" and r is not c else [r])
            out.append(row[:n])
        return out


@register("template+dao-g")
def _make_template_refine(weights: str | None = None, start_t: int = 100, steps: int = 20, mode: str = "refined",
                          library=None, device: str = "cpu", sampler: str | None = None,
                          step_lr: float | None = None,
                          batch_size: int = 256) -> TemplateRefine:
    """``get_method("template+dao-g", weights=..., start_t=100, steps=20, mode="refined"|"both", library=...)``."""
    from xtalforge.methods import get_method

    refiner = _make_dao_g(weights, steps=steps, device=device, sampler=sampler, batch_size=batch_size,
                          step_lr=step_lr)
    return TemplateRefine(get_method("template", library=library), refiner, start_t=start_t, mode=mode)
