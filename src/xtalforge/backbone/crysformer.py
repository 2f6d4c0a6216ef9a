"""Crysformer: a periodic, E(3)-invariant transformer over the atoms of one unit cell (reference §2).

Every atom attends to every atom of its own cell (self-pairs included). Pair features are the Gram matrix ``L L^T``
(rotation invariant) and Fourier features of ``(f_j - f_i) mod 1`` (translation invariant and periodic), so every
output is invariant to rotations, translations and periodic images, and per-atom outputs are permutation
equivariant. The lattice head returns ``M @ L`` with an invariant ``M``, which rotates with the lattice.

Shapes: B crystals padded to N atoms, H hidden channels. Everything is batched; there is no loop over atoms or
crystals in :meth:`Crysformer.forward`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xtalforge.backbone.elements import ELEMENT_DIM, NUM_ELEMENTS, element_table


@dataclass
class CrysformerConfig:
    """Crysformer hyper-parameters.

    The default is the CPU-sized model used for the shipped weights (chosen by measured training throughput on
    2 cores); :meth:`paper` gives the published size (hidden 384, 12 layers, 8 heads, 128 frequencies).

    Attributes:
        hidden: node channels H.
        layers: transformer blocks.
        heads: attention heads (hidden must be divisible by heads).
        n_freq: Fourier frequencies k = 1..n_freq per axis of the fractional differences (6 * n_freq edge features).
        time_dim: width of the sinusoidal time embedding.
        edge_per_layer: a separate edge projection per block (paper) instead of one shared by all blocks.
        volume_per_atom: typical volume per atom (Angstrom^3) that scales the Gram matrix to O(1) values.
        num_types: classes of the type head (atomic numbers 1..num_types map to classes 0..num_types-1).
        cross_attention: after every block, atoms attend to context tokens (e.g. target properties, seed 003's
            property fusion); off for DAO-G / DAO-P.
    """

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    n_freq: int = 32
    time_dim: int = 256
    edge_per_layer: bool = False
    volume_per_atom: float = 20.0
    num_types: int = NUM_ELEMENTS
    cross_attention: bool = False

    @classmethod
    def paper(cls) -> CrysformerConfig:
        return cls(hidden=384, layers=12, heads=8, n_freq=128, edge_per_layer=True)

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) sinusoids of 1000 t (the usual diffusion time embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = 1000.0 * t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def typical_length(mask: torch.Tensor, volume_per_atom: float, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1) typical lattice length ``(volume_per_atom * n_atoms)^(1/3)`` in Angstrom (the edge of a cube of
    typical volume): the unit that makes lattice quantities O(1) for cells of any size."""
    n_atoms = mask.sum(dim=1).clamp(min=1).to(dtype)
    return ((volume_per_atom * n_atoms) ** (1.0 / 3.0))[:, None, None]


def edge_features(lattice: torch.Tensor, frac: torch.Tensor, mask: torch.Tensor, n_freq: int,
                  volume_per_atom: float) -> torch.Tensor:
    """Invariant pair features (B, N, N, 9 + 6 n_freq), layer-normalised without affine parameters.

    The Gram matrix is divided by ``(volume_per_atom * n_atoms)^(2/3)`` (a typical squared lattice length) so its
    entries are O(1) for cells of any size; the affine part of the reference's LayerNorm is folded into the
    following Linear layer (the same function, one normalisation for all blocks).
    """
    gram = lattice @ lattice.transpose(1, 2) / typical_length(mask, volume_per_atom, lattice.dtype) ** 2
    diff = frac[:, None, :, :] - frac[:, :, None, :]  # (B, N, N, 3): f_j - f_i at [b, i, j]
    k = torch.arange(1, n_freq + 1, dtype=frac.dtype, device=frac.device)
    angles = 2.0 * math.pi * diff[..., None] * k  # sin/cos of 2 pi k (f_j - f_i) equal those of the value mod 1
    fourier = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)
    b, n = frac.shape[:2]
    feats = torch.cat([gram.reshape(b, 1, 1, 9).expand(b, n, n, 9), fourier], dim=-1)
    return F.layer_norm(feats, feats.shape[-1:])


def edge_projector(lattice: torch.Tensor, frac: torch.Tensor, mask: torch.Tensor, n_freq: int,
                   volume_per_atom: float) -> Callable[[nn.Linear], torch.Tensor]:
    """``linear -> linear(edge_features(...))``, (B, N, N, H), without building the (B, N, N, 9 + 6 n_freq) features.

    The hot path of every forward pass. The sines and LayerNorm statistics are computed once here and shared by every
    projection (the paper configuration has one per block): the Gram part is the same for all pairs of a crystal, so it
    is projected once per crystal; sin and cos come from one ``sin`` call (cos x = sin(x + pi/2)) already in the
    features' layout; the LayerNorm statistics are summed analytically (sin^2 + cos^2 = 1) and applied after the
    projection, using ``W (f - mu) / sigma = (W f - mu W 1) / sigma``.
    """
    gram = lattice @ lattice.transpose(1, 2) / typical_length(mask, volume_per_atom, lattice.dtype) ** 2
    gram = gram.reshape(-1, 1, 1, 9)
    diff = frac[:, None, :, :] - frac[:, :, None, :]  # (B, N, N, 3): f_j - f_i at [b, i, j]
    k = torch.arange(1, n_freq + 1, dtype=frac.dtype, device=frac.device)
    phase = torch.tensor([[0.0], [0.5 * math.pi]], dtype=frac.dtype, device=frac.device)
    # (B, N, N, 3, 2, n_freq) -> (B, N, N, 6 n_freq): per axis the n sines then the n cosines, as in edge_features
    fourier = torch.sin((2.0 * math.pi * diff[..., None] * k)[..., None, :] + phase).flatten(-3)
    dim = 9 + 6 * n_freq
    mean = (gram.sum(-1) + fourier.sum(-1)) / dim
    inv_std = torch.rsqrt(((gram**2).sum(-1) + 3 * n_freq) / dim - mean**2 + 1e-5)[..., None]
    mean = mean[..., None]

    def project(linear: nn.Linear) -> torch.Tensor:
        w = linear.weight
        projected = gram @ w[:, :9].T + fourier @ w[:, 9:].T
        return (projected - mean * w.sum(dim=1)) * inv_std + linear.bias

    return project


class GatedResidual(nn.Module):
    """``g * x + (1 - g) * r`` with a per-atom gate ``g = sigmoid(W [x, r, x - r])``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(3 * hidden, 1)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        # W [x, r, x - r] = (W_x + W_d) x + (W_r - W_d) r: the same gate without building the (..., 3H) input
        w_x, w_r, w_d = self.gate.weight.chunk(3, dim=-1)
        g = torch.sigmoid(F.linear(x, w_x + w_d, self.gate.bias) + F.linear(r, w_r - w_d))
        return g * x + (1.0 - g) * r


class CrysformerBlock(nn.Module):
    """Pre-LayerNorm attention with edge-biased keys and values, then a 4x GELU FFN; both with gated residuals."""

    def __init__(self, cfg: CrysformerConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.norm_attn = nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        self.gate_attn = GatedResidual(cfg.hidden)
        self.norm_ffn = nn.LayerNorm(cfg.hidden)
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden, 4 * cfg.hidden), nn.GELU(),
                                 nn.Linear(4 * cfg.hidden, cfg.hidden))
        self.gate_ffn = GatedResidual(cfg.hidden)

    def forward(self, x: torch.Tensor, edge: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """x (B, N, H); edge = (e, e^T): e_ij in the two head-major layouts of :func:`head_major`; pair_mask
        (B, 1, N, N) True where j is a real atom."""
        b, n, hid = x.shape
        e, e_t = edge
        q, k, v = self.qkv(self.norm_attn(x)).view(b, n, 3, self.heads, self.head_dim).unbind(dim=2)
        # q_i . (k_j + e_ij) = q_i . k_j + q_i . e_ij; both edge terms are matrix-vector products over (b, i, h) that
        # read the edges in place (an einsum over the (B, N, N, H) layout copied them twice per block)
        logits = torch.einsum("bihd,bjhd->bhij", q, k) + (e @ q[..., None]).squeeze(-1).transpose(1, 2)
        logits = logits / math.sqrt(self.head_dim)
        attn = torch.softmax(logits.masked_fill(~pair_mask, float("-inf")), dim=-1)
        # sum_j a_ij (v_j + e_ij)
        msg = torch.einsum("bhij,bjhd->bihd", attn, v) + (e_t @ attn.transpose(1, 2)[..., None]).squeeze(-1)
        x = self.gate_attn(x, self.out(msg.reshape(b, n, hid)))
        return self.gate_ffn(x, self.ffn(self.norm_ffn(x)))


class ContextAttention(nn.Module):
    """Atoms (queries) attend to a few context tokens (keys and values), seed 003's fusion of a property embedding
    into the crystal features: ``x + W_o softmax(q k^T / sqrt(d)) v``. The output projection starts at zero, so a
    backbone initialised from weights trained without context computes the same function at first."""

    def __init__(self, cfg: CrysformerConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.hidden // cfg.heads
        self.norm = nn.LayerNorm(cfg.hidden)
        self.q = nn.Linear(cfg.hidden, cfg.hidden)
        self.kv = nn.Linear(cfg.hidden, 2 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """x (B, N, H); tokens (B, P, H); token_mask (B, P) True for tokens to attend to (at least one per row)."""
        b, n, hid = x.shape
        q = self.q(self.norm(x)).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(tokens).view(b, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask[:, None, None, :])
        return x + self.out(out.transpose(1, 2).reshape(b, n, hid))


def head_major(edge: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, N, H) edge embeddings -> the layouts the blocks read: contiguous (B, N_i, heads, N_j, H / heads) and
    its transpose (B, N_i, heads, H / heads, N_j)."""
    b, n, _, hid = edge.shape
    e = edge.view(b, n, n, heads, hid // heads)
    return e.permute(0, 1, 3, 2, 4).contiguous(), e.permute(0, 1, 3, 4, 2).contiguous()


class Crysformer(nn.Module):
    """The shared backbone of DAO-G and DAO-P.

    ``forward`` returns a dict:
        ``coord``: (B, N, 3) per-atom fractional-coordinate output (invariant);
        ``lattice``: (B, 3, 3) ``M @ L`` (rotates with the lattice: L R^T -> out R^T);
        ``type_logits``: (B, N, num_types);
        ``scalar``: (B,) invariant scalar (energy head of DAO-P);
        ``pooled``: (B, H) mean of the final atom features (invariant), for heads of other models.
    """

    def __init__(self, cfg: CrysformerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or CrysformerConfig()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden {cfg.hidden} is not divisible by heads {cfg.heads}")
        self.register_buffer("element_features", torch.as_tensor(element_table()), persistent=True)
        self.embed_type = nn.Linear(ELEMENT_DIM, cfg.hidden)
        self.embed_node = nn.Linear(cfg.hidden + cfg.time_dim, cfg.hidden)
        edge_in = 9 + 6 * cfg.n_freq
        n_edge = cfg.layers if cfg.edge_per_layer else 1
        self.embed_edge = nn.ModuleList([nn.Linear(edge_in, cfg.hidden) for _ in range(n_edge)])
        self.blocks = nn.ModuleList([CrysformerBlock(cfg) for _ in range(cfg.layers)])
        self.context = nn.ModuleList([ContextAttention(cfg) for _ in range(cfg.layers)] if cfg.cross_attention else [])
        self.norm_out = nn.LayerNorm(cfg.hidden)
        self.coord_head = nn.Linear(cfg.hidden, 3, bias=False)
        self.lattice_head = nn.Linear(cfg.hidden, 9)
        self.type_head = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(),
                                       nn.Linear(cfg.hidden, cfg.num_types))
        self.scalar_head = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 1))

    def forward(self, lattice: torch.Tensor, frac: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
                t: torch.Tensor, node_cond: torch.Tensor | None = None,
                context: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """lattice (B, 3, 3) Angstrom rows; frac (B, N, 3); types (B, N) atomic numbers; mask (B, N) bool; t (B,) in
        [0, 1] (diffusion time / T). Optional: ``node_cond`` (B, N, H) added to the atom embeddings (e.g. Wyckoff
        positions); ``context`` = (tokens (B, P, H), token mask (B, P)) read by the context attention layers."""
        dtype = lattice.dtype
        mask_f = mask.to(dtype)[..., None]
        node = self.embed_type(self.element_features[types.clamp(0, NUM_ELEMENTS)].to(dtype))
        temb = sinusoidal_embedding(t.to(dtype), self.cfg.time_dim)
        x = self.embed_node(torch.cat([node, temb[:, None, :].expand(-1, node.shape[1], -1)], dim=-1))
        if node_cond is not None:
            x = x + node_cond
        pair_mask = mask[:, None, None, :]
        project = edge_projector(lattice, frac, mask, self.cfg.n_freq, self.cfg.volume_per_atom)
        edge = head_major(project(self.embed_edge[0]), self.cfg.heads)
        for i, block in enumerate(self.blocks):
            if self.cfg.edge_per_layer and i > 0:
                edge = head_major(project(self.embed_edge[i]), self.cfg.heads)
            x = block(x, edge, pair_mask)
            if self.context and context is not None:
                x = self.context[i](x, *context)
        x = self.norm_out(x) * mask_f
        pooled = x.sum(dim=1) / mask_f.sum(dim=1).clamp(min=1.0)
        m = self.lattice_head(pooled).view(-1, 3, 3)
        return {
            "coord": self.coord_head(x) * mask_f,
            "lattice": m @ lattice,
            "type_logits": self.type_head(x),
            "scalar": self.scalar_head(pooled).squeeze(-1),
            "pooled": pooled,
        }
