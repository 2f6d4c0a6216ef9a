"""Crysformer symmetries, checked to 1e-5 in float64: rotation, permutation, translation, periodic images, padding."""

import pytest
import torch

from xtalforge.backbone.crysformer import Crysformer, CrysformerConfig, edge_features


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Crysformer(CrysformerConfig(hidden=32, layers=2, heads=4, n_freq=4, time_dim=16)).double().eval()


@pytest.fixture(scope="module")
def crystals():
    g = torch.Generator().manual_seed(1)
    b, n = 3, 5
    lattice = 4.0 * torch.eye(3, dtype=torch.float64) + torch.randn(b, 3, 3, generator=g, dtype=torch.float64)
    frac = torch.rand(b, n, 3, generator=g, dtype=torch.float64)
    types = torch.randint(1, 90, (b, n), generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 3:] = False  # crystal 1 has 3 atoms, padded to 5
    types[~mask] = 0
    frac[~mask] = 0.0
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    return lattice, frac, types, mask, t


def run(model, lattice, frac, types, mask, t):
    with torch.no_grad():
        return model(lattice, frac, types, mask, t)


def close(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def random_rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q  # orthogonal (may include a reflection: O(3))


def test_output_shapes(model, crystals):
    out = run(model, *crystals)
    assert out["coord"].shape == (3, 5, 3)
    assert out["lattice"].shape == (3, 3, 3)
    assert out["type_logits"].shape == (3, 5, 100)
    assert out["scalar"].shape == (3,)


def test_rotation(model, crystals):
    lattice, frac, types, mask, t = crystals
    base = run(model, *crystals)
    rot = random_rotation(2)
    out = run(model, lattice @ rot.T, frac, types, mask, t)  # rows are vectors: rotate each row
    assert close(out["coord"], base["coord"])
    assert close(out["scalar"], base["scalar"])
    assert close(out["lattice"], base["lattice"] @ rot.T)
    assert not close(base["lattice"] @ rot.T, base["lattice"])  # the test is not vacuous


def test_permutation(model, crystals):
    lattice, frac, types, mask, t = crystals
    base = run(model, *crystals)
    perm = torch.tensor([4, 2, 0, 1, 3])
    keep = torch.tensor([2, 0, 1, 3, 4])  # crystal 1 keeps its padding at the end
    idx = torch.stack([perm, keep, perm])
    gather3 = idx[..., None].expand(-1, -1, 3)
    out = run(model, lattice, frac.gather(1, gather3), types.gather(1, idx), mask.gather(1, idx), t)
    assert close(out["coord"], base["coord"].gather(1, gather3))
    assert close(out["type_logits"], base["type_logits"].gather(1, idx[..., None].expand(-1, -1, 100)))
    assert close(out["scalar"], base["scalar"])
    assert close(out["lattice"], base["lattice"])


def test_translation_and_periodic_images(model, crystals):
    lattice, frac, types, mask, t = crystals
    base = run(model, *crystals)
    shift = torch.tensor([0.31, -0.77, 0.45], dtype=torch.float64)
    moved = torch.remainder(frac + shift, 1.0) * mask[..., None]
    out = run(model, lattice, moved, types, mask, t)
    images = frac + torch.randint(-2, 3, frac.shape, generator=torch.Generator().manual_seed(3)).double()
    out_img = run(model, lattice, images * mask[..., None], types, mask, t)
    for o in (out, out_img):
        assert close(o["coord"], base["coord"])
        assert close(o["lattice"], base["lattice"])
        assert close(o["scalar"], base["scalar"])


def test_padding_does_not_change_real_atoms(model, crystals):
    lattice, frac, types, mask, t = crystals
    base = run(model, *crystals)
    pad = 4
    frac_p = torch.cat([frac, torch.rand(3, pad, 3, dtype=torch.float64)], dim=1)  # junk in padded slots
    types_p = torch.cat([types, torch.full((3, pad), 7)], dim=1)
    mask_p = torch.cat([mask, torch.zeros(3, pad, dtype=torch.bool)], dim=1)
    out = run(model, lattice, frac_p, types_p, mask_p, t)
    m = mask[..., None]
    assert close(out["coord"][:, :5] * m, base["coord"] * m)
    assert close(out["scalar"], base["scalar"])
    assert close(out["lattice"], base["lattice"])
    # crystal 1 alone (3 atoms, no padding) equals its padded version
    single = run(model, lattice[1:2], frac[1:2, :3], types[1:2, :3], mask[1:2, :3], t[1:2])
    assert close(single["coord"][0], base["coord"][1, :3])
    assert close(single["scalar"], base["scalar"][1:2])


def test_time_changes_output(model, crystals):
    lattice, frac, types, mask, t = crystals
    a = run(model, *crystals)
    b = run(model, lattice, frac, types, mask, t + 0.05)
    assert not close(a["coord"], b["coord"])


def test_fused_edge_embedding_equals_reference(model, crystals):
    """The forward pass projects the pair features without building them (edge_projector); same numbers as the
    definition: Linear(LayerNorm([Gram, sin, cos]))."""
    from xtalforge.backbone.crysformer import edge_projector, head_major

    lattice, frac, _, mask, _ = crystals
    cfg, linear = model.cfg, model.embed_edge[0]
    reference = linear(edge_features(lattice, frac, mask, cfg.n_freq, cfg.volume_per_atom))
    fused = edge_projector(lattice, frac, mask, cfg.n_freq, cfg.volume_per_atom)(linear)
    assert close(fused, reference)
    e, e_t = head_major(fused, cfg.heads)
    assert e.shape == (3, 5, cfg.heads, 5, cfg.hidden // cfg.heads) and close(e_t.transpose(-1, -2), e)
