"""The symmetry proposer (Uni-MDM stage 1, as a small model of our own): composition + optional target properties ->
Z, space group, Wyckoff positions, autoregressively (:mod:`.tokens` gives the sequence and its grammar).

A causal transformer over ``[elements with reduced counts..., property bins..., BOS, Z, space group, letters...]``.
The token at position t is embedded together with what position t+1 asks for (the "query": which element the next
orbit belongs to and how many of its atoms remain), so the three heads (Z, space group, Wyckoff index) predict from
a state that already knows the bookkeeping. Training masks the letter logits with the grammar, as decoding does, so
probabilities are over valid continuations only. Property bins are dropped (replaced by "no target") at rate
``property_dropout`` in training: one model proposes with or without targets.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from xtalforge.checkpoints import save_atomic, shipped_weights
from xtalforge.data.symmetric import PROPERTIES
from xtalforge.device import torch_device
from xtalforge.errors import XtalforgeError
from xtalforge.models.symmetry_proposer.tokens import (
    MAX_COUNT,
    MAX_LETTERS,
    MAX_Z,
    NULL_BIN,
    Sequences,
    property_bins,
)

FORMAT = "xtalforge-symmetry-proposer-1"
DEFAULT_WEIGHTS = "mp"
N_PREFIX_KINDS = 6  # element, property, BOS, Z, space group, letter


@dataclass
class ProposerConfig:
    hidden: int = 192
    layers: int = 4
    heads: int = 6
    dropout: float = 0.1
    property_dropout: float = 0.3
    max_len: int = 64


class ProposerBatch:
    """Padded tensors of a batch of :class:`Sequences` rows (see there for the fields)."""

    def __init__(self, seq: Sequences, idx: np.ndarray) -> None:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a)[idx])

        self.elements, self.counts = t(seq.elements), t(seq.counts)
        self.z, self.spacegroup = t(seq.z), t(seq.spacegroup)
        self.letters, self.query_element, self.query_remaining = t(seq.letters), t(seq.query_element), t(
            seq.query_remaining)
        self.letter_mult, self.letter_dof = t(seq.letter_mult), t(seq.letter_dof)
        self.masks = t(seq.masks)
        self.property_bins = torch.as_tensor(property_bins(seq.properties[idx]))
        # trim the data set's padding to this batch's longest composition and answer
        e = max(1, int((self.elements > 0).sum(1).max()))
        n = max(1, int((self.letters >= 0).sum(1).max()))
        self.elements, self.counts = self.elements[:, :e], self.counts[:, :e]
        for name in ("letters", "query_element", "query_remaining", "letter_mult", "letter_dof", "masks"):
            setattr(self, name, getattr(self, name)[:, :n])

    def to(self, device) -> ProposerBatch:
        for k, v in vars(self).items():
            setattr(self, k, v.to(device))
        return self


class SymmetryProposer(nn.Module):
    """See the module docstring. ``meta``: facts saved with the weights (data, training, frequency prior)."""

    def __init__(self, cfg: ProposerConfig | None = None, meta: dict | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ProposerConfig()
        self.meta = dict(meta or {})
        h = cfg.hidden
        self.kind = nn.Embedding(N_PREFIX_KINDS, h)
        self.element = nn.Embedding(119, h)
        self.count = nn.Embedding(MAX_COUNT + 1, h)
        self.prop = nn.ModuleList(nn.Embedding(NULL_BIN[p] + 1, h) for p in PROPERTIES)
        self.z_token = nn.Embedding(MAX_Z + 1, h)
        self.group = nn.Embedding(231, h)
        self.letter = nn.Embedding(MAX_LETTERS + 1, h)
        self.mult = nn.Embedding(MAX_COUNT + 1, h)
        self.dof = nn.Embedding(4, h)
        self.q_element = nn.Embedding(119, h)
        self.q_remaining = nn.Embedding(MAX_COUNT + 1, h)
        self.position = nn.Embedding(cfg.max_len, h)
        layer = nn.TransformerEncoderLayer(h, cfg.heads, 4 * h, cfg.dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(h)
        self.head_z = nn.Linear(h, MAX_Z + 1)
        self.head_group = nn.Linear(h, 231)
        self.head_letter = nn.Linear(h, MAX_LETTERS)

    # ------------------------------------------------------------------ network
    def _embed(self, b: ProposerBatch, keep_properties: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(x (B, L, H), padding mask (B, L), index of the BOS position (B,))."""
        bsz, e_max = b.elements.shape
        dev = b.elements.device
        kind = self.kind.weight
        el = self.element(b.elements) + self.count(b.counts) + kind[0]
        bins = b.property_bins
        if keep_properties is not None:
            null = torch.tensor([NULL_BIN[p] for p in PROPERTIES], device=dev)
            bins = torch.where(keep_properties, bins, null)
        props = torch.stack([emb(bins[:, j]) for j, emb in enumerate(self.prop)], dim=1) + kind[1]
        first_el, first_rem = b.elements[:, 0], b.query_remaining[:, 0]
        bos = kind[2] + torch.zeros(bsz, 1, kind.shape[1], device=dev)
        ztok = self.z_token(b.z)[:, None] + kind[3]
        gtok = self.group(b.spacegroup)[:, None] + kind[4]
        # the space group position asks for the first orbit: first element, all of its atoms
        gtok = gtok + self.q_element(first_el)[:, None] + self.q_remaining(first_rem)[:, None]
        letters = b.letters.clamp(min=0)
        ltok = (self.letter(letters) + self.mult(b.letter_mult.clamp(max=MAX_COUNT)) + self.dof(b.letter_dof.clamp(
            max=3)) + self.group(b.spacegroup)[:, None] + kind[5])
        # letter t asks for orbit t+1
        nxt_el = torch.cat([b.query_element[:, 1:], torch.zeros(bsz, 1, dtype=torch.long, device=dev)], 1)
        nxt_rem = torch.cat([b.query_remaining[:, 1:], torch.zeros(bsz, 1, dtype=torch.long, device=dev)], 1)
        ltok = ltok + self.q_element(nxt_el) + self.q_remaining(nxt_rem.clamp(max=MAX_COUNT))
        x = torch.cat([el, props, bos, ztok, gtok, ltok], dim=1)
        length = x.shape[1]
        if length > self.cfg.max_len:
            raise XtalforgeError(f"a sequence of {length} tokens exceeds the proposer's {self.cfg.max_len}")
        x = x + self.position.weight[:length]
        pad = torch.cat([b.elements == 0, torch.zeros(bsz, len(PROPERTIES) + 3, dtype=torch.bool, device=dev),
                         b.letters < 0], dim=1)
        return x, pad, e_max + len(PROPERTIES)

    def forward(self, b: ProposerBatch, keep_properties: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits: Z (B, MAX_Z + 1), space group (B, 231), letters (B, T, MAX_LETTERS) with the grammar applied."""
        x, pad, bos = self._embed(b, keep_properties)
        length = x.shape[1]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), 1)
        h = self.norm(self.blocks(x, mask=causal, src_key_padding_mask=pad))
        z_logits = self.head_z(h[:, bos])
        z_logits[:, 0] = -torch.inf
        g_logits = self.head_group(h[:, bos + 1])
        g_logits[:, 0] = -torch.inf
        t = b.letters.shape[1]
        # position of the space group token predicts letter 0; letter t predicts letter t+1
        l_logits = self.head_letter(h[:, bos + 2: bos + 2 + t])
        l_logits = l_logits.masked_fill(~b.masks, -torch.inf)
        return z_logits, g_logits, l_logits

    def loss(self, b: ProposerBatch, gen: torch.Generator, forward=None) -> tuple[torch.Tensor, dict]:
        """Cross-entropy of Z, space group and every letter (mean over the batch's tokens)."""
        keep = torch.rand(b.property_bins.shape, generator=gen) >= self.cfg.property_dropout
        z_logits, g_logits, l_logits = (forward or self)(b, keep.to(b.z.device))
        ce = nn.functional.cross_entropy
        lz = ce(z_logits, b.z.clamp(max=MAX_Z))
        lg = ce(g_logits, b.spacegroup)
        valid = b.letters >= 0
        ll = ce(l_logits[valid], b.letters[valid])
        loss = lz + lg + ll
        return loss, {"loss": loss.item(), "z": lz.item(), "group": lg.item(), "letters": ll.item()}

    # ------------------------------------------------------------------ files
    def checkpoint(self) -> dict:
        return {"format": FORMAT, "config": asdict(self.cfg), "meta": self.meta, "state_dict": self.state_dict()}

    def save(self, path: str | os.PathLike) -> None:
        save_atomic(self.checkpoint(), path)

    @classmethod
    def load(cls, path_or_name: str | os.PathLike = DEFAULT_WEIGHTS, device: str | torch.device = "cpu"
             ) -> SymmetryProposer:
        """A file path, or the name of shipped weights (``weights/symmetry_proposer_<name>.pt``)."""
        path = shipped_weights("symmetry_proposer_", path_or_name, "symmetry proposer")
        ckpt = torch.load(path, map_location=torch_device(device), weights_only=False)
        if ckpt.get("format") != FORMAT:
            raise XtalforgeError(f"{path} is not a symmetry proposer checkpoint")
        model = cls(ProposerConfig(**ckpt["config"]), meta=ckpt.get("meta"))
        model.load_state_dict(ckpt["state_dict"])
        return model.to(torch_device(device)).eval()


def frequency_prior(seq: Sequences) -> dict[int, float]:
    """Share of each space group in the training sequences (the baseline the proposer is measured against)."""
    groups, n = np.unique(seq.spacegroup, return_counts=True)
    return {int(g): float(c / n.sum()) for g, c in zip(groups, n)}
