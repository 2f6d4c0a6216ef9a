"""Relaxation and energy evaluation with a machine-learned interatomic potential (CHGNet, weights ship in its wheel).

>>> from xtalforge.relax import relax, chgnet_energies
>>> result = relax(crystal, fmax=0.1, steps=200)      # FIRE + FrechetCellFilter
>>> result.crystal.properties["energy_per_atom"]      # eV/atom
>>> chgnet_energies([c1, c2])                          # (2,) eV/atom, batched
"""

from xtalforge.relax.chgnet import RelaxResult, chgnet_energies, load_chgnet, relax

__all__ = ["RelaxResult", "chgnet_energies", "load_chgnet", "relax"]
