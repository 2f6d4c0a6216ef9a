"""Template-based crystal structure prediction: known crystals with the target's elements substituted in.

>>> from xtalforge.composition import Target
>>> from xtalforge.templates import TemplateCSP
>>> method = TemplateCSP()                      # the shipped library
>>> candidates = method.predict_target(Target.parse("GaTe"), n=5)
"""

from xtalforge.templates.csp import RankWeights, TemplateCSP, load_shipped_library
from xtalforge.templates.library import TemplateLibrary, anonymous_key, benchmark_library, reduced_key
from xtalforge.templates.redecorate import RedecoratedTemplates

__all__ = [
    "RankWeights",
    "RedecoratedTemplates",
    "TemplateCSP",
    "TemplateLibrary",
    "anonymous_key",
    "benchmark_library",
    "load_shipped_library",
    "reduced_key",
]
