"""The DAO-G network with its noise processes: joint diffusion of the lattice (DDPM) and fractional coordinates
(wrapped normal) on Crysformer.

:class:`DAOG` owns the noise processes and the training loss (reference §2); the Crysformer inside knows nothing
about them. Samplers live in :mod:`xtalforge.diffusion.samplers`; :mod:`.method` turns compositions into candidates.

Sign convention: the coordinate output is the *true* score ``d log p(F_t | F_0) / dF`` divided by
``sqrt(sigma_norm_t)``; DiffCSP's code (and the guidance formula of reference §2) uses its negative.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xtalforge.backbone.crysformer import Crysformer, CrysformerConfig
from xtalforge.checkpoints import save_atomic, shipped_weights
from xtalforge.data.batch import CrystalBatch
from xtalforge.device import torch_device
from xtalforge.diffusion.schedules import DiffusionSchedule
from xtalforge.diffusion.wrapped_normal import sample_wrapped_normal, wrapped_normal_score
from xtalforge.errors import XtalforgeError

#: Default weights for cells of <= 20 atoms (flow matching; their card, ``weights/dao_g_mp20_flow.md``, has the scores).
DEFAULT_WEIGHTS = "mp20_flow"


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

    objective = "diffusion"  # DAOGFlow (flow.py): "flow"
    default_sampler = "pc"
    #: the class of each training objective, so a checkpoint loads as the model it was saved from
    _by_objective: dict[str, type[DAOG]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        DAOG._by_objective.setdefault(cls.objective, cls)

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
        if cls is DAOG:  # a flow checkpoint loads as DAOGFlow (registered when the package is imported)
            cls = DAOG._by_objective.get(ckpt.get("objective", "diffusion"), DAOG)
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



DAOG._by_objective[DAOG.objective] = DAOG  # subclasses with an objective of their own add themselves


def resolve_weights(path_or_name: str | os.PathLike) -> Path:
    """A weights file from a path or a shipped name (``mp20`` -> ``weights/dao_g_mp20.pt``)."""
    return shipped_weights("dao_g_", path_or_name, "DAO-G")


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
