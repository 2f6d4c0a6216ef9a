"""DAO-G as a CSP method: target compositions to sampled candidate crystals (registered as ``"dao-g"``), and
template candidates refined by DAO-G (``"template+dao-g"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from xtalforge.crystal import Crystal
from xtalforge.data.batch import CrystalBatch, collate_numbers
from xtalforge.errors import AtomLimitError, StructureError, XtalforgeError
from xtalforge.methods import BySize, CSPMethod, register
from xtalforge.models.dao_g.model import DAOG, DEFAULT_WEIGHTS, reduced_key

log = logging.getLogger(__name__)
#: The diffusion weights of the same cells; energy guidance needs a diffusion model, so guided sampling uses these.
DIFFUSION_WEIGHTS = "mp20"
#: Sampler settings of weights that store none in ``meta["sampler_options"]``.
SAMPLER_DEFAULTS = {"steps": 50, "coord_scale": 1.0, "eta": 1.0, "anti_anneal": 0.0}
#: Shipped weights for cells larger than DEFAULT_WEIGHTS allows (the default ``dao-g`` routes such cells to them).
LARGE_CELL_WEIGHTS = "mpts52"


class DAOGMethod(CSPMethod):
    """CSP by sampling DAO-G: ``n`` independent samples per target cell, batched across targets.

    Score (higher = better): the negative mean square of the model's own denoising prediction on the final sample
    at a small noise level (t = ``score_t``), ``-(|eps_L|^2 / 9 + mean_atoms |score_F|^2 / 3)``. It measures how
    far the model would still move the structure; a heuristic for ranking, not an energy.

    For a reduced formula (unknown Z) :meth:`predict_target` spreads the ``n`` samples over Z values in proportion
    to how often each Z occurs for that reduced anonymised formula (e.g. ``1-1-3``) in the model's training data
    (the ``z_prior`` saved with the weights); an unseen formula gets the smallest Z with at least ``min_atoms``
    atoms.

    Default sampler: the weights' own (``meta["sampler_options"]``): strided predictor-corrector with 50 steps for
    diffusion weights, Euler with 50 steps for flow-matching weights (:class:`~xtalforge.models.dao_g.flow.DAOGFlow`).
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
                energy_weights: str = "energy_mp20", large_cells: bool = True) -> CSPMethod:
    """``get_method("dao-g", weights=None | name | path, steps=None, sampler=None | "pc" | "ode" | "flow",
    device="cpu", guidance=0.0, energy_weights="energy_mp20", large_cells=True, ...)``; ``sampler`` defaults to the
    weights' own (``pc``, or ``flow`` for flow-matching weights) and ``steps`` to theirs (else 50).

    Without ``weights``: the shipped weights for cells of <= 20 atoms (:func:`default_weights`) and, with
    ``large_cells``, the MPTS-52 weights for larger cells (:data:`LARGE_CELL_WEIGHTS`, routed by
    :class:`~xtalforge.methods.BySize`).
    """
    def make(name: str) -> DAOGMethod:
        return DAOGMethod(DAOG.load(name, device), steps=steps, sampler=sampler, step_lr=step_lr,
                          batch_size=batch_size, device=device, guidance=guidance, energy_weights=energy_weights)

    if weights is not None:
        return make(weights)
    if not large_cells:
        return make(default_weights(guidance))
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
    :class:`~xtalforge.methods.BySize` of them (the default ``dao-g``): anything with
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

