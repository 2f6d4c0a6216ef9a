"""Decoding a CDVAE latent into crystals: the latent heads fix N, the composition and the lattice; annealed
Langevin dynamics over the decoder's noise levels places the atoms and refines their types (seed 002).

Samplers are named settings of one function, :func:`annealed_langevin`: ``faithful`` is the paper's (every one of the
50 levels, 100 steps each, step ``sigma^2``: 5,000 decoder calls); ``fast`` takes one step per level at half that
step size (50 calls; chosen on Perov-5 reconstruction of other test rows than the reported ones, bench/cdvae.py);
``medium`` takes 10 steps per level (500 calls), for de novo samples where one step per level leaves the atoms
disordered (Carbon-24; docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from xtalforge.crystal import Crystal
from xtalforge.data.batch import CrystalBatch, collate
from xtalforge.data.dataset import CrystalDataset
from xtalforge.evaluation.matching import lattice_from_parameters
from xtalforge.models.cdvae.model import CDVAE

#: name -> (steps per noise level, step size as a multiple of sigma^2, types updated by the decoder).
SAMPLERS: dict[str, tuple[int, float, bool]] = {"faithful": (100, 1.0, True), "medium": (10, 1.0, True),
                                                "fast": (1, 0.5, True)}
DEFAULT_SAMPLER = "fast"
#: where de novo latents come from: ``prior`` is z ~ N(0, I) (the paper); ``mixture`` is the Gaussian mixture fitted
#: to the training crystals' posterior means (ex-post density estimation), which the weights must carry; ``auto`` is
#: the mixture when the weights carry one (it measured closer to the data on MP-20, docs/results.md), else the prior
LATENTS = ("auto", "prior", "mixture")
DEFAULT_LATENT = "auto"


def composition_counts(probs: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    """(B, E) element distributions and (B,) atom counts -> (B, E) integer counts summing to each N (largest
    remainder rounding of ``probs * N``, CDVAE's composition sampling made deterministic)."""
    expected = probs * num_atoms[:, None].to(probs.dtype)
    counts = expected.floor().long()
    deficit = num_atoms - counts.sum(-1)
    rank = torch.argsort(torch.argsort(expected - counts, dim=-1, descending=True), dim=-1)
    return counts + (rank < deficit[:, None]).long()


@torch.no_grad()
def decode_stats(model: CDVAE, z: torch.Tensor, generator: torch.Generator | None = None) -> CrystalBatch:
    """The starting batch for ``z`` (B, D): N from the atom-count head (argmax), the composition head's counts, the
    lattice head's cell, uniform random coordinates."""
    num_atoms = model.natom_head(z).argmax(-1).clamp(min=1)
    counts = composition_counts(model.composition_head(z).softmax(-1), num_atoms).cpu()
    params = model.decode_lattice(z, num_atoms).double().cpu().numpy()
    lattice = torch.as_tensor(lattice_from_parameters(params), dtype=z.dtype, device=z.device)
    n_max = int(num_atoms.max())
    elements = torch.arange(1, counts.shape[1] + 1)
    types = torch.zeros(len(z), n_max, dtype=torch.long)
    for b in range(len(z)):  # set-up only, one row per crystal
        row = torch.repeat_interleave(elements, counts[b])
        types[b, : len(row)] = row
    mask = torch.arange(n_max)[None, :] < num_atoms.cpu()[:, None]
    frac = torch.rand((len(z), n_max, 3), generator=generator, dtype=z.dtype)
    return CrystalBatch(lattice, frac.to(z.device), types.to(z.device), mask.to(z.device))


@torch.no_grad()
def annealed_langevin(model: CDVAE, z: torch.Tensor, batch: CrystalBatch, steps_per_level: int = 1,
                      step_scale: float = 1.0, generator: torch.Generator | None = None, update_types: bool = True,
                      callback: Callable[[int], None] | None = None) -> CrystalBatch:
    """Annealed Langevin dynamics on the fractional coordinates from the highest noise level to the lowest:
    ``f += a s + sqrt(2 a) eps`` with ``a = step_scale * sigma^2``; after every step the types become the decoder's
    most likely ones (CDVAE), unless ``update_types`` is False. ``callback(level)`` runs after each level."""
    frac, types = batch.frac.clone(), batch.types.clone()
    b = len(z)
    for level in range(model.cfg.n_sigmas):
        sigma = float(model.sigmas[level])
        step = step_scale * sigma**2
        lv = torch.full((b,), level, dtype=torch.long, device=z.device)
        for _ in range(steps_per_level):
            score, logits = model.score(z, batch.lattice, frac, types, batch.mask, lv)
            noise = torch.randn(frac.shape, generator=generator, dtype=frac.dtype).to(frac.device)
            frac = torch.remainder(frac + step * score + (2 * step) ** 0.5 * noise, 1.0)
            if update_types:
                types = torch.where(batch.mask, logits.argmax(-1) + 1, types)
        if callback is not None:
            callback(level)
    return batch.replace(frac=frac, types=types)


def _settings(sampler: str) -> tuple[int, float, bool]:
    from xtalforge.errors import XtalforgeError

    if sampler not in SAMPLERS:
        raise XtalforgeError(f"unknown CDVAE sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    return SAMPLERS[sampler]


@torch.no_grad()
def decode(model: CDVAE, z: torch.Tensor, sampler: str = DEFAULT_SAMPLER, generator: torch.Generator | None = None,
           callback: Callable[[int], None] | None = None) -> list[Crystal]:
    """Latents (B, D) -> B crystals."""
    steps, scale, update_types = _settings(sampler)
    start = decode_stats(model, z, generator)
    return annealed_langevin(model, z, start, steps, scale, generator, update_types, callback).crystals()


def fit_latent_mixture(model: CDVAE, crystals: Sequence[Crystal] | CrystalDataset, components: int = 20,
                       seed: int = 0) -> dict:
    """Fit a full-covariance Gaussian mixture (scikit-learn) to the posterior means of ``crystals`` (the training
    set) and attach it to ``model`` as ``latent_mixture``. The aggregate posterior of a VAE trained with a small KL
    weight is much narrower than N(0, I) (MP-20: median per-dimension std 0.14), so prior samples decode off the
    data; sampling this mixture instead is ex-post density estimation (Ghosh et al. 2020)."""
    from sklearn.mixture import GaussianMixture

    mu = encode(model, crystals).cpu().double().numpy()
    gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(mu)
    model.latent_mixture = {"weights": torch.as_tensor(gmm.weights_, dtype=torch.float32),
                            "means": torch.as_tensor(gmm.means_, dtype=torch.float32),
                            "cholesky": torch.linalg.cholesky(torch.as_tensor(gmm.covariances_)).float(),
                            "fitted_on": len(mu), "components": components}
    return model.latent_mixture


def latent_source(model: CDVAE, latent: str = DEFAULT_LATENT) -> str:
    """``prior`` or ``mixture``: what ``latent`` (one of :data:`LATENTS`) means for these weights."""
    from xtalforge.errors import XtalforgeError

    if latent not in LATENTS:
        raise XtalforgeError(f"unknown latent source '{latent}' (choose from {', '.join(LATENTS)})")
    if latent == "auto":
        return "prior" if model.latent_mixture is None else "mixture"
    if latent == "mixture" and model.latent_mixture is None:
        raise XtalforgeError("these CDVAE weights carry no latent mixture: use --latent prior")
    return latent


def draw_latents(model: CDVAE, size: int, generator: torch.Generator, latent: str = DEFAULT_LATENT) -> torch.Tensor:
    """(size, D) latents from the prior or from the weights' latent mixture (see :data:`LATENTS`), on the CPU."""
    latent = latent_source(model, latent)
    eps = torch.randn((size, model.cfg.latent), generator=generator)
    if latent == "prior":
        return eps
    mix = model.latent_mixture
    k = torch.multinomial(mix["weights"], size, replacement=True, generator=generator)
    return mix["means"][k] + (mix["cholesky"][k] @ eps[..., None]).squeeze(-1)


def sample_batch(model: CDVAE, size: int, seed: int, index: int, sampler: str = DEFAULT_SAMPLER,
                 latent: str = DEFAULT_LATENT) -> list[Crystal]:
    """Batch ``index`` of a seeded run: ``size`` crystals from latents drawn (:func:`draw_latents`) with the seed
    (seed, index), so any batch can be (re)made on its own."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    device = next(model.parameters()).device
    z = draw_latents(model, size, gen, latent).to(device)
    return decode(model, z, sampler, gen)


def sample(model: CDVAE, n: int, seed: int = 0, sampler: str = DEFAULT_SAMPLER, batch_size: int = 250,
           progress: Callable[[int], None] | None = None, latent: str = DEFAULT_LATENT) -> list[Crystal]:
    """``n`` de novo crystals (batches of :func:`sample_batch`); the same seed and batch size give the same crystals.
    ``progress(k)`` is called with the number finished after every batch."""
    out: list[Crystal] = []
    for b, start in enumerate(range(0, n, batch_size)):
        out += sample_batch(model, min(batch_size, n - start), seed, b, sampler, latent)
        if progress is not None:
            progress(len(out))
    return out


@torch.no_grad()
def encode(model: CDVAE, crystals: Sequence[Crystal] | CrystalDataset, batch_size: int = 256) -> torch.Tensor:
    """(M, D) posterior means of the crystals' latents."""
    data = crystals if isinstance(crystals, CrystalDataset) else CrystalDataset.from_crystals(list(crystals))
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(len(data), start + batch_size))
        parts.append(model.encode(collate(data, idx).to(device))[0])
    return torch.cat(parts)


def reconstruct(model: CDVAE, crystals: Sequence[Crystal] | CrystalDataset, sampler: str = DEFAULT_SAMPLER,
                seed: int = 0, batch_size: int = 256) -> list[Crystal]:
    """Encode each crystal (posterior mean) and decode it: the reconstruction task of the paper."""
    z = encode(model, crystals, batch_size)
    gen = torch.Generator().manual_seed(seed)
    out: list[Crystal] = []
    for start in range(0, len(z), batch_size):
        out += decode(model, z[start:start + batch_size], sampler, gen)
    return out

