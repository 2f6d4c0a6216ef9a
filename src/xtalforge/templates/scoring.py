"""How template candidates are scored: the weights of the hand-made score, the scored (template, mapping) pools of one
template group, and their grouping into structure types. Shared by :mod:`~xtalforge.templates.csp` (which builds them)
and :mod:`~xtalforge.templates.ranker` (which describes them by features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankWeights:
    """How a candidate's log-score is put together.

    Defaults come from leave-one-out on the val splits (bench/archive/tune_template_weights.py); a stability penalty
    made every benchmark worse, so it is off by default.

    Attributes:
        substitution: weight of the summed substitution log-odds of the slots.
        stability: penalty per eV/atom that the template lies above the most stable entry of its chemical system.
        temperature: the group score is ``temperature * logsumexp(member scores / temperature)``; small values make
            the best single template decide, large ones favour structure types many templates share.
        supercell: penalty for a template that must be repeated to reach the target's atom count.
        merge: penalty per template site set merged into another one.
    """

    substitution: float = 1.0
    stability: float = 0.0
    temperature: float = 0.5
    supercell: float = 3.0
    merge: float = 4.0


@dataclass
class TemplatePool:
    """(template, mapping) pairs of one template group, with the features their score is made of."""

    template: np.ndarray  # (P,) library rows
    elements: np.ndarray  # (P, S) target element on each template slot
    slots: np.ndarray  # (P, S) template element of each slot
    substitution: np.ndarray  # (P,) substitution log-odds summed over slots
    stability: np.ndarray  # (P,) template's eV/atom above the most stable entry of its system
    penalty: float  # supercell / merge penalty of the group
    multiplier: int  # template cells per target cell
    counts: np.ndarray  # (S,) atoms on each slot in the target cell

    def score(self, w: RankWeights) -> np.ndarray:
        """(P,) log-score of each pair."""
        return w.substitution * self.substitution - w.stability * self.stability - self.penalty

    def target_atoms(self, j: int, template_atoms: np.ndarray) -> np.ndarray:
        """(N,) target element of each template atom under mapping ``j`` (``template_atoms``: (N,) its elements)."""
        slot_of_atom = np.argmax(template_atoms[:, None] == self.slots[j][None, :], axis=1)
        return self.elements[j][slot_of_atom]

    def take(self, keep: np.ndarray) -> TemplatePool:
        return TemplatePool(self.template[keep], self.elements[keep], self.slots[keep], self.substitution[keep],
                     self.stability[keep], self.penalty, self.multiplier, self.counts)


@dataclass
class StructureTypes:
    """Candidates grouped into structure types (one prototype with the same target element on each site set).

    Attributes:
        origin: (P, 2) pool index and row of every pair.
        type_of: (P,) structure type of every pair.
        score: (T,) ``temperature * logsumexp(member scores / temperature)`` (the learned ranker's score for the
            types it re-ranked, when one is used).
        representative: (T,) best-scoring pair of each type.
        ranked: (T,) types, best first.
        hand_score: (T,) the hand-made score (equal to ``score`` without a learned ranker).
    """

    origin: np.ndarray
    type_of: np.ndarray
    score: np.ndarray
    representative: np.ndarray
    ranked: np.ndarray
    hand_score: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.hand_score is None:
            self.hand_score = self.score
