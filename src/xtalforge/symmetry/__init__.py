"""Space groups and Wyckoff positions: the representation of the symmetry-constrained generator."""

from xtalforge.symmetry.lattice import crystal_system, gram_to_k, k_to_lattice
from xtalforge.symmetry.wyckoff import (
    SYMPREC,
    GroupInfo,
    Orbit,
    SiteTable,
    SymmetricCrystal,
    assignments,
    check_assignment,
    check_group,
    from_structure,
    group_info,
    has_group,
    parse_wyckoff,
    site_table,
)

__all__ = ["SYMPREC", "GroupInfo", "Orbit", "SiteTable", "SymmetricCrystal", "assignments", "check_assignment",
           "check_group", "crystal_system", "from_structure", "gram_to_k", "group_info", "has_group", "k_to_lattice",
           "parse_wyckoff", "site_table"]
