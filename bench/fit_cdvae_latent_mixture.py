"""Fit the latent mixture of a CDVAE checkpoint (``xtalforge generate --latent mixture``) and write it into the file.

    python bench/fit_cdvae_latent_mixture.py --weights src/xtalforge/weights/cdvae_mp_20_biternary.pt

The mixture is fitted to the posterior means of the crystals the weights were trained on (their ``meta``: pooled or
own val split, cut to the model's ``max_atoms``) or, with ``--pooled no``, of the benchmark's own val split, whose
crystals are the kind the samples are compared with; network weights are left as they are.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from xtalforge.data.protocol import training_set
from xtalforge.models.cdvae import CDVAE
from xtalforge.models.cdvae.sampler import fit_latent_mixture


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
    pooled = "pooled" in str(model.meta.get("source", "")) or bool(model.meta.get("train_config", {}).get("pooled"))
    pooled = pooled if args.pooled is None else args.pooled == "yes"
    data = training_set(model.meta["data"], pooled=pooled)
    data = data.subset(np.flatnonzero(data.num_atoms <= model.cfg.max_atoms))
    t0 = time.perf_counter()
    mix = fit_latent_mixture(model, data, args.components, args.seed)
    mix["data"] = f"training_set({model.meta['data']!r}, pooled={pooled}), <= {model.cfg.max_atoms} atoms"
    model.save(args.weights)
    print(f"{args.weights}: {args.components}-component mixture on {len(data)} posterior means "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
