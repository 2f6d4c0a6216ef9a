"""Wyckoff flow: flow matching restricted to a space group's free parameters (DiffCSP++ on Crysformer, with the
property fusion of seed 003's Crystal DiT).

What is generated: the free coordinates ``u`` of each occupied Wyckoff orbit (0-3 numbers) and the free lattice
coefficients ``k`` of the crystal system (:mod:`xtalforge.symmetry.lattice`). Every state along the path is a crystal
with the requested group and composition, so every sample is too.

* Paths: ``u_s = u_0 + s w(u_1 - u_0) mod 1`` from ``u_0 ~ U[0, 1)`` (``w`` wraps into [-1/2, 1/2)); normalised
  lattice coefficients ``k~_s = (1 - s) k~_0 + s k~_1`` from ``k~_0 ~ N(0, LATTICE_PRIOR_STD^2)`` on the free entries
  (``k~ = k`` except ``k~_6 = k_6 - log l``, ``l`` the edge of a cube of ``volume_per_atom`` per conventional atom).
* Network: the Crysformer backbone sees the primitive cell built from ``(u_s, k~_s)``, plus an embedding of each
  atom's space group, Wyckoff position and site map, plus context attention to property tokens. Its per-atom
  coordinate output is projected onto each orbit's ``u`` (least squares over the orbit's atoms, DiffCSP++'s
  projection); a head on the pooled features gives the ``k~`` velocity, masked to the free entries.
* Properties (``data.symmetric.PROPERTIES``): each known target is one token; during training each is dropped with
  probability ``property_dropout`` (classifier-free guidance), so one model samples with or without them.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from xtalforge.backbone.crysformer import Crysformer, CrysformerConfig, sinusoidal_embedding
from xtalforge.checkpoints import save_atomic, shipped_weights
from xtalforge.data.symmetric import PROPERTIES, SymmetricBatch
from xtalforge.device import torch_device
from xtalforge.errors import XtalforgeError
from xtalforge.models.dao_g.flow import COORD_UNIT, wrap
from xtalforge.symmetry.lattice import BASIS

LATTICE_PRIOR_STD = 0.5
DEFAULT_WEIGHTS = "mp"


class PropertyTokens(nn.Module):
    """Target properties (B, P), NaN = not given, -> (tokens (B, 1 + P, H), mask): a learned "no target" token that
    is always visible, then one token per property (its normalised value's sinusoids through an MLP, plus a
    per-property vector)."""

    def __init__(self, hidden: int, n_properties: int, dim: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.null = nn.Parameter(torch.zeros(1, 1, hidden))
        self.kind = nn.Parameter(torch.randn(n_properties, hidden) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """values (B, P) normalised (anything where ``keep`` is False); keep (B, P) bool."""
        b, p = values.shape
        clean = torch.where(keep, values, torch.zeros_like(values)).clamp(-5, 5)
        emb = sinusoidal_embedding((clean.reshape(-1) + 5.0) / 10.0, self.dim).view(b, p, self.dim)
        tokens = torch.cat([self.null.expand(b, 1, -1), self.mlp(emb) + self.kind], dim=1)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=keep.device), keep], dim=1)
        return tokens, mask


class WyckoffFlow(nn.Module):
    """The symmetry-constrained generator.

    Args:
        cfg: backbone configuration (``cross_attention`` is switched on).
        property_mean, property_std: (P,) normalisation of the target properties (training-data statistics).
        property_dropout: probability of hiding each known property from the network in training.
        meta: free-form facts saved with the weights.
    """

    def __init__(self, cfg: CrysformerConfig | None = None, property_mean=None, property_std=None,
                 property_dropout: float = 0.3, meta: dict | None = None) -> None:
        super().__init__()
        cfg = CrysformerConfig(**{**(cfg or CrysformerConfig()).to_dict(), "cross_attention": True})
        self.net = Crysformer(cfg)
        hid, n_prop = cfg.hidden, len(PROPERTIES)
        self.embed_group = nn.Embedding(231, hid)
        self.embed_letter = nn.Embedding(32, hid)
        self.embed_site = nn.Linear(9, hid)
        for emb in (self.embed_group, self.embed_letter):
            nn.init.normal_(emb.weight, std=0.02)
        self.lattice_out = nn.Linear(hid, 6)
        self.properties = PropertyTokens(hid, n_prop)
        mean = torch.zeros(n_prop) if property_mean is None else torch.as_tensor(property_mean, dtype=torch.float32)
        std = torch.ones(n_prop) if property_std is None else torch.as_tensor(property_std, dtype=torch.float32)
        self.register_buffer("property_mean", mean)
        self.register_buffer("property_std", std)
        self.register_buffer("basis", torch.as_tensor(BASIS, dtype=torch.float32))
        self.property_dropout = property_dropout
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ states of the path
    def log_length(self, batch: SymmetricBatch) -> torch.Tensor:
        """(B,) log of the typical conventional-cell edge ``(volume_per_atom * conventional atoms)^(1/3)``."""
        n = batch.n_conventional.to(batch.k.dtype).clamp(min=1)
        return torch.log(self.net.cfg.volume_per_atom * n) / 3.0

    def normalise_k(self, batch: SymmetricBatch, k: torch.Tensor) -> torch.Tensor:
        out = k.clone()
        out[:, 5] = out[:, 5] - self.log_length(batch)
        return torch.where(batch.k_free, out, torch.zeros_like(out))

    def denormalise_k(self, batch: SymmetricBatch, k_norm: torch.Tensor) -> torch.Tensor:
        out = k_norm.clone()
        out[:, 5] = out[:, 5] + self.log_length(batch)
        return torch.where(batch.k_free, out, batch.k_fixed)

    def cell(self, batch: SymmetricBatch, u: torch.Tensor, k_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Primitive lattice (B, 3, 3) Angstrom and fractional coordinates (B, N, 3) of a state ``(u, k~)``."""
        k = self.denormalise_k(batch, k_norm)
        conventional = torch.matrix_exp(torch.einsum("bi,ijk->bjk", k, self.basis.to(k.dtype)))
        return batch.centring @ conventional, batch.positions(u)

    def forward(self, batch: SymmetricBatch, u: torch.Tensor, k_norm: torch.Tensor, s: torch.Tensor,
                keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities at flow time ``s`` (B,): ``du/ds * COORD_UNIT`` (B, O, 3) and ``dk~/ds`` (B, 6), both zero
        on frozen entries. ``keep`` (B, P): which target properties the network sees."""
        lattice, frac = self.cell(batch, u, k_norm)
        node = (self.embed_group(batch.spacegroup)[:, None, :] + self.embed_letter(batch.letter)
                + self.embed_site(batch.G.flatten(-2)))
        values = (torch.nan_to_num(batch.properties) - self.property_mean) / self.property_std
        out = self.net(lattice, frac, batch.types, batch.mask, 1.0 - s.to(lattice.dtype), node,
                       self.properties(values, keep))
        v_u = batch.orbit_velocity(out["coord"])
        v_k = self.lattice_out(out["pooled"]) * batch.k_free.to(lattice.dtype)
        return v_u, v_k

    def prior(self, batch: SymmetricBatch, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The start of every path: ``u_0`` (B, O, 3) uniform and ``k~_0`` (B, 6) normal, both on free entries."""
        dtype, dev = batch.k.dtype, batch.k.device
        u0 = torch.rand(batch.u.shape, generator=generator, dtype=dtype).to(dev) * batch.u_free
        k0 = torch.randn(batch.k.shape, generator=generator, dtype=dtype).to(dev) * LATTICE_PRIOR_STD * batch.k_free
        return u0, k0

    def loss(self, batch: SymmetricBatch, generator: torch.Generator | None = None,
             forward: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss: MSE of the ``u`` velocity (each orbit weighted by its atoms) plus MSE of the ``k~``
        velocity, both over free entries only."""
        forward = forward or self
        dtype, dev = batch.k.dtype, batch.k.device
        b = batch.k.shape[0]
        u0, k0 = self.prior(batch, generator)
        s = torch.rand(b, generator=generator, dtype=dtype).to(dev)
        free_u = batch.u_free.to(dtype)
        step = wrap(batch.u - u0) * free_u
        u_s = torch.remainder(u0 + s[:, None, None] * step, 1.0) * free_u
        k1 = self.normalise_k(batch, batch.k)
        k_s = (1 - s[:, None]) * k0 + s[:, None] * k1
        known = ~torch.isnan(batch.properties)
        keep = known & (torch.rand(known.shape, generator=generator).to(dev) >= self.property_dropout)
        v_u, v_k = forward(batch, u_s, k_s, s, keep)
        weight = torch.zeros(batch.u.shape[:2], dtype=dtype, device=dev).scatter_add_(
            1, batch.orbit, batch.mask.to(dtype))[..., None] * free_u
        loss_u = (weight * (v_u - COORD_UNIT * step) ** 2).sum() / weight.sum().clamp(min=1)
        free_k = batch.k_free.to(dtype)
        loss_k = (free_k * (v_k - (k1 - k0)) ** 2).sum() / free_k.sum()
        loss = loss_u + loss_k
        return loss, {"loss": float(loss.detach()), "loss_lattice": float(loss_k.detach()),
                      "loss_coord": float(loss_u.detach())}

    # ------------------------------------------------------------------ persistence
    def checkpoint(self) -> dict:
        return {"format": "xtalforge-wyckoff-flow-1", "config": self.net.cfg.to_dict(), "meta": self.meta,
                "property_dropout": self.property_dropout, "state_dict": self.state_dict()}

    def save(self, path: str | os.PathLike) -> None:
        """Write weights + config atomically."""
        save_atomic(self.checkpoint(), path)

    @classmethod
    def load(cls, path_or_name: str | os.PathLike = DEFAULT_WEIGHTS, device: str | torch.device = "cpu"
             ) -> WyckoffFlow:
        """A file path, or the name of shipped weights (``weights/wyckoff_flow_<name>.pt``)."""
        path = shipped_weights("wyckoff_flow_", path_or_name, "Wyckoff flow")
        ckpt = torch.load(path, map_location=torch_device(device), weights_only=False)
        if ckpt.get("format") != "xtalforge-wyckoff-flow-1":
            raise XtalforgeError(f"{path} is not a Wyckoff flow checkpoint")
        model = cls(CrysformerConfig(**ckpt["config"]), property_dropout=ckpt.get("property_dropout", 0.3),
                    meta=ckpt.get("meta"))
        model.load_state_dict(ckpt["state_dict"])
        return model.to(torch_device(device)).eval()

    @classmethod
    def for_data(cls, properties: np.ndarray, cfg: CrysformerConfig, meta: dict) -> WyckoffFlow:
        """A new model whose property normalisation comes from the training labels (P columns, NaN = unknown)."""
        mean = np.nan_to_num(np.nanmean(properties, axis=0)) if len(properties) else np.zeros(properties.shape[1])
        std = np.nan_to_num(np.nanstd(properties, axis=0), nan=1.0) if len(properties) else np.ones(
            properties.shape[1])
        return cls(cfg, mean, np.maximum(std, 1e-3), meta=meta)

    def load_backbone(self, path_or_name: str | os.PathLike) -> None:
        """Start from a DAO-G checkpoint's backbone (pretraining); the layers it does not have stay as they are."""
        from xtalforge.models.dao_g import DAOG

        source = DAOG.load(path_or_name).net.state_dict()
        own = self.net.state_dict()
        shared = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
        if len(shared) < len(source) or self.net.cfg.hidden != len(own["norm_out.weight"]):
            raise XtalforgeError(f"{path_or_name}: its backbone does not have this model's shape")
        self.net.load_state_dict(shared, strict=False)

