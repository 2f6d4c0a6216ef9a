"""Errors that xtalforge raises for bad input.

Every error a user can trigger derives from :class:`XtalforgeError` (a ``ValueError``), so the CLI can print one
line naming the problem and exit non-zero instead of showing a traceback from deep inside a library.
"""


class XtalforgeError(ValueError):
    """Base class of all user-facing errors."""


class FormulaError(XtalforgeError):
    """An empty or malformed formula, or an unknown element."""


class StructureError(XtalforgeError):
    """A malformed structure: unreadable CIF, NaN or degenerate lattice, mismatched array shapes."""


class AtomLimitError(XtalforgeError):
    """A composition with more atoms than the model or method supports."""


class ProtocolError(XtalforgeError):
    """A training or template set that would leak the test split being reported."""
