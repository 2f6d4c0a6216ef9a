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

_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)|(\()|(\))(\d*\.?\d*)", re.ASCII)
# ASCII only: str.isdigit and \d accept other scripts' digits, which int() would silently convert
_ALLOWED = re.compile(r"^[A-Za-z0-9().]+$", re.ASCII)
_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")
_HYDRATE = re.compile(r"\.\d*\(?H2O")
#: Heaviest element a formula may name (Lr); heavier ones have no data in the element tables the models use.
MAX_Z = 103
#: Largest count written in a formula; far above any atom limit, it keeps messages readable and ints small.
MAX_COUNT = 10**6


def _element_numbers() -> dict[str, int]:
    from pymatgen.core.periodic_table import Element

    return {el.symbol: el.Z for el in Element}


_SYMBOL_TO_Z: dict[str, int] | None = None


def symbol_to_number(symbol: str) -> int:
    """Atomic number of an element symbol (raises :class:`FormulaError` for an unknown or unsupported one)."""
    global _SYMBOL_TO_Z
    if _SYMBOL_TO_Z is None:
        _SYMBOL_TO_Z = _element_numbers()
    if symbol not in _SYMBOL_TO_Z:
        raise FormulaError(f"unknown element '{shown(symbol)}'")
    z = _SYMBOL_TO_Z[symbol]
    if z > MAX_Z:
        raise FormulaError(f"unsupported element '{symbol}' (Z = {z}): elements up to Lr (Z = {MAX_Z}) are supported")
    return z


def shown(text: str, limit: int = 60) -> str:
    """``text`` as it can appear inside a one-line message: control and invisible characters escaped, and cut to
    ``limit`` characters (a formula is echoed in errors, which must stay one line)."""
    text = str(text)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_formula(formula: str) -> dict[str, int]:
    """Element counts of a formula, in order of first appearance; parentheses are allowed (``Ca(OH)2``), ASCII
    whitespace is ignored.

    Raises :class:`FormulaError` for an empty or malformed formula, an unknown element, zero, fractional or huge
    counts.
    """
    if formula is None or not str(formula).strip():
        raise FormulaError("empty formula")
    text = _WHITESPACE.sub("", str(formula))
    if not _ALLOWED.match(text):
        raise FormulaError(f"malformed formula '{shown(formula)}': only element symbols, counts and parentheses are "
                           "allowed")
    stack: list[dict[str, int]] = [{}]
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            hint = " (element symbols start with a capital letter)" if text[pos].islower() else ""
            raise FormulaError(f"malformed formula '{shown(formula)}' at '{shown(text[pos:], 20)}'{hint}")
        pos = m.end()
        if m.group(1):
            symbol_to_number(m.group(1))
            count = _count(m.group(2), formula)
            stack[-1][m.group(1)] = stack[-1].get(m.group(1), 0) + count
        elif m.group(3):
            stack.append({})
        else:
            if len(stack) == 1:
                raise FormulaError(f"malformed formula '{shown(formula)}': unbalanced ')'")
            group = stack.pop()
            if not group:
                raise FormulaError(f"malformed formula '{shown(formula)}': empty parentheses")
            mult = _count(m.group(5), formula)
            for el, n in group.items():
                stack[-1][el] = stack[-1].get(el, 0) + n * mult
    if len(stack) != 1:
        raise FormulaError(f"malformed formula '{shown(formula)}': unbalanced '('")
    counts = stack[0]
    if not counts:
        raise FormulaError(f"formula '{shown(formula)}' has no atoms")
    return counts


def _count(text: str, formula: str) -> int:
    """A written count: a whole number from 1 to MAX_COUNT (``2.0`` is 2; ``0`` would silently drop an element)."""
    if not text:
        return 1
    whole, _, fraction = text.partition(".")
    if not whole.strip("0") and not fraction.strip("0"):
        if not whole and not fraction:
            raise FormulaError(f"malformed count '{shown(text, 20)}' in formula '{shown(formula)}'")
        raise FormulaError(f"zero count '{shown(text, 20)}' in formula '{shown(formula)}': leave the element out "
                           "instead")
    if fraction.strip("0"):
        # CuSO4.5H2O reads as Cu S O4.5 H2 O: a hydrate, not a disordered site
        hint = " (write a hydrate as one formula: CuSO4.5H2O is CuSO9H10)" if _HYDRATE.search(formula) else ""
        raise FormulaError(f"fractional count {shown(text, 20)} in '{shown(formula)}': disordered compositions are not "
                           f"supported{hint}")
    digits = whole.lstrip("0")
    if len(digits) > len(str(MAX_COUNT)) or int(digits) > MAX_COUNT:
        raise FormulaError(f"count {shown(text, 20)} in '{shown(formula)}' is too large (at most {MAX_COUNT})")
    return int(digits)


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
            total = sum(self.counts.values())  # before building the list: (H1000000)1000000 is 10^12 atoms
            if total > max_atoms:
                raise AtomLimitError(f"{shown(self.formula)} has {total} atoms; the limit is {max_atoms}")
            return [_numbers(self.counts)]
        per_fu = self.atoms_per_formula_unit
        if per_fu > max_atoms:
            raise AtomLimitError(f"{shown(self.formula)} has {per_fu} atoms per formula unit; the limit is {max_atoms}")
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
