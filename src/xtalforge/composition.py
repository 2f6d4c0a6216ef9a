"""Parsing a formula into a target composition, and enumerating formula units Z.

``Ga4Te4`` names an exact cell (8 atoms). ``GaTe`` or ``CsV3Sb5`` is a reduced formula: the number of formula units
Z in the cell is unknown, and :meth:`Target.cells` enumerates Z = 1, 2, ... up to an atom limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import reduce
from math import gcd

from xtalforge.errors import AtomLimitError, FormulaError

_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)|(\()|(\))(\d*)")
_ALLOWED = re.compile(r"^[A-Za-z0-9().\s]+$")


def _element_numbers() -> dict[str, int]:
    from pymatgen.core.periodic_table import Element

    return {el.symbol: el.Z for el in Element if el.Z <= 103}


_SYMBOL_TO_Z: dict[str, int] | None = None


def symbol_to_number(symbol: str) -> int:
    """Atomic number of an element symbol (raises :class:`FormulaError` for an unknown one)."""
    global _SYMBOL_TO_Z
    if _SYMBOL_TO_Z is None:
        _SYMBOL_TO_Z = _element_numbers()
    if symbol not in _SYMBOL_TO_Z:
        raise FormulaError(f"unknown element '{symbol}'")
    return _SYMBOL_TO_Z[symbol]


def parse_formula(formula: str) -> dict[str, int]:
    """Element counts of a formula, in order of first appearance; parentheses are allowed (``Ca(OH)2``).

    Raises :class:`FormulaError` for an empty or malformed formula, an unknown element, or fractional counts.
    """
    if formula is None or not str(formula).strip():
        raise FormulaError("empty formula")
    text = str(formula).replace(" ", "")
    if not _ALLOWED.match(text):
        raise FormulaError(f"malformed formula '{formula}': only element symbols, counts and parentheses are allowed")
    stack: list[dict[str, int]] = [{}]
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FormulaError(f"malformed formula '{formula}' at '{text[pos:]}'")
        pos = m.end()
        if m.group(1):
            symbol_to_number(m.group(1))
            count = _count(m.group(2), formula)
            stack[-1][m.group(1)] = stack[-1].get(m.group(1), 0) + count
        elif m.group(3):
            stack.append({})
        else:
            if len(stack) == 1:
                raise FormulaError(f"malformed formula '{formula}': unbalanced ')'")
            group = stack.pop()
            mult = _count(m.group(5), formula)
            for el, n in group.items():
                stack[-1][el] = stack[-1].get(el, 0) + n * mult
    if len(stack) != 1:
        raise FormulaError(f"malformed formula '{formula}': unbalanced '('")
    counts = {el: n for el, n in stack[0].items() if n > 0}
    if not counts:
        raise FormulaError(f"formula '{formula}' has no atoms")
    return counts


def _count(text: str, formula: str) -> int:
    if not text:
        return 1
    try:
        value = float(text)
    except ValueError:
        raise FormulaError(f"malformed count '{text}' in formula '{formula}'") from None
    if value != int(value):
        raise FormulaError(f"fractional count {text} in '{formula}': disordered compositions are not supported")
    return int(value)


@dataclass(frozen=True)
class Target:
    """What to predict: a composition, either an exact cell or a reduced formula with unknown Z.

    Attributes:
        counts: element -> count in the formula as written (the reduced formula when ``exact`` is False).
        exact: True when the formula fixes the atoms of the cell (written counts share a factor > 1, or Z was given).
    """

    counts: dict[str, int]
    exact: bool

    @classmethod
    def parse(cls, formula: str, z: int | None = None) -> Target:
        """``Ga4Te4`` -> exact 8-atom cell; ``GaTe`` -> reduced (Z enumerated); ``z`` fixes Z for a reduced formula."""
        counts = parse_formula(formula)
        factor = reduce(gcd, counts.values())
        reduced = {el: n // factor for el, n in counts.items()}
        if z is not None:
            if int(z) < 1:
                raise FormulaError(f"Z must be a positive integer, got {z}")
            return cls({el: n * int(z) for el, n in reduced.items()}, exact=True)
        if factor > 1:
            return cls(counts, exact=True)
        return cls(reduced, exact=False)

    @property
    def reduced_counts(self) -> dict[str, int]:
        factor = reduce(gcd, self.counts.values())
        return {el: n // factor for el, n in self.counts.items()}

    @property
    def atoms_per_formula_unit(self) -> int:
        return sum(self.reduced_counts.values())

    def cells(self, max_atoms: int) -> list[list[int]]:
        """Atomic-number lists of the candidate cells: the exact cell, or one per Z with at most ``max_atoms`` atoms."""
        if self.exact:
            numbers = _numbers(self.counts)
            if len(numbers) > max_atoms:
                raise AtomLimitError(f"{self.formula} has {len(numbers)} atoms; the limit is {max_atoms}")
            return [numbers]
        per_fu = self.atoms_per_formula_unit
        if per_fu > max_atoms:
            raise AtomLimitError(f"{self.formula} has {per_fu} atoms per formula unit; the limit is {max_atoms}")
        return [_numbers({el: n * z for el, n in self.counts.items()}) for z in range(1, max_atoms // per_fu + 1)]

    @property
    def formula(self) -> str:
        return "".join(f"{el}{n if n > 1 else ''}" for el, n in self.counts.items())


def _numbers(counts: dict[str, int]) -> list[int]:
    return [symbol_to_number(el) for el, n in counts.items() for _ in range(n)]


def anonymous_formula(numbers: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Exact-count anonymised formula as sorted counts, e.g. Ga4Te4 -> (4, 4), CsV3Sb5 -> (1, 3, 5)."""
    from collections import Counter

    return tuple(sorted(Counter(int(n) for n in numbers).values()))
