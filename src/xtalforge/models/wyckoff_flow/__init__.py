"""The Wyckoff flow: symmetry-constrained, property-conditioned generation (seed 003's stage 2, DiffCSP++-style).

The network and flow (:mod:`.model`), its sampler (:mod:`.sampler`), and the CSP method (:mod:`.method`,
registered as ``symmetry``).

>>> from xtalforge.models.wyckoff_flow import WyckoffFlow
>>> model = WyckoffFlow.load()     # shipped weights
"""

from xtalforge.models.wyckoff_flow.method import SymmetryMethod
from xtalforge.models.wyckoff_flow.model import DEFAULT_WEIGHTS, WyckoffFlow
from xtalforge.models.wyckoff_flow.sampler import sample_wyckoff_flow

__all__ = ["DEFAULT_WEIGHTS", "SymmetryMethod", "WyckoffFlow", "sample_wyckoff_flow"]
