"""CDVAE (seed 002): a periodic VAE whose decoder is a noise-conditional score model, on the Crysformer backbone.

* Encoder: a Crysformer over the clean crystal (time 0); its pooled features give ``mu`` and ``log_var`` of the
  latent ``z`` (dimension ``CDVAEConfig.latent``).
* Heads from ``z`` (MLPs): number of atoms (classes 1..max_atoms), composition (a distribution over elements), the
  lattice (lengths divided by N^(1/3) and angles, standardised with the training statistics) and one property
  (the benchmark's energy label, standardised).
* Decoder: a second Crysformer that sees the noised crystal, the noise level and ``z`` (added to every atom's
  embedding). It returns the score of the fractional coordinates (wrapped normal on the torus, divided by its
  root mean square, as DiffCSP) and logits of the true atom types. Noise: ``n_sigmas`` geometric levels; the
  coordinates get wrapped Gaussian noise of ``sigma_max..sigma_min`` (fractional units: 0.5 is already uniform on
  the torus, so the paper's 10 Angstrom upper level adds nothing), the types CDVAE's noise: each atom is redrawn
  from ``one_hot(type) + type_sigma * p_composition`` with ``p_composition`` the composition head's distribution.

Loss (paper): ``cost_natom CE(N) + cost_lattice MSE + cost_composition CE + cost_property MSE + cost_coord score
MSE + cost_type CE + beta_kl KL``. Shapes: B crystals, N atoms (padded), H hidden, D latent.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xtalforge.backbone.crysformer import Crysformer, CrysformerConfig
from xtalforge.backbone.elements import NUM_ELEMENTS
from xtalforge.checkpoints import save_atomic, shipped_weights
from xtalforge.data.batch import CrystalBatch
from xtalforge.device import torch_device
from xtalforge.diffusion.wrapped_normal import sample_wrapped_normal, sigma_norm, wrapped_normal_score
from xtalforge.errors import XtalforgeError

FORMAT = "xtalforge-cdvae-1"


@dataclass
class CDVAEConfig:
    """CDVAE settings beyond the backbone (the paper's loss weights; noise levels in the units stated).

    Attributes:
        latent: dimension D of z.
        max_atoms: largest cell the number-of-atoms head can predict.
        n_sigmas: noise levels of the decoder (paper: 50).
        sigma_max, sigma_min: coordinate noise, fractional units (wrapped normal).
        type_sigma_max, type_sigma_min: weight of the composition distribution in the type noise (paper: 5, 0.01).
        beta_kl, cost_*: loss weights (paper: 0.01 KL; 1 N, 1 composition, 10 lattice, 10 coordinates, 1 types,
            1 property).
    """

    latent: int = 128
    max_atoms: int = 20
    n_sigmas: int = 50
    sigma_max: float = 0.5
    sigma_min: float = 0.005
    type_sigma_max: float = 5.0
    type_sigma_min: float = 0.01
    beta_kl: float = 0.01
    cost_natom: float = 1.0
    cost_composition: float = 1.0
    cost_lattice: float = 10.0
    cost_coord: float = 10.0
    cost_type: float = 1.0
    cost_property: float = 1.0


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, d_out))


def realisable_angles(angles: torch.Tensor, min_volume_factor: float = 0.05) -> torch.Tensor:
    """(B, 3) angles (degrees) moved the least way towards 90 (in tenths) so the cell has volume: each angle may lie
    in [30, 150] and still no cell exist (120 / 120 / 120), which latents far from the data (property optimisation)
    decode to. ``min_volume_factor`` bounds (V / abc)^2 = 1 - sum cos^2 + 2 prod cos (cubic: 1)."""
    shrink = torch.linspace(1.0, 0.0, 11, dtype=angles.dtype, device=angles.device)  # (11,)
    trial = 90.0 + shrink[None, :, None] * (angles[:, None, :] - 90.0)  # (B, 11, 3)
    c = torch.cos(torch.deg2rad(trial))
    factor = 1.0 - (c ** 2).sum(-1) + 2.0 * c.prod(-1)  # (B, 11)
    first_ok = (factor >= min_volume_factor).to(torch.int8).argmax(-1)  # the 90/90/90 end always passes
    return trial[torch.arange(len(angles), device=angles.device), first_ok]


def lattice_features(lattice: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) lattices -> (B, 6): lengths / N^(1/3) (Angstrom) and angles (degrees), CDVAE's lattice target."""
    lengths = lattice.norm(dim=-1)
    cos = torch.stack([(lattice[:, (d + 1) % 3] * lattice[:, (d + 2) % 3]).sum(-1)
                       / (lengths[:, (d + 1) % 3] * lengths[:, (d + 2) % 3]) for d in range(3)], dim=-1)
    angles = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    return torch.cat([lengths / num_atoms.to(lattice.dtype)[:, None] ** (1.0 / 3.0), angles], dim=-1)


def composition_fractions(types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N) atomic numbers -> (B, NUM_ELEMENTS) element fractions (class z - 1)."""
    onehot = F.one_hot((types - 1).clamp(min=0), NUM_ELEMENTS).to(torch.float32) * mask[..., None]
    return onehot.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


class CDVAE(nn.Module):
    """Encoder, latent heads and score decoder. ``stats`` holds the training-set normalisation (lattice feature mean
    and std, property mean and std) so a checkpoint decodes on its own."""

    def __init__(self, backbone: CrysformerConfig | None = None, cfg: CDVAEConfig | None = None,
                 stats: dict | None = None, meta: dict | None = None) -> None:
        super().__init__()
        self.backbone_cfg = backbone = backbone or CrysformerConfig()
        self.cfg = cfg = cfg or CDVAEConfig()
        self.meta = dict(meta or {})
        stats = stats or {"lattice_mean": [1.0] * 3 + [90.0] * 3, "lattice_std": [1.0] * 6, "property_mean": 0.0,
                          "property_std": 1.0, "property": None}
        self.stats = stats
        #: optional Gaussian mixture fitted to the training crystals' posterior means (see
        #: :func:`~xtalforge.models.cdvae.sampler.fit_latent_mixture`): {"weights" (K,), "means" (K, D),
        #: "cholesky" (K, D, D)}, CPU float32 tensors
        self.latent_mixture: dict | None = None
        h, d = backbone.hidden, cfg.latent
        self.encoder = Crysformer(backbone)
        self.to_latent = nn.Linear(h, 2 * d)
        self.natom_head = mlp(d, h, cfg.max_atoms + 1)
        self.composition_head = mlp(d, h, NUM_ELEMENTS)
        self.lattice_head = mlp(d, h, 6)
        self.property_head = mlp(d, h, 1)
        self.decoder = Crysformer(backbone)
        self.z_to_node = nn.Linear(d, h)
        nn.init.zeros_(self.z_to_node.weight)  # a decoder started from a DAO-G backbone computes DAO-G's score at first
        nn.init.zeros_(self.z_to_node.bias)
        sigmas = np.geomspace(cfg.sigma_max, cfg.sigma_min, cfg.n_sigmas)
        self.register_buffer("sigmas", torch.as_tensor(sigmas, dtype=torch.float32), persistent=False)
        self.register_buffer("sigma_rms", torch.sqrt(sigma_norm(sigmas)).float(), persistent=False)
        self.register_buffer("type_sigmas", torch.as_tensor(
            np.geomspace(cfg.type_sigma_max, cfg.type_sigma_min, cfg.n_sigmas), dtype=torch.float32),
            persistent=False)
        for name in ("lattice_mean", "lattice_std"):
            self.register_buffer(name, torch.as_tensor(stats[name], dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ latent
    def encode(self, batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_var), each (B, D)."""
        t = torch.zeros(batch.lattice.shape[0], dtype=batch.lattice.dtype, device=batch.lattice.device)
        pooled = self.encoder(batch.lattice, batch.frac, batch.types, batch.mask, t)["pooled"]
        mu, log_var = self.to_latent(pooled).chunk(2, dim=-1)
        return mu, log_var.clamp(-10.0, 10.0)

    def predict_property(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B,) property in its label units (e.g. eV/atom)."""
        return self.property_head(z).squeeze(-1) * self.stats["property_std"] + self.stats["property_mean"]

    def decode_lattice(self, z: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """(B, 6) lattice parameters (Angstrom, degrees) from the lattice head, lengths scaled back by N^(1/3)."""
        feats = self.lattice_head(z) * self.lattice_std + self.lattice_mean
        lengths = feats[:, :3].clamp(min=0.5) * num_atoms.to(z.dtype)[:, None] ** (1.0 / 3.0)
        return torch.cat([lengths, realisable_angles(feats[:, 3:].clamp(30.0, 150.0))], dim=-1)

    # ------------------------------------------------------------------ decoder
    def score(self, z: torch.Tensor, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor,
              mask: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder at noise ``level`` (B,) integer indices into ``sigmas``: (score of frac (B, N, 3) in 1 / frac
        units, type logits (B, N, NUM_ELEMENTS) over classes z - 1)."""
        t = level.to(lattice.dtype) / max(1, self.cfg.n_sigmas - 1)
        out = self.decoder(lattice, frac, types, mask, 1.0 - t, node_cond=self.z_to_node(z)[:, None, :])
        return out["coord"] * self.sigma_rms[level][:, None, None], out["type_logits"][..., :NUM_ELEMENTS]

    # ------------------------------------------------------------------ training
    def loss(self, batch: CrystalBatch, generator: torch.Generator | None = None,
             forward: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The CDVAE loss of one batch and its parts. ``forward`` is the (possibly DDP-wrapped) module whose
        ``forward`` runs :meth:`terms`, so gradients are all-reduced."""
        terms = (forward or self)(batch, generator)
        c = self.cfg
        loss = (c.cost_natom * terms["natom"] + c.cost_lattice * terms["lattice"] + c.cost_composition
                * terms["composition"] + c.cost_property * terms["property"] + c.cost_coord * terms["coord"]
                + c.cost_type * terms["type"] + c.beta_kl * terms["kl"])
        return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    def forward(self, batch: CrystalBatch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The unweighted loss terms (dict of scalars)."""
        dev, dtype = batch.lattice.device, batch.lattice.dtype
        b = batch.lattice.shape[0]
        n_atoms = batch.num_atoms
        mu, log_var = self.encode(batch)
        z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=generator).to(dev, dtype)
        kl = (-0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(-1)).mean()

        natom = F.cross_entropy(self.natom_head(z), n_atoms.clamp(max=self.cfg.max_atoms))
        target_lat = (lattice_features(batch.lattice, n_atoms) - self.lattice_mean) / self.lattice_std
        lattice = F.mse_loss(self.lattice_head(z), target_lat)
        comp_logits = self.composition_head(z)
        fractions = composition_fractions(batch.types, batch.mask)
        composition = -(fractions * F.log_softmax(comp_logits, dim=-1)).sum(-1).mean()
        prop = torch.zeros((), dtype=dtype, device=dev)
        if batch.energy is not None:
            known = ~torch.isnan(batch.energy)
            if known.any():
                target = (batch.energy[known] - self.stats["property_mean"]) / self.stats["property_std"]
                prop = F.mse_loss(self.property_head(z[known]).squeeze(-1), target)

        level = torch.randint(0, self.cfg.n_sigmas, (b,), generator=generator).to(dev)
        sigma = self.sigmas[level][:, None, None]
        noisy_frac, _ = sample_wrapped_normal(batch.frac, sigma, generator)
        # the score of the wrapped normal, divided by its rms at sigma: an O(1) target at every level
        target_score = wrapped_normal_score(noisy_frac - batch.frac, sigma) / self.sigma_rms[level][:, None, None]
        noisy_types = self.noise_types(batch.types, batch.mask, comp_logits.detach(), level, generator)
        t = level.to(dtype) / max(1, self.cfg.n_sigmas - 1)
        out = self.decoder(batch.lattice, noisy_frac, noisy_types, batch.mask, 1.0 - t,
                           node_cond=self.z_to_node(z)[:, None, :])
        mask_f = batch.mask.to(dtype)
        coord = (((out["coord"] - target_score) ** 2).sum(-1) * mask_f).sum() / (3 * mask_f.sum())
        type_ce = F.cross_entropy(out["type_logits"][..., :NUM_ELEMENTS][batch.mask], batch.types[batch.mask] - 1)
        return {"natom": natom, "lattice": lattice, "composition": composition, "property": prop, "coord": coord,
                "type": type_ce, "kl": kl}

    def noise_types(self, types: torch.Tensor, mask: torch.Tensor, comp_logits: torch.Tensor, level: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """CDVAE's type noise: redraw each atom from ``one_hot(type) + type_sigma * softmax(comp_logits)``."""
        probs = F.one_hot((types - 1).clamp(min=0), NUM_ELEMENTS).to(comp_logits.dtype)
        probs = probs + self.type_sigmas[level][:, None, None] * comp_logits.softmax(-1)[:, None, :]
        flat = probs.reshape(-1, NUM_ELEMENTS)
        drawn = torch.multinomial(flat.cpu(), 1, generator=generator).view(types.shape).to(types.device) + 1
        return torch.where(mask, drawn, types)

    # ------------------------------------------------------------------ persistence
    def checkpoint(self) -> dict:
        return {"format": FORMAT, "backbone": self.backbone_cfg.to_dict(), "config": asdict(self.cfg),
                "stats": self.stats, "meta": self.meta, "state_dict": self.state_dict(),
                "latent_mixture": self.latent_mixture}

    def save(self, path: str | os.PathLike) -> None:
        """Write weights + config atomically."""
        save_atomic(self.checkpoint(), path)

    @classmethod
    def load(cls, path_or_name: str | os.PathLike = "mp_20_biternary", device: str | torch.device = "cpu") -> CDVAE:
        """A file path, or the name of shipped weights (``weights/cdvae_<name>.pt``, named by benchmark)."""
        path = shipped_weights("cdvae_", path_or_name, "CDVAE")
        ckpt = torch.load(path, map_location=torch_device(device), weights_only=False)
        if ckpt.get("format") != FORMAT:
            raise XtalforgeError(f"{path} is not a CDVAE checkpoint")
        model = cls(CrysformerConfig(**ckpt["backbone"]), CDVAEConfig(**ckpt["config"]), ckpt["stats"],
                    ckpt.get("meta"))
        model.load_state_dict(ckpt["state_dict"])
        model.latent_mixture = ckpt.get("latent_mixture")
        return model.to(torch_device(device)).eval()

    def load_backbone(self, path_or_name: str | os.PathLike) -> None:
        """Start the encoder and the decoder from a DAO-G checkpoint's backbone (the DAO recipe: pretrain, then
        fine-tune): its score network already denoises fractional coordinates on the same noise scale."""
        from xtalforge.models.dao_g import DAOG

        source = DAOG.load(path_or_name).net.state_dict()
        try:
            for net in (self.encoder, self.decoder):
                net.load_state_dict(source)
        except RuntimeError as exc:
            raise XtalforgeError(f"{path_or_name}: its backbone does not have this model's shape") from exc

    @classmethod
    def for_data(cls, data, backbone: CrysformerConfig, meta: dict, property_column: str | None,
                 overrides: dict | None = None) -> CDVAE:
        """A new model whose normalisation comes from the training crystals (a CrystalDataset); ``overrides``
        changes :class:`CDVAEConfig` fields (``max_atoms`` defaults to the largest training cell)."""
        lat = torch.as_tensor(data.lattices, dtype=torch.float64)
        feats = lattice_features(lat, torch.as_tensor(data.num_atoms)).numpy()
        values = data.meta[property_column].to_numpy(dtype=float) if property_column else np.zeros(1)
        stats = {"lattice_mean": feats.mean(0).tolist(), "lattice_std": np.maximum(feats.std(0), 1e-3).tolist(),
                 "property_mean": float(np.nanmean(values)), "property_std": float(max(np.nanstd(values), 1e-3)),
                 "property": property_column}
        cfg = CDVAEConfig(**{"max_atoms": int(data.num_atoms.max()), **(overrides or {})})
        return cls(backbone, cfg, stats, meta)
