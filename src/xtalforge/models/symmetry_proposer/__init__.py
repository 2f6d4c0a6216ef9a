"""The symmetry proposer: composition (+ target properties) -> ranked (Z, space group, Wyckoff positions)."""

from xtalforge.models.symmetry_proposer.model import DEFAULT_WEIGHTS, ProposerConfig, SymmetryProposer
from xtalforge.models.symmetry_proposer.propose import Proposal, propose
from xtalforge.models.symmetry_proposer.tokens import encode

__all__ = ["DEFAULT_WEIGHTS", "Proposal", "ProposerConfig", "SymmetryProposer", "encode", "propose"]
