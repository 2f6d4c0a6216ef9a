"""A learned re-ranker for template candidates: which substituted prototype is the target's structure?

The hand-made template score (summed substitution log-odds, log-sum-exp over a structure type's members) knows
how similar the elements are, but not which structure types a chemistry prefers (ionic vs covalent, radius ratios,
how much a template must be stretched, its symmetry). :func:`candidate_features` describes each candidate by such
chemistry, and :class:`TemplateRanker`, a small two-layer network trained listwise (softmax over
an entry's candidates) on leave-one-out val entries of the benchmarks (``bench/train_template_ranker.py``), scores
them. Inference is plain numpy: the template path never imports torch.

Known structures of the target's own composition (templates whose every site keeps its element) and substituted
templates keep the places the hand-made score gives each class: the ranker only re-orders candidates within each of
the two classes (:meth:`TemplateRanker.order`) and is never trained on a comparison between them. In a benchmark the
answer is by construction another entry than any library structure of its composition (a polymorph, or Perov-5's
cation-swapped twin), so a ranker allowed to compare the classes learns to demote known structures: bookkeeping of
how the data were split, not chemistry, and wrong for a user whose composition is known.

No feature is computed over the whole library (how many entries share a prototype, energy above the lowest entry of
a chemical system, the fitted volume model): in leave-one-out training those have seen the held-out target, which a
test target never is, so such features help on val and not on test (the card tells the story).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from xtalforge.crystal import atomic_save_npz
from xtalforge.errors import XtalforgeError
from xtalforge.templates.chemistry import covalent_volumes, element_descriptors
from xtalforge.templates.scoring import RankWeights, StructureTypes, TemplatePool

#: The shipped ranker (see template_ranker.md beside it).
SHIPPED_RANKER = Path(__file__).resolve().parent.parent / "weights" / "template_ranker.npz"

#: Temperatures (nats) of the member votes among the features.
KERNEL_WIDTHS = (0.25, 1.0, 2.0, 4.0)
class TemplateScorer(Protocol):
    """What :func:`candidate_features` reads of a :class:`~xtalforge.templates.csp.TemplateCSP`."""

    library: object  # the TemplateLibrary the pools index
    weights: RankWeights
    _substitution: np.ndarray  # (E, E) substitution log-odds table


#: Names of the columns of :func:`candidate_features`, in order.
FEATURES = (
    # the hand-made score and where it puts the candidate
    "type_score", "best_member_score", "gap_to_best_type", "log_rank", "log_members",
    # how far the substitution moves the template's chemistry (per atom)
    "substitution_per_slot", "worst_slot_substitution", "identity_fraction", "electronegativity_shift",
    "electronegativity_order_kept", "radius_shift", "mendeleev_shift", "log_volume_stretch",
    # the template itself
    "spacegroup", "cubic", "hexagonal", "tetragonal", "orthorhombic", "low_symmetry", "penalty", "supercell",
    # the target (the same for all its candidates: lets the network condition on the kind of compound)
    "n_species", "log_atoms", "electronegativity_range", "radius_ratio", "mean_mendeleev",
    # the type's members as a kernel vote at several widths (the hand-made score is one width), each relative to
    # the best type of the target; the gap from the best member to the second; the best atom-weighted substitution
    *(f"kernel_gap_t{t:g}" for t in KERNEL_WIDTHS), "second_member_gap", "atom_weighted_gap",
    # the template's first-shell contacts with the target's elements on them: an isotropic volume rescale cannot
    # serve a substitution that needs some bonds longer and others shorter, or puts like atoms side by side
    "contact_stretch_spread", "contact_tightness", "contact_tightness_change", "homo_contact_change",
    "contact_ionicity_shift",
)


IDENTITY = FEATURES.index("identity_fraction")
CONTACTS = FEATURES.index("contact_stretch_spread")
#: Neighbours within this factor of an atom's nearest-neighbour distance form its first shell.
SHELL = 1.2
N_SPECIES = FEATURES.index("n_species")


def is_identity(x: np.ndarray) -> np.ndarray:
    """(T,) True for candidates whose template has the target's composition (every slot keeps its element)."""
    return np.asarray(x)[..., IDENTITY] > 1.0 - 1e-9


def _crystal_system(spacegroup: np.ndarray) -> np.ndarray:
    """(N, 5) one-hot: cubic, hexagonal + trigonal, tetragonal, orthorhombic, monoclinic + triclinic."""
    sg = np.asarray(spacegroup)
    return np.stack([sg >= 195, (sg >= 143) & (sg < 195), (sg >= 75) & (sg < 143), (sg >= 16) & (sg < 75),
                     sg < 16], axis=1).astype(np.float64)


def candidate_features(
    method: TemplateScorer, pools: list[TemplatePool], types: StructureTypes, type_ids: np.ndarray,
    numbers: np.ndarray,
) -> np.ndarray:
    """(T, len(FEATURES)) features of the structure types ``type_ids`` (each described by its best member).

    Args:
        method: the TemplateCSP whose library and tables built ``pools``.
        pools, types: as returned by ``method._pools`` / ``method._structure_types``.
        type_ids: (T,) structure types, in the order of ``types.ranked`` (best first).
        numbers: (N,) atomic numbers of the target cell.
    """
    d = element_descriptors()
    en, radius, mend = d["electronegativity"], d["covalent_radius"], d["mendeleev"]
    # covalent-sphere volumes, not the volume model fitted on the library: in leave-one-out training that fit has
    # seen the held-out target, which a test target never is
    lib, volumes, sub_table = method.library, covalent_volumes(), method._substitution
    type_ids = np.asarray(type_ids, np.int64)
    t = len(type_ids)
    out = np.zeros((t, len(FEATURES)))
    if t == 0:
        return out
    members = np.bincount(types.type_of, minlength=len(types.score))
    pair_score = np.concatenate([p.score(method.weights) for p in pools])
    rep = types.representative[type_ids]
    origin = types.origin[rep]
    position = np.empty(len(types.ranked), np.int64)
    position[types.ranked] = np.arange(len(types.ranked))
    top = types.score[types.ranked[0]]
    out[:, 0] = types.score[type_ids]
    out[:, 1] = pair_score[rep]
    out[:, 2] = types.score[type_ids] - top
    out[:, 3] = np.log1p(position[type_ids])
    out[:, 4] = np.log(members[type_ids])
    for k in np.unique(origin[:, 0]):  # one vectorised block per template group (they differ in slot count)
        rows = np.nonzero(origin[:, 0] == k)[0]
        pool, j = pools[int(k)], origin[rows, 1]
        e, s = pool.elements[j], pool.slots[j]  # (m, S) target / template element of each slot
        w = pool.counts / pool.counts.sum()  # (S,) share of the atoms on each slot
        template = pool.template[j]
        slot_sub = sub_table[e, s]
        out[rows, 5] = slot_sub.mean(axis=1)
        out[rows, 6] = slot_sub.min(axis=1)
        out[rows, 7] = ((e == s) * w).sum(axis=1)
        out[rows, 8] = (np.abs(en[e] - en[s]) * w).sum(axis=1)
        if e.shape[1] > 1:
            a, b = np.triu_indices(e.shape[1], 1)
            ds = np.sign(en[s[:, a]] - en[s[:, b]])
            dt = np.sign(en[e[:, a]] - en[e[:, b]])
            ordered = ds != 0
            agree = ((ds == dt) & ordered).sum(axis=1)
            out[rows, 9] = np.where(ordered.sum(axis=1) > 0, agree / np.maximum(ordered.sum(axis=1), 1), 1.0)
        else:
            out[rows, 9] = 1.0
        out[rows, 10] = (np.abs(radius[e] - radius[s]) / radius[s] * w).sum(axis=1)
        out[rows, 11] = (np.abs(mend[e] - mend[s]) * w).sum(axis=1) / 100.0
        out[rows, 12] = np.abs(np.log((volumes[e] * w).sum(axis=1) / (volumes[s] * w).sum(axis=1)))
        out[rows, 13] = lib.spacegroup[template] / 230.0
        out[rows, 14:19] = _crystal_system(lib.spacegroup[template])
        out[rows, 19] = pool.penalty
        out[rows, 20] = float(pool.multiplier > 1)
    zs, counts = np.unique(np.asarray(numbers), return_counts=True)
    out[:, 21] = len(zs)
    out[:, 22] = np.log(counts.sum())
    out[:, 23] = en[zs].max() - en[zs].min()
    out[:, 24] = radius[zs].min() / radius[zs].max()
    out[:, 25] = (mend[zs] * counts).sum() / counts.sum() / 100.0
    n_types = len(types.score)
    col = 26
    for width in KERNEL_WIDTHS:
        vote = type_logsumexp(pair_score, types.type_of, n_types, width)
        out[:, col] = vote[type_ids] - vote.max()
        col += 1
    # second-best member: the best member masked out
    masked = pair_score.copy()
    masked[types.representative] = -np.inf
    second = type_max(masked, types.type_of, n_types)
    out[:, col] = np.minimum(pair_score[rep] - second[type_ids], 10.0)  # a lone member counts as a gap of 10
    weighted = np.concatenate([(sub_table[p.elements, p.slots] * (p.counts / p.counts.sum())).sum(axis=1)
                               - p.penalty for p in pools])
    best_weighted = type_max(weighted, types.type_of, n_types)
    out[:, col + 1] = best_weighted[type_ids] - best_weighted.max()
    for n, (k, j) in enumerate(origin):
        pool = pools[int(k)]
        template = int(pool.template[j])
        atoms = lib.atoms_of(template)
        out[n, CONTACTS:] = contact_features(method.template_contacts(template), atoms, pool.target_atoms(j, atoms))
    return out


def first_shell_contacts(lattice: np.ndarray, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First-shell contacts of a periodic cell: (C, 2) atom indices and (C,) distances in Angstrom.

    Atom ``i``'s shell is every periodic image of every atom within ``SHELL`` times its nearest-neighbour distance
    (images of the 27 cells around the home cell; ``lattice`` (3, 3) rows are the lattice vectors)."""
    shifts = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    delta = (frac[None, :, None, :] - frac[:, None, None, :] + shifts[None, None]) @ lattice  # (N, N, 27, 3)
    d = np.linalg.norm(delta, axis=-1)
    d[d < 1e-6] = np.inf  # an atom is not its own neighbour
    nearest = d.min(axis=(1, 2))
    shell = d <= SHELL * nearest[:, None, None]
    i, j, _ = np.nonzero(shell)
    return np.stack([i, j], axis=1), d[shell]


def contact_features(contacts: tuple[np.ndarray, np.ndarray], template_atoms: np.ndarray,
                     new_atoms: np.ndarray) -> np.ndarray:
    """(5,) contact features of one substitution (see :data:`FEATURES`).

    Args:
        contacts: :func:`first_shell_contacts` of the template.
        template_atoms, new_atoms: (N,) atomic numbers of the template's atoms and the target's elements on them.
    """
    pairs, dist = contacts
    if len(pairs) == 0:
        return np.zeros(5)
    d = element_descriptors()
    radius, en, volumes = d["covalent_radius"], d["electronegativity"], covalent_volumes()
    s, e = template_atoms[pairs], new_atoms[pairs]  # (C, 2) template / target element at each end
    bond_s, bond_e = radius[s].sum(axis=1), radius[e].sum(axis=1)
    scale = (volumes[new_atoms].sum() / volumes[template_atoms].sum()) ** (1.0 / 3.0)  # covalent, not fitted
    tight_e = np.log((dist * scale / bond_e).min())
    tight_s = np.log((dist / bond_s).min())
    return np.array([
        np.log(bond_e / bond_s).std(),
        tight_e,
        tight_e - tight_s,
        (e[:, 0] == e[:, 1]).mean() - (s[:, 0] == s[:, 1]).mean(),
        np.abs(en[e[:, 0]] - en[e[:, 1]]).mean() - np.abs(en[s[:, 0]] - en[s[:, 1]]).mean(),
    ])


def type_max(values: np.ndarray, type_of: np.ndarray, n_types: int) -> np.ndarray:
    """(n_types,) largest of each type's member values (-inf for a type without members)."""
    best = np.full(n_types, -np.inf)
    np.maximum.at(best, type_of, values)
    return best


def type_logsumexp(score: np.ndarray, type_of: np.ndarray, n_types: int, width: float) -> np.ndarray:
    """(n_types,) ``width * logsumexp(score / width)`` over each type's members."""
    best = type_max(score, type_of, n_types)
    total = np.bincount(type_of, weights=np.exp((score - best[type_of]) / width), minlength=n_types)
    return best + width * np.log(total)


@dataclass
class TemplateRanker:
    """An ensemble of two-layer networks, ``score = mean_m w2_m . tanh(W1_m (x - mean) / std + b1_m)``: higher is
    likelier the target's structure. The members differ only in their random initialisation and batch order;
    averaging them ranks better than one network (see the card, ``weights/template_ranker.md``).

    Attributes:
        mean, std: (F,) feature standardisation. w1: (M, F, H). b1: (M, H). w2: (M, H) for M members
            (a single network may be given as (F, H), (H,), (H,)).
        features: the feature names it was trained on (must equal :data:`FEATURES`).
        info: how it was trained (free text / JSON), saved with the weights.
    """

    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    features: tuple[str, ...] = FEATURES
    info: str = ""

    def __post_init__(self) -> None:
        self.w1 = np.asarray(self.w1, np.float64).reshape(-1, *np.shape(self.w1)[-2:])
        self.b1 = np.asarray(self.b1, np.float64).reshape(len(self.w1), -1)
        self.w2 = np.asarray(self.w2, np.float64).reshape(len(self.w1), -1)

    @classmethod
    def ensemble(cls, members: list[TemplateRanker], info: str = "") -> TemplateRanker:
        """One ranker averaging the scores of ``members`` (which must share their feature standardisation)."""
        first = members[0]
        if any(not np.allclose(m.mean, first.mean) or not np.allclose(m.std, first.std) for m in members):
            raise XtalforgeError("ensemble members must share their feature standardisation")
        return cls(first.mean, first.std, np.concatenate([m.w1 for m in members]),
                   np.concatenate([m.b1 for m in members]), np.concatenate([m.w2 for m in members]),
                   first.features, info)

    @property
    def digest(self) -> str:
        """Short hash of the weights, recorded in results so a score can be traced to the file that produced it."""
        h = hashlib.sha256()
        for a in (self.mean, self.std, self.w1, self.b1, self.w2):
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
        return h.hexdigest()[:12]

    def score(self, x: np.ndarray) -> np.ndarray:
        """(..., T) network scores of a (..., T, F) feature array."""
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        h = np.tanh(np.einsum("...f,mfh->...mh", z, self.w1) + self.b1)  # (..., T, M, H)
        return (h * self.w2).sum(-1).mean(-1)

    def order(self, x: np.ndarray) -> np.ndarray:
        """(T,) new order of T candidates given in hand-made order by their (T, F) features.

        Known structures of the target's composition keep the positions the hand-made order gives them, and so do
        substituted candidates; within each class the network's score decides. Elemental targets keep the
        hand-made order: there is no substitution to judge, and the ranker measured worse there (Carbon-24 val)."""
        out = np.arange(len(x))
        if len(x) == 0 or x[0, N_SPECIES] < 2:
            return out
        s = self.score(x)
        for members in (is_identity(x), ~is_identity(x)):
            pos = np.nonzero(members)[0]
            out[pos] = pos[np.argsort(-s[pos], kind="stable")]
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` atomically (temporary name in the same folder, then rename)."""
        return atomic_save_npz(path, mean=self.mean, std=self.std, w1=self.w1, b1=self.b1, w2=self.w2,
                               features=np.array(self.features), info=np.array(self.info))

    @classmethod
    def load(cls, path: str | os.PathLike = SHIPPED_RANKER) -> TemplateRanker:
        path = Path(path)
        if not path.is_file():
            raise XtalforgeError(f"template ranker weights not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            features = tuple(str(f) for f in z["features"])
            if features != FEATURES:
                raise XtalforgeError(f"{path}: ranker was trained on other features ({len(features)} columns); "
                                     "retrain it with bench/train_template_ranker.py")
            return cls(z["mean"], z["std"], z["w1"], z["b1"], z["w2"], features, str(z["info"]))
