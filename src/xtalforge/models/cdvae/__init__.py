"""CDVAE (seed 002): periodic VAE with a noise-conditional score decoder, for de novo generation, reconstruction and
latent property optimisation.

The network and loss (:mod:`.model`), decoding by annealed Langevin dynamics (:mod:`.sampler`).

>>> from xtalforge.models.cdvae import CDVAE, sample
>>> crystals = sample(CDVAE.load("perov_5"), n=10, seed=0)
"""

from xtalforge.models.cdvae.model import CDVAE, CDVAEConfig
from xtalforge.models.cdvae.sampler import DEFAULT_SAMPLER, SAMPLERS, decode, encode, reconstruct, sample

__all__ = ["CDVAE", "CDVAEConfig", "DEFAULT_SAMPLER", "SAMPLERS", "decode", "encode", "reconstruct", "sample"]
