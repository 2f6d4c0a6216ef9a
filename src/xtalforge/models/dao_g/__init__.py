"""DAO-G, the generator of the DAO pair (papers 000 / 001): the network and noise processes (:mod:`.model`), its
flow-matching variant (:mod:`.flow`), and the CSP method that samples it (:mod:`.method`, registered as ``dao-g``).

>>> from xtalforge.models.dao_g import DAOG
>>> model = DAOG.load("mp20_flow")     # shipped weights; a flow checkpoint loads as DAOGFlow
"""

from xtalforge.models.dao_g.flow import DAOGFlow
from xtalforge.models.dao_g.method import (
    DIFFUSION_WEIGHTS,
    LARGE_CELL_WEIGHTS,
    SAMPLER_DEFAULTS,
    DAOGMethod,
    TemplateRefine,
    default_weights,
)
from xtalforge.models.dao_g.model import DAOG, DEFAULT_WEIGHTS, reduced_key, resolve_weights, z_prior

__all__ = ["DAOG", "DAOGFlow", "DAOGMethod", "DEFAULT_WEIGHTS", "DIFFUSION_WEIGHTS", "LARGE_CELL_WEIGHTS",
           "SAMPLER_DEFAULTS", "TemplateRefine", "default_weights", "reduced_key", "resolve_weights", "z_prior"]
