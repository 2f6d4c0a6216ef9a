"""DAO-P: DAO-G's diffusion model plus a time-conditioned energy head (reference §2).

:class:`DAOP` *is* a :class:`~xtalforge.models.dao_g.DAOG` (same Crysformer, same noise processes, same diffusion
loss) whose backbone's scalar head predicts a scaled energy ``E_hat(M_t, t)`` of the noised crystal. Training adds
the exponential energy loss ``MSE(exp(-E_hat(M_t, t)), exp(-E_0))``; its minimiser is the intermediate energy
``E_t(M_t) = -log E_{q(M_0 | M_t)}[exp(-E_0(M_0))]``, whose gradient is the exact guidance term of
:mod:`xtalforge.diffusion.guidance`.

Energies are standardised per training set (``E_scaled = (E - mean) / std``, eV/atom); the statistics and the label
column are stored in the checkpoint so :meth:`DAOP.predict_energy` returns eV/atom.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xtalforge.backbone.crysformer import CrysformerConfig
from xtalforge.checkpoints import WEIGHTS_DIR, save_atomic
from xtalforge.crystal import Crystal
from xtalforge.data.batch import CrystalBatch, collate, size_bucketed_batches
from xtalforge.data.dataset import CrystalDataset
from xtalforge.device import torch_device
from xtalforge.errors import XtalforgeError
from xtalforge.models.dao_g.model import DAOG

# clean inputs are evaluated at t = 1 of T (sigma_F = 0.005 fractional units, lattice noise ~0.006 of L): the
# least-noised level the diffusion loss trains, so the energy head is never asked about an unseen time embedding
CLEAN_T = 1


def exponential_energy_loss(e_hat: torch.Tensor, e_0: torch.Tensor, bound: float = 8.0) -> torch.Tensor:
    """``mean((exp(-e_hat) - exp(-e_0))^2)`` over (B,) scaled energies; both clamped to ``[-bound, bound]`` so a bad
    early step cannot overflow. For a fixed noised input its minimiser is ``-log E[exp(-e_0)]`` (Proposition 1)."""
    e_hat = e_hat.clamp(-bound, bound)
    e_0 = e_0.clamp(-bound, bound)
    return ((torch.exp(-e_hat) - torch.exp(-e_0)) ** 2).mean()


class DAOP(DAOG):
    """DAO-G plus an energy head on the same backbone.

    Args:
        cfg, timesteps, sigma_begin, sigma_end, meta: as :class:`DAOG`.
        energy_stats: ``{"label": column, "mean": eV/atom, "std": eV/atom}`` of the training labels (scaling).
        energy_weight: weight of the exponential energy loss next to the diffusion loss.
        max_scaled_energy: clamp of the scaled energies inside ``exp`` (see :func:`exponential_energy_loss`).
    """

    def __init__(self, cfg: CrysformerConfig | None = None, timesteps: int = 1000, sigma_begin: float = 0.005,
                 sigma_end: float = 0.5, meta: dict | None = None, energy_stats: dict | None = None,
                 energy_weight: float = 1.0, max_scaled_energy: float = 8.0) -> None:
        super().__init__(cfg, timesteps, sigma_begin, sigma_end, meta)
        self.energy_stats = dict(energy_stats or {"label": "energy", "mean": 0.0, "std": 1.0})
        self.energy_weight = energy_weight
        self.max_scaled_energy = max_scaled_energy

    @classmethod
    def for_labels(cls, energies_ev: np.ndarray, label: str, **kwargs) -> DAOP:
        """A fresh model whose energy scaling is the mean / std of ``energies_ev`` (eV/atom, one per crystal)."""
        energies_ev = np.asarray(energies_ev, dtype=np.float64)
        stats = {"label": label, "mean": float(energies_ev.mean()), "std": float(energies_ev.std() or 1.0)}
        return cls(energy_stats=stats, **kwargs)

    def scale(self, energy_ev: torch.Tensor) -> torch.Tensor:
        """eV/atom -> standardised label."""
        return (energy_ev - self.energy_stats["mean"]) / self.energy_stats["std"]

    def unscale(self, scaled: torch.Tensor) -> torch.Tensor:
        """Standardised label -> eV/atom."""
        return scaled * self.energy_stats["std"] + self.energy_stats["mean"]

    def forward(self, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
                t: torch.Tensor, with_energy: bool = False) -> tuple[torch.Tensor, ...]:
        """eps_L (B, 3, 3) and normalised coordinate score (B, N, 3) at integer times t (B,); with ``with_energy``
        also the scaled energy ``E_hat(M_t, t)`` (B,)."""
        out = self.net(lattice, frac, types, mask, t.to(lattice.dtype) / self.timesteps)
        if with_energy:
            return out["lattice"], out["coord"], out["scalar"]
        return out["lattice"], out["coord"]

    def energy(self, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
               t: torch.Tensor) -> torch.Tensor:
        """Scaled intermediate energy ``E_t(M_t)`` (B,) at integer times t (B,); differentiable in lattice and frac."""
        return self.net(lattice, frac, types, mask, t.to(lattice.dtype) / self.timesteps)["scalar"]

    def loss(self, batch: CrystalBatch, generator: torch.Generator | None = None, t: torch.Tensor | None = None,
             forward: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """DAO-G's diffusion loss + ``energy_weight * MSE(exp(-E_hat(M_t, t)), exp(-E_0))`` on scaled labels.

        ``batch.energy`` (B,) holds the labels in eV/atom. The energy comes from the same network call as the noise
        predictions (one forward pass per step).
        """
        if batch.energy is None:
            raise XtalforgeError("DAO-P training needs energy labels: collate(..., energy_column=...)")
        forward = forward or self
        captured: dict[str, torch.Tensor] = {}

        def forward_with_energy(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            eps, coord, energy = forward(*args, with_energy=True)
            captured["energy"] = energy
            return eps, coord

        loss_diff, logs = super().loss(batch, generator, t, forward=forward_with_energy)
        e_hat = captured["energy"]
        loss_e = exponential_energy_loss(e_hat, self.scale(batch.energy.to(e_hat.dtype)), self.max_scaled_energy)
        loss = loss_diff + self.energy_weight * loss_e
        mae = float((self.unscale(e_hat.detach()) - batch.energy).abs().mean())
        logs.update({"loss": float(loss.detach()), "loss_diffusion": float(loss_diff.detach()),
                     "loss_energy": float(loss_e.detach()), "energy_mae_noised": mae})
        return loss, logs

    @torch.no_grad()
    def predict_energy(self, crystals: Sequence[Crystal] | CrystalDataset, batch_atoms: int = 2048) -> np.ndarray:
        """Predicted energy (eV/atom, the training label ``energy_stats['label']``) of clean crystals, (M,).

        Evaluated at ``t = CLEAN_T`` (1 of T, effectively noise-free).
        """
        data = crystals if isinstance(crystals, CrystalDataset) else CrystalDataset.from_crystals(list(crystals))
        out = np.zeros(len(data))
        dev = next(self.parameters()).device
        for idx in size_bucketed_batches(data.num_atoms, batch_atoms):
            b = collate(data, idx).to(dev)
            t = torch.full((len(idx),), CLEAN_T, dtype=torch.long, device=dev)
            out[idx] = self.unscale(self.energy(b.lattice, b.frac, b.types, b.mask, t)).double().cpu().numpy()
        return out

    # ------------------------------------------------------------------ persistence
    def checkpoint(self) -> dict:
        ckpt = super().checkpoint()
        ckpt.update({"format": "xtalforge-dao-p-1", "energy_stats": self.energy_stats,
                     "energy_weight": self.energy_weight, "max_scaled_energy": self.max_scaled_energy})
        return ckpt

    def save(self, path: str | os.PathLike) -> None:
        save_atomic(self.checkpoint(), path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> DAOP:
        model = cls(CrysformerConfig(**ckpt["config"]), meta=ckpt.get("meta"), **ckpt["diffusion"],
                    energy_stats=ckpt.get("energy_stats"), energy_weight=ckpt.get("energy_weight", 1.0),
                    max_scaled_energy=ckpt.get("max_scaled_energy", 8.0))
        model.load_state_dict(ckpt["state_dict"])
        return model

    @classmethod
    def load(cls, path_or_name: str | os.PathLike = "energy_mp20", device: str | torch.device = "cpu") -> DAOP:
        """Load a DAO-P checkpoint: a file path, or a shipped name (``weights/dao_p_<name>.pt``)."""
        path = Path(path_or_name)
        if not path.is_file():
            path = WEIGHTS_DIR / f"dao_p_{path_or_name}.pt"
        if not path.is_file():
            names = sorted(p.stem.removeprefix("dao_p_") for p in WEIGHTS_DIR.glob("dao_p_*.pt"))
            raise XtalforgeError(f"no DAO-P weights '{path_or_name}' (shipped: {', '.join(names) or 'none'})")
        device = torch_device(device)
        ckpt = torch.load(path, map_location=device, weights_only=False)
        if ckpt.get("format") != "xtalforge-dao-p-1":
            raise XtalforgeError(f"{path} is not a DAO-P checkpoint (format {ckpt.get('format')!r})")
        return cls.from_checkpoint(ckpt).to(device).eval()


# ---------------------------------------------------------------------- dataset relaxation (reference §2)
@dataclass
class EnergyRelaxation:
    """Outcome of :func:`relax_with_energy` for M crystals.

    Attributes:
        crystals: (M,) relaxed crystals (same atoms in the same order; properties copied from the inputs).
        energy_before, energy_after: (M,) DAO-P energies in eV/atom at ``t = CLEAN_T`` before / after.
        accepted_steps: (M,) number of accepted descent steps per crystal.
        strain: (M,) Frobenius norm of the symmetric strain applied to the lattice.
    """

    crystals: list[Crystal]
    energy_before: np.ndarray
    energy_after: np.ndarray
    accepted_steps: np.ndarray
    strain: np.ndarray


def relax_with_energy(model: DAOP, crystals: Sequence[Crystal] | CrystalDataset, steps: int = 30,
                      step_size: float = 0.05, max_step: float = 0.1, max_strain: float = 0.1,
                      batch_atoms: int = 2048, t: int = CLEAN_T) -> EnergyRelaxation:
    """Minimise DAO-P's predicted energy ``E_hat(M, t)`` over atom positions and lattice, batched.

    Variables per crystal: Cartesian displacements ``u`` (N, 3) in Angstrom (so ``F = F_0 + u L_0^-1``) and a
    symmetric strain ``S`` with ``L = L_0 (I + S)`` (rows of L are lattice vectors), ``|S|_F <= max_strain`` so the
    lattice stays well-conditioned and no rotation is optimised. The optimiser is gradient descent with a
    per-crystal step size and Armijo backtracking (accept a step only if it lowers that crystal's energy, then grow
    the step 1.25x; otherwise halve it); each step is one forward + backward pass of the whole padded batch.
    Unlike one L-BFGS over the summed batch energy (DAO's script: lr 1, 5 iterations), every crystal's trajectory
    is independent of its batch-mates and its energy never increases. All quantities are norms or dot products in
    Cartesian space, so the result is equivariant to a rotation of the input frame.

    Args:
        model: a DAO-P model (its ``energy`` is differentiable in lattice and frac).
        crystals: M crystals.
        steps: descent iterations (network calls with gradient).
        step_size: initial step in Angstrom^2 per unit of scaled energy gradient.
        max_step: largest displacement of any atom (and strain-length change) per step, Angstrom.
        max_strain: bound on the Frobenius norm of the strain.
        batch_atoms: padded atoms per batch.
        t: the time at which the energy is evaluated (``CLEAN_T``: the clean structure).
    """
    if steps < 0 or step_size <= 0 or max_step <= 0 or max_strain <= 0:
        raise XtalforgeError("relax_with_energy needs steps >= 0 and positive step_size, max_step, max_strain")
    data = crystals if isinstance(crystals, CrystalDataset) else CrystalDataset.from_crystals(list(crystals))
    m = len(data)
    param = next(model.parameters())
    before, after = np.zeros(m), np.zeros(m)
    accepted, strain_norm = np.zeros(m, dtype=np.int64), np.zeros(m)
    lattices, fracs = [None] * m, [None] * m
    was_training = model.training
    model.eval()
    for idx in size_bucketed_batches(data.num_atoms, batch_atoms):
        b = collate(data, idx, dtype=param.dtype).to(param.device)
        res = _EnergyDescent(model, b, t, max_strain).run(steps, step_size, max_step)
        before[idx], after[idx] = res["before"], res["after"]
        accepted[idx], strain_norm[idx] = res["accepted"], res["strain"]
        counts = data.num_atoms[idx]
        for row, i in enumerate(idx):  # unpadding, one slice per crystal
            lattices[i], fracs[i] = res["lattice"][row], res["frac"][row, : counts[row]]
    model.train(was_training)
    out = []
    for i in range(m):
        props = {k: v for k, v in data.meta.iloc[i].items()} if len(data.meta.columns) else {}
        out.append(Crystal(lattices[i], fracs[i], data.atoms_of(i), props))
    return EnergyRelaxation(out, before, after, accepted, strain_norm)


class _EnergyDescent:
    """One padded batch of :func:`relax_with_energy`: variables, energy + gradient, the descent loop."""

    def __init__(self, model: DAOP, batch: CrystalBatch, t: int, max_strain: float) -> None:
        self.model, self.b, self.max_strain = model, batch, max_strain
        self.maskf = batch.mask.to(batch.lattice.dtype)[..., None]
        self.inv0 = torch.linalg.inv(batch.lattice)
        # the strain variable carries a length (strain x cell edge) so its gradient is on the scale of the
        # displacement gradient and one step size serves both
        self.edge = torch.linalg.det(batch.lattice).abs() ** (1 / 3)
        self.eye = torch.eye(3, dtype=batch.lattice.dtype, device=batch.lattice.device)
        self.t = torch.full((batch.lattice.shape[0],), int(t), dtype=torch.long, device=batch.lattice.device)

    def strain(self, e: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) symmetric strain of the variable e, norm-clamped to max_strain."""
        s = 0.5 * (e + e.transpose(1, 2)) / self.edge[:, None, None]
        norm = s.flatten(1).norm(dim=1).clamp_min(1e-12)
        return s * (self.max_strain / norm).clamp(max=1.0)[:, None, None]

    def structure(self, u: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lattice, unwrapped frac) for displacements u (B, N, 3) Angstrom and strain variable e."""
        return self.b.lattice @ (self.eye + self.strain(e)), self.b.frac + (u @ self.inv0) * self.maskf

    def evaluate(self, u: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scaled energies (B,) and their gradients w.r.t. u and e."""
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            e = e.detach().requires_grad_(True)
            lat, frac = self.structure(u, e)
            energy = self.model.energy(lat, frac, self.b.types, self.b.mask, self.t)
            gu, ge = torch.autograd.grad(energy.sum(), (u, e))
        return energy.detach(), gu * self.maskf, ge

    def run(self, steps: int, step_size: float, max_step: float) -> dict[str, np.ndarray]:
        u = torch.zeros_like(self.b.frac)
        e = torch.zeros_like(self.b.lattice)
        energy, gu, ge = self.evaluate(u, e)
        first = energy
        lr = torch.full_like(energy, float(step_size))
        n_acc = torch.zeros(energy.shape, dtype=torch.long, device=energy.device)
        for _ in range(steps):
            # cap the step so no atom (and no strain length) moves more than max_step
            biggest = torch.maximum(gu.norm(dim=2).amax(dim=1), ge.flatten(1).norm(dim=1)).clamp_min(1e-12)
            a = torch.minimum(lr, max_step / biggest)
            u_new, e_new = u - a[:, None, None] * gu, e - a[:, None, None] * ge
            e_try, gu_try, ge_try = self.evaluate(u_new, e_new)
            g2 = (gu**2).sum(dim=(1, 2)) + (ge**2).sum(dim=(1, 2))
            ok = e_try <= energy - 1e-4 * a * g2  # Armijo condition, per crystal
            okb = ok[:, None, None]
            u, e = torch.where(okb, u_new, u), torch.where(okb, e_new, e)
            gu, ge = torch.where(okb, gu_try, gu), torch.where(okb, ge_try, ge)
            energy = torch.where(ok, e_try, energy)
            lr = torch.where(ok, lr * 1.25, lr * 0.5)
            n_acc += ok.long()
        with torch.no_grad():
            lat, frac = self.structure(u, e)
            as_np = lambda x: x.double().cpu().numpy()  # noqa: E731
            return {"before": as_np(self.model.unscale(first)), "after": as_np(self.model.unscale(energy)),
                    "accepted": n_acc.cpu().numpy(), "strain": as_np(self.strain(e).flatten(1).norm(dim=1)),
                    "lattice": as_np(lat), "frac": as_np(torch.remainder(frac, 1.0))}
