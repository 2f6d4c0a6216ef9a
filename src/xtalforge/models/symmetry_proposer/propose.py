"""Ranked symmetry proposals from the proposer: beam search over (Z, space group) and then the Wyckoff letters, with
the grammar of :mod:`.tokens`, so every returned assignment holds the composition exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtalforge.data.symmetric import PROPERTIES
from xtalforge.errors import XtalforgeError
from xtalforge.models.symmetry_proposer.model import ProposerBatch, SymmetryProposer
from xtalforge.models.symmetry_proposer.tokens import (
    MAX_COUNT,
    MAX_LETTERS,
    MAX_Z,
    Decoded,
    Sequences,
    advance,
    group_tables,
    letter_mask,
    orbit_order,
    reduced,
    start_state,
)
from xtalforge.symmetry.wyckoff import group_info


@dataclass
class Proposal:
    """One proposed symmetry: ``orbits`` are (atomic number, Wyckoff index) in the group's standard setting; the
    primitive cell holds ``z`` formula units. ``log_prob``: the proposer's log-probability of the whole answer."""

    spacegroup: int
    orbits: tuple[tuple[int, int], ...]
    z: int
    log_prob: float

    @property
    def probability(self) -> float:
        return float(np.exp(self.log_prob))

    @property
    def wyckoff(self) -> list[str]:
        """``['Na 4a', 'Cl 4b']`` (conventional multiplicities)."""
        from pymatgen.core import Element

        info = group_info(self.spacegroup)
        return [f"{Element.from_Z(z).symbol} {info.multiplicities[w]}{info.letters[w]}" for z, w in self.orbits]

    def text(self) -> str:
        """The answer in words, the form whose ROUGE the seed reports: group, then the Wyckoff position of each
        orbit."""
        info = group_info(self.spacegroup)
        return (f"space group {info.symbol} number {self.spacegroup} ; wyckoff positions "
                + " , ".join(self.wyckoff))


def _rows(elements, counts, props, zs, groups, letters, states, full, grammar: bool = False) -> Sequences:
    """A :class:`Sequences` of partial answers (same composition), with one pending letter slot for the next step.
    The given letters' masks are the grammar's (``grammar``, for scoring them) or just the letter (decoding)."""
    n, t = len(zs), len(letters[0]) + 1
    lt = np.full((n, t), 0, dtype=np.int64)
    q_el = np.zeros((n, t), dtype=np.int64)
    q_rem = np.zeros((n, t), dtype=np.int64)
    mult = np.zeros((n, t), dtype=np.int64)
    dof = np.zeros((n, t), dtype=np.int64)
    masks = np.zeros((n, t, MAX_LETTERS), dtype=bool)
    for i in range(n):
        m, d, _ = group_tables(groups[i])
        state = start_state(full[i])
        for j, w in enumerate(letters[i]):
            q_el[i, j], q_rem[i, j] = elements[state.element], state.remaining
            lt[i, j], mult[i, j], dof[i, j] = w, m[w], d[w]
            if grammar:
                masks[i, j] = letter_mask(state, groups[i])
            else:
                masks[i, j, w] = True
            state = advance(state, w, full[i], groups[i])
        q_el[i, -1], q_rem[i, -1] = elements[states[i].element], states[i].remaining
        masks[i, -1] = letter_mask(states[i], groups[i])
    e = np.tile(np.asarray(elements)[None], (n, 1))
    c = np.tile(np.asarray(counts)[None], (n, 1))
    return Sequences(e, c, np.asarray(zs), np.asarray(groups), lt, q_el, q_rem, mult, dof, masks,
                     np.tile(props[None], (n, 1)))


def _fits(spacegroup: int, counts: list[int]) -> bool:
    _, _, fill = group_tables(spacegroup)
    return all(c <= MAX_COUNT and fill[-1, c] for c in counts)


@torch.no_grad()
def propose(model: SymmetryProposer, counts: dict[int, int], properties: dict[str, float] | None = None,
            k: int = 20, z: list[int] | None = None, beam: int = 64, groups_per_z: int = 12) -> list[Proposal]:
    """The ``k`` most probable (Z, space group, Wyckoff assignment) answers for a composition.

    Args:
        counts: atoms of each element (atomic number -> count); only the ratio matters unless ``z`` is None, in
            which case Z is fixed to the cell's formula units (``counts`` is taken as a primitive cell).
        properties: target values (``PROPERTIES`` names, eV/atom and eV); missing = no target.
        z: formula units per primitive cell to consider (default: those of ``counts``).
        beam: partial answers kept per step; groups_per_z: space groups tried per Z.
    """
    if not counts:
        raise XtalforgeError("empty composition")
    elements, red, z0 = reduced(counts)
    zs = sorted({int(v) for v in (z or [z0])})
    if not zs or min(zs) < 1 or max(zs) > MAX_Z:
        raise XtalforgeError(f"formula units per primitive cell must be 1..{MAX_Z}, got {zs}")
    properties = properties or {}
    unknown = set(properties) - set(PROPERTIES)
    if unknown:
        raise XtalforgeError(f"unknown property {sorted(unknown)[0]!r} (choose from {', '.join(PROPERTIES)})")
    props = np.array([properties.get(p, np.nan) for p in PROPERTIES], dtype=float)
    model.eval()
    dev = next(model.parameters()).device

    def logits(zs_, groups_, letters_, states_):
        full = [[c * zz for c in red] for zz in zs_]
        seq = _rows(elements, red, props, zs_, groups_, letters_, states_, full)
        return model(ProposerBatch(seq, np.arange(len(zs_))).to(dev))

    # (Z, group) pairs
    start = [start_state([c * zz for c in red]) for zz in zs]
    zl, gl, _ = logits(zs, [1] * len(zs), [[] for _ in zs], start)
    z_lp = torch.log_softmax(zl, -1)
    g_lp = torch.log_softmax(gl, -1)
    pairs = []
    for i, zz in enumerate(zs):
        cell = [c * zz for c in red]
        order = torch.argsort(g_lp[i], descending=True).tolist()
        taken = 0
        for g in order:
            if g < 1 or not _fits(g, cell):
                continue
            pairs.append((float(z_lp[i, zz] + g_lp[i, g]), zz, g))
            taken += 1
            if taken >= groups_per_z:
                break
    # (the group token is a placeholder above: Z and group are predicted from the positions before it)
    live: list[tuple[float, int, int, list[int], Decoded]] = [
        (lp, zz, g, [], start_state([c * zz for c in red])) for lp, zz, g in sorted(pairs, reverse=True)[:beam]]
    done: list[Proposal] = []
    while live:
        _, _, ll = logits([b[1] for b in live], [b[2] for b in live], [b[3] for b in live], [b[4] for b in live])
        step = torch.log_softmax(ll[:, -1], -1)
        cand = []
        for i, (lp, *_) in enumerate(live):
            for w in torch.nonzero(torch.isfinite(step[i])).flatten().tolist():
                cand.append((lp + float(step[i, w]), i, w))
        cand.sort(reverse=True)
        nxt = []
        for lp, i, w in cand:
            if len(nxt) >= beam:
                break
            _, zz, g, letters, state = live[i]
            new = advance(state, w, [c * zz for c in red], g)
            orbits = letters + [w]
            if new.element >= len(elements):
                done.append(Proposal(g, tuple(_orbits(elements, red, zz, g, orbits)), zz, lp))
            else:
                nxt.append((lp, zz, g, orbits, new))
        if len(done) >= k and nxt and max(b[0] for b in nxt) < sorted(p.log_prob for p in done)[-k]:
            break  # no live answer can enter the top k any more (log-probabilities only fall)
        live = [b for b in nxt if len(b[3]) < model.cfg.max_len - len(elements) - len(PROPERTIES) - 4]
    done.sort(key=lambda p: -p.log_prob)
    return done[:k]


@torch.no_grad()
def answer_log_probs(model: SymmetryProposer, answers: list[tuple[int, tuple[tuple[int, int], ...]]],
                     properties: dict[str, float] | None = None) -> np.ndarray:
    """The proposer's log-probability of given answers (space group, orbits as (atomic number, Wyckoff index) in
    the primitive cell), scored as :func:`propose` ranks its own: log p(Z) + log p(group) + the letters' under the
    grammar. -inf for an answer outside the vocabulary."""
    props = np.array([(properties or {}).get(p, np.nan) for p in PROPERTIES], dtype=float)
    dev = next(model.parameters()).device
    model.eval()
    out = np.full(len(answers), -np.inf)
    for i, (g, orbits) in enumerate(answers):
        ordered = orbit_order(list(orbits))
        mult, _, _ = group_tables(g)
        counts: dict[int, int] = {}
        for el, w in ordered:
            counts[el] = counts.get(el, 0) + int(mult[w])
        elements, red, z = reduced(counts)
        full = [counts[e] for e in elements]
        if z > MAX_Z or max(full) > MAX_COUNT:
            continue
        letters = [w for _, w in ordered]
        state = start_state(full)
        for w in letters[:-1]:
            state = advance(state, w, full, g)
        seq = _rows(elements, red, props, [z], [g], [letters[:-1]], [state], [full], grammar=True)
        seq.letters[0, -1] = letters[-1]
        zl, gl, ll = model(ProposerBatch(seq, np.arange(1)).to(dev))
        lp = torch.log_softmax(ll[0], -1)[torch.arange(len(letters)), torch.as_tensor(letters)]
        out[i] = float(torch.log_softmax(zl[0], -1)[z] + torch.log_softmax(gl[0], -1)[g] + lp.sum())
    return out


def _orbits(elements: list[int], red: list[int], z: int, g: int, letters: list[int]) -> list[tuple[int, int]]:
    state, out = start_state([c * z for c in red]), []
    for w in letters:
        out.append((elements[state.element], w))
        state = advance(state, w, [c * z for c in red], g)
    return out

