"""Shared fixtures: small real crystals built in code, so most tests need no data files."""

from __future__ import annotations

import numpy as np
import pytest

from xtalforge.crystal import Crystal


@pytest.fixture
def nacl() -> Crystal:
    """Rock-salt NaCl, conventional cell (8 atoms, a = 5.64 A)."""
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Crystal.from_structure(s)


@pytest.fixture
def triclinic() -> Crystal:
    """A low-symmetry 5-atom cell with random coordinates (no special positions)."""
    rng = np.random.default_rng(0)
    lattice = np.array([[4.1, 0.2, 0.1], [0.5, 5.2, 0.3], [0.4, 0.7, 6.3]])
    return Crystal(lattice, rng.uniform(size=(5, 3)), [8, 8, 22, 38, 8])


@pytest.fixture
def one_thread():
    """Run a test with one torch / OpenMP thread: small models on a shared CPU only contend with more (measured 20x
    slower training steps under load)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture
def loss_curve():
    """``loss_curve(model, batch, steps=40, lr=3e-3) -> losses``: Adam steps on one batch, the noise of step s drawn
    from seed s % 4 (so the same four noise draws repeat and a falling loss means the model learned)."""
    import torch

    def run(model, batch, steps: int = 40, lr: float = 3e-3) -> list[float]:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for step in range(steps):
            loss, logs = model.loss(batch, torch.Generator().manual_seed(step % 4))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(logs)
        return losses

    return run
