"""Fit the latent mixture of a CDVAE checkpoint (``xtalforge generate --latent mixture``) and write it into the file.

    python bench/fit_cdvae_latent_mixture.py --weights src/xtalforge/weights/cdvae_mp_20_biternary.pt

The mixture is fitted to the posterior means of the crystals the weights were trained on (rebuilt from the training
configuration they record, as training built them) or, with ``--pooled no``, of the benchmark's own val split, whose
crystals are the kind the samples are compared with; network weights are left as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from xtalforge.models.cdvae import CDVAE
from xtalforge.models.cdvae.sampler import fit_latent_mixture
from xtalforge.training.train import TrainConfig, load_training_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="a CDVAE checkpoint file (rewritten in place)")
    parser.add_argument("--pooled", choices=["yes", "no"], default=None,
                        help="fit on the pooled val splits (yes) or the benchmark's own (no); default: as trained")
    parser.add_argument("--components", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = CDVAE.load(args.weights)
    cfg = TrainConfig(**model.meta["train_config"])
    if args.pooled is not None:
        cfg = dataclasses.replace(cfg, pooled=args.pooled == "yes")
    data, _ = load_training_data(cfg)
    t0 = time.perf_counter()
    mix = fit_latent_mixture(model, data, args.components, args.seed)
    mix["data"] = f"{data.source}, <= {cfg.max_atoms} atoms"
    model.save(args.weights)
    print(f"{args.weights}: {args.components}-component mixture on {len(data)} posterior means "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
