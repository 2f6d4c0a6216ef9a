"""xtalforge: crystal structure prediction and generation on a laptop CPU.

>>> import xtalforge
>>> candidates = xtalforge.predict("CsV3Sb5", n=5)          # ranked candidates, each holding a pymatgen Structure
>>> candidates[0].structure.to(filename="CsV3Sb5.cif")
"""

from xtalforge.crystal import Crystal
from xtalforge.errors import AtomLimitError, FormulaError, ProtocolError, StructureError, XtalforgeError

__version__ = "0.1.0"


def predict(formula: str, n: int = 20, method: str = "auto", **kwargs):
    """Predict ``n`` ranked candidate structures for ``formula``; see :func:`xtalforge.prediction.predict`."""
    from xtalforge.prediction import predict as _predict

    return _predict(formula, n=n, method=method, **kwargs)


__all__ = [
    "AtomLimitError",
    "Crystal",
    "FormulaError",
    "ProtocolError",
    "StructureError",
    "XtalforgeError",
    "__version__",
    "predict",
]
