"""Seeded fuzz inputs for the command line, and a checker of what the CLI does with each.

One implementation for ``tests/test_fuzz_inputs.py`` (a fixed-size run) and ``bench/fuzz_inputs.py`` (a larger one
with a table of counts). Every input must end in exit 0 with a result, or exit 2 with exactly one stderr line
``xtalforge: error: ...`` and no output left behind; anything else (another exception, a traceback, a second line,
a non-finite result, a half-written output) is recorded as a failure.

Formulas go through ``xtalforge predict --method template --n 3``; a formula that parses like an earlier one reuses
that outcome (the template method is deterministic), so most of the cost is parsing. Files go through ``xtalforge
relax --steps 2`` (deduplicated by parsed structure) and ``xtalforge property --property formation_energy``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import re
import shutil
import signal
import string
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------------------ formulas

#: Formulas of real compounds (each parses and has templates or at least a composition to work with).
REAL_FORMULAS = (
    "NaCl", "SrTiO3", "GaTe", "Ga4Te4", "CsV3Sb5", "Si", "C", "Fe2O3", "MgO", "TiO2", "ZnS", "CaF2", "BaTiO3",
    "LiFePO4", "Al2O3", "KCl", "CsCl", "GaAs", "CdSe", "SiO2", "Cu", "Fe", "ZnO", "LiCoO2", "MoS2", "Bi2Te3",
    "CaTiO3", "KMgF3", "NaNbO3", "Li2O", "GaN", "BN", "SiC", "H2O", "CuSO4", "Ca(OH)2", "Mg(OH)2", "(NH4)Cl",
    "La2CuO4", "YBa2Cu3O7", "MgB2", "Nb3Sn", "CoSb3", "PbTe", "SnO2", "CeO2", "Cu2O", "FeS2", "NiO", "VO2",
)
#: Elements the random valid formulas are drawn from (the parser knows Z <= 103).
SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir "
    "Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr"
).split()
UNKNOWN = ("Xx", "Qq", "Zz", "J", "Aa", "Og", "Ts", "Uue", "D", "T", "Nn", "Ee")
UNICODE = ("Na₂O", "H₂O", "NaCl²", "ＮａＣｌ", "Fe2O3🙂", "Na\u200bCl", "Na\u00a0Cl", "Nа Cl", "Fe\u0301O",
           "\u202eNaCl", "Fe٣O", "ΝaCl", "NaCl\u2028", "Na\u3000Cl", "Ç", "日本", "\ufeffNaCl", "Na\x00Cl",
           "Na\x1bCl", "Na\x7fCl")
CHARGES = ("Fe2+", "O2-", "Fe+3", "[Fe(CN)6]4-", "NH4+", "SO4^2-", "Na+Cl-", "Cl-", "Fe³⁺", "Ca2+ O2-", "{Na}Cl")
HYDRATES = ("CuSO4.5H2O", "CuSO4·5H2O", "CuSO4*5H2O", "MgSO4.7H2O", "Na2CO3.10H2O", "CaSO4.0.5H2O", "CuSO4 5H2O",
            "CuSO4.H2O", "FeCl3.6H2O")
FORMULA_KINDS = ("real", "random_valid", "unknown_element", "case", "blank", "unicode", "digits", "counts",
                 "parentheses", "hydrate", "charge", "long", "beyond_limit", "junk")


def _join(counts: list[tuple[str, int]], rng: np.random.Generator) -> str:
    """Element-count pairs as text, with random explicit 1s and spaces (both parse to the same formula)."""
    parts = []
    for el, n in counts:
        shown = "1" if n == 1 and rng.random() < 0.2 else ("" if n == 1 else str(n))
        parts.append(el + shown)
    sep = " " if rng.random() < 0.1 else ""
    return sep.join(parts)


def _real(rng: np.random.Generator) -> str:
    text = str(rng.choice(REAL_FORMULAS))
    r = rng.random()
    if r < 0.15:
        return f"({text})"
    if r < 0.3:
        return f"({text}){int(rng.integers(1, 5))}"
    if r < 0.4:
        return f"  {text}\t"
    return text


def _random_pool(rng: np.random.Generator, size: int) -> list[list[tuple[str, int]]]:
    """``size`` random valid compositions of 1-4 elements with small counts."""
    pool = []
    for _ in range(size):
        els = rng.choice(SYMBOLS, size=int(rng.integers(1, 5)), replace=False)
        pool.append([(str(el), int(rng.integers(1, 5))) for el in els])
    return pool


def _counts(rng: np.random.Generator) -> str:
    el = str(rng.choice(["Na", "Fe", "O", "Si"]))
    bad = rng.choice(["0", "-1", "00", "007", "1.5", "0.5", "1.0", "2.", ".5", "..", "1e5", "1E2", "99999999999",
                      "9" * int(rng.integers(20, 500)), "1" + "0" * 400, "0.0", "-0", "+2", "1_000", "0x10", "½",
                      "1.00000000000000001", "3" * 5000, "inf", "nan"])
    return f"{el}{bad}" + str(rng.choice(["", "Cl", "O2", "(OH)2"]))


def _parentheses(rng: np.random.Generator) -> str:
    depth = int(rng.integers(1, 60))
    return str(rng.choice([
        "(NaCl)2", "Ca(OH)2", "((", "))", "()", "()2", "(Na)0", "Na(Cl", "Na)Cl(", "((((NaCl))))", "(NaCl)99999",
        "(" * depth + "H" + ")" * depth, "(" * depth + "H", "H" + ")" * depth, "(H)" * depth, "(H2)-1", "(H2)1.5",
        "(" * 3000 + "NaCl" + ")" * 3000, "((SrTiO3)2)", "(Si)(O)2", "Na(Cl)", "(NaCl)" * 3,
    ]))


def _long(rng: np.random.Generator) -> str:
    size = int(rng.integers(200, 50_000))
    return str(rng.choice([
        "H" * size, "NaCl" * (size // 4), "".join(rng.choice(list(string.ascii_letters + string.digits), size=size)),
        "Na" + "1" * size, " " * size + "NaCl", "(" * (size // 2) + ")" * (size // 2),
        "".join(rng.choice(SYMBOLS, size=size // 2)),
    ]))


def _beyond(rng: np.random.Generator) -> str:
    return str(rng.choice([
        "Fe100O100", "C200", "H105", "U1000", "(SrTiO3)30", "Si105", "Na52Cl53", "NaCl" * 60, "H" * 105,
        f"Fe{int(rng.integers(105, 10**6))}", f"(NaCl){int(rng.integers(53, 10**9))}", "O1000000000000",
        "H1" + "0" * 30, "".join(f"{el}2" for el in SYMBOLS[:60]), "".join(SYMBOLS),
    ]))


def _junk(rng: np.random.Generator) -> str:
    size = int(rng.integers(1, 40))
    alphabet = list(string.printable)
    r = rng.random()
    if r < 0.4:
        return "".join(rng.choice(alphabet, size=size))
    if r < 0.6:
        return bytes(rng.integers(1, 256, size=size, dtype=np.uint8)).decode("latin-1")
    return str(rng.choice(["-n", "--help", "--out", "-", "--", "-5", "NaCl --n 3", "Na;rm -rf", "$HOME", "../x",
                           "a/b", "NaCl/..", "%s%n", "{}", "None", "null", "True", "\\", "'", '"', "`ls`"]))


def formula_cases(rng: np.random.Generator, n: int, pool_size: int = 40) -> list[tuple[str, str]]:
    """``n`` (kind, formula) pairs; valid random formulas come from a pool of ``pool_size``, which bounds how many
    distinct compositions reach the (slower) template search."""
    pool = _random_pool(rng, pool_size)
    makers: dict[str, Callable[[], str]] = {
        "real": lambda: _real(rng),
        "random_valid": lambda: _join(pool[int(rng.integers(len(pool)))], rng),
        "unknown_element": lambda: _join([(str(rng.choice(SYMBOLS)), 1), (str(rng.choice(UNKNOWN)),
                                                                          int(rng.integers(1, 4)))], rng),
        "case": lambda: str(rng.choice([str.lower, str.upper, str.swapcase])(str(rng.choice(REAL_FORMULAS)))),
        "blank": lambda: str(rng.choice(["", " ", "\t", "\n", "  \n ", "\u00a0", "\r\n", "\u2003", "\x0b", "\x0c"])),
        "unicode": lambda: str(rng.choice(UNICODE)),
        "digits": lambda: str(rng.choice(["0", "1", "2", "123", "1e5", "-1", "3.5", "00", "9" * 50, ".", "1.", "2 3"])),
        "counts": lambda: _counts(rng),
        "parentheses": lambda: _parentheses(rng),
        "hydrate": lambda: str(rng.choice(HYDRATES)),
        "charge": lambda: str(rng.choice(CHARGES)),
        "long": lambda: _long(rng),
        "beyond_limit": lambda: _beyond(rng),
        "junk": lambda: _junk(rng),
    }
    weights = np.array([18, 8, 8, 6, 3, 5, 4, 10, 8, 3, 4, 3, 6, 14], dtype=float)
    kinds = rng.choice(FORMULA_KINDS, size=n, p=weights / weights.sum())
    return [(str(k), makers[str(k)]()) for k in kinds]


# ------------------------------------------------------------------------------------------------ files


@dataclass
class Cell:
    """A structure as plain arrays, with no validation, so broken lattices and atoms can be written out."""

    lattice: np.ndarray
    symbols: list[str]
    frac: np.ndarray


def base_cells() -> dict[str, Cell]:
    """Small real crystals built in code (NaCl, Si, SrTiO3, ZnO, a triclinic cell)."""
    from pymatgen.core import Lattice, Structure

    def cell(s: Structure) -> Cell:
        return Cell(s.lattice.matrix.copy(), [site.specie.symbol for site in s], s.frac_coords.copy())

    out = {
        "NaCl": cell(Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                               [[0, 0, 0], [0.5, 0.5, 0.5]])),
        "Si": cell(Structure(Lattice.from_parameters(3.87, 3.87, 3.87, 60, 60, 60), ["Si", "Si"],
                             [[0, 0, 0], [0.25, 0.25, 0.25]])),
        "SrTiO3": cell(Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                                 [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])),
        "ZnO": cell(Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                              [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])),
    }
    lattice = np.array([[4.1, 0.2, 0.1], [0.5, 5.2, 0.3], [0.4, 0.7, 6.3]])
    frac = np.array([[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.35, 0.55, 0.1], [0.8, 0.7, 0.5], [0.2, 0.9, 0.65]])
    out["triclinic"] = Cell(lattice, ["O", "O", "Ti", "Sr", "O"], frac)
    return out


def _cell_parameters(lattice: np.ndarray) -> list[float]:
    with np.errstate(all="ignore"):
        lengths = np.linalg.norm(lattice, axis=1)
        def angle(i: int, j: int) -> float:
            return float(np.degrees(np.arccos(np.clip(lattice[i] @ lattice[j] / (lengths[i] * lengths[j]), -1, 1))))
        return [*map(float, lengths), angle(1, 2), angle(0, 2), angle(0, 1)]


def write_cif(cell: Cell, params: list[float] | None = None, occupancy: float = 1.0) -> str:
    """A P1 CIF of ``cell`` (``params`` override a, b, c, alpha, beta, gamma)."""
    a, b, c, al, be, ga = params if params is not None else _cell_parameters(cell.lattice)
    lines = ["data_fuzz", f"_cell_length_a {a}", f"_cell_length_b {b}", f"_cell_length_c {c}",
             f"_cell_angle_alpha {al}", f"_cell_angle_beta {be}", f"_cell_angle_gamma {ga}",
             "_symmetry_space_group_name_H-M 'P 1'", "loop_", "_symmetry_equiv_pos_as_xyz", "'x, y, z'", "loop_",
             "_atom_site_type_symbol", "_atom_site_label", "_atom_site_fract_x", "_atom_site_fract_y",
             "_atom_site_fract_z", "_atom_site_occupancy"]
    for i, (el, xyz) in enumerate(zip(cell.symbols, cell.frac)):
        lines.append(f"{el} {el}{i} {xyz[0]} {xyz[1]} {xyz[2]} {occupancy}")
    return "\n".join(lines) + "\n"


def write_poscar(cell: Cell, scale: str = "1.0") -> str:
    """A VASP 5 POSCAR of ``cell`` in direct coordinates."""
    symbols = list(dict.fromkeys(cell.symbols))
    order = [i for el in symbols for i, s in enumerate(cell.symbols) if s == el]
    lines = ["fuzz", scale, *(" ".join(repr(float(x)) for x in row) for row in cell.lattice), " ".join(symbols),
             " ".join(str(cell.symbols.count(el)) for el in symbols), "Direct"]
    lines += [" ".join(repr(float(x)) for x in cell.frac[i]) for i in order]
    return "\n".join(lines) + "\n"


def write_extxyz(cell: Cell) -> str:
    """An extxyz frame of ``cell`` (Cartesian positions)."""
    with np.errstate(all="ignore"):
        cart = cell.frac @ cell.lattice
    lat = " ".join(repr(float(x)) for x in cell.lattice.reshape(-1))
    lines = [str(len(cell.symbols)), f'Lattice="{lat}" Properties=species:S:1:pos:R:3 pbc="T T T"']
    lines += [f"{el} {x!r} {y!r} {z!r}" for el, (x, y, z) in zip(cell.symbols, cart.tolist())]
    return "\n".join(lines) + "\n"


def library_text(cell: Cell, fmt: str) -> str:
    """``cell`` written by pymatgen (CIF, POSCAR) or ASE (extxyz), as a user's file would be."""
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice(cell.lattice), cell.symbols, cell.frac)
    if fmt == "cif":
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(s, symprec=0.1 if len(s) > 2 else None))
    if fmt == "poscar":
        from pymatgen.io.vasp import Poscar

        return str(Poscar(s))
    from ase.io import write

    buf = io.StringIO()
    write(buf, s.to_ase_atoms(), format="extxyz")
    return buf.getvalue()


NAMES = {"cif": ("x.cif", "X.CIF", "sample.cif"), "poscar": ("POSCAR", "CONTCAR", "x.vasp", "POSCAR_1"),
         "extxyz": ("x.xyz", "x.extxyz")}
WRONG_NAMES = ("x.txt", "x", "x.json", "x.cif.gz", "x.pdb", ".cif", "x.cif ", "POSCAR.cif")
NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")
BAD_NUMBERS = ("nan", "NaN", "inf", "-inf", "1e308", "1e400", "-1e308", "0", "-0", "abc", "1,5", "", "0x1F",
               "1e-300", "99999999999999999999", "1.2.3", "--1", "1e", "5" * 400, "−1")
TEXT_MANGLES = ("valid", "truncate", "delete_lines", "duplicate_lines", "shuffle_lines", "bad_number",
                "many_bad_numbers")
CELL_MANGLES = ("zero_lattice", "singular_lattice", "flat_lattice", "tiny_lattice", "huge_lattice",
                "overlapping_atoms", "all_on_one_site", "far_coordinates", "nan_coordinate", "unknown_element",
                "heavy_element", "bad_cif_angles", "negative_cif_length", "partial_occupancy", "bad_poscar_scale",
                "supercell", "hydrogen_only")
BYTE_MANGLES = ("empty", "whitespace", "binary", "nul_bytes", "utf16", "bom", "crlf", "latin1", "gzip")
FS_MANGLES = ("directory", "missing", "wrong_extension", "dangling_symlink")


def _mangle_text(text: str, kind: str, rng: np.random.Generator) -> str:
    lines = text.splitlines()
    if kind == "truncate":
        return text[: int(rng.integers(0, len(text) + 1))]
    if kind == "delete_lines":
        drop = set(rng.choice(len(lines), size=min(len(lines), int(rng.integers(1, 4))), replace=False).tolist())
        return "\n".join(line for i, line in enumerate(lines) if i not in drop) + "\n"
    if kind == "duplicate_lines":
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(lines)))
            lines.insert(i, lines[i])
        return "\n".join(lines) + "\n"
    if kind == "shuffle_lines":
        if rng.random() < 0.5:
            rng.shuffle(lines)
        else:
            i, j = rng.integers(len(lines), size=2)
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines) + "\n"
    if kind in ("bad_number", "many_bad_numbers"):
        spans = [m.span() for m in NUMBER.finditer(text)]
        if not spans:
            return text
        k = 1 if kind == "bad_number" else int(rng.integers(2, max(3, len(spans) // 2)))
        chosen = sorted(rng.choice(len(spans), size=min(k, len(spans)), replace=False).tolist(), reverse=True)
        for c in chosen:
            a, b = spans[c]
            text = text[:a] + str(rng.choice(BAD_NUMBERS)) + text[b:]
        return text
    return text


def _mangle_cell(cell: Cell, kind: str, fmt: str, rng: np.random.Generator) -> str:
    lat, frac, symbols = cell.lattice.copy(), cell.frac.copy(), list(cell.symbols)
    params = None
    scale = "1.0"
    occupancy = 1.0
    if kind == "zero_lattice":
        lat[:] = 0.0
    elif kind == "singular_lattice":
        lat[2] = lat[0] * rng.choice([1.0, 2.0, -1.0])
    elif kind == "flat_lattice":
        lat[int(rng.integers(3))] = 0.0
    elif kind == "tiny_lattice":
        lat *= float(rng.choice([1e-3, 1e-6, 0.2, 0.5]))
    elif kind == "huge_lattice":
        lat *= float(rng.choice([10.0, 1e3, 1e6, 1e12]))
    elif kind == "overlapping_atoms":
        i = int(rng.integers(len(symbols)))
        frac = np.vstack([frac, frac[i] + rng.choice([0.0, 1e-4, 1.0])])
        symbols.append(str(rng.choice([symbols[i], "H", "O"])))
    elif kind == "all_on_one_site":
        frac[:] = frac[0]
    elif kind == "far_coordinates":
        frac[int(rng.integers(len(symbols)))] += float(rng.choice([1e3, 1e10, -1e17, 1e300]))
    elif kind == "nan_coordinate":
        frac[int(rng.integers(len(symbols))), int(rng.integers(3))] = float(rng.choice([np.nan, np.inf, -np.inf]))
    elif kind == "unknown_element":
        symbols[int(rng.integers(len(symbols)))] = str(rng.choice(["Xx", "Q", "D", "T", "X", "0", "Na+", "e"]))
    elif kind == "heavy_element":
        symbols[int(rng.integers(len(symbols)))] = str(rng.choice(["Og", "Lr", "No", "Fm", "Ts", "Rf", "Es", "U"]))
    elif kind == "bad_cif_angles":
        params = _cell_parameters(lat)
        params[3 + int(rng.integers(3))] = float(rng.choice([0.0, 180.0, 360.0, -90.0, 200.0, 1e-9]))
    elif kind == "negative_cif_length":
        params = _cell_parameters(lat)
        params[int(rng.integers(3))] *= float(rng.choice([-1.0, 0.0, 1e-9]))
    elif kind == "partial_occupancy":
        occupancy = float(rng.choice([0.5, 0.0, 2.0, -1.0]))
    elif kind == "bad_poscar_scale":
        scale = str(rng.choice(["0", "-1", "-0.0001", "1e-9", "1 1 0", "nan", "-100000"]))
    elif kind == "supercell":
        reps = rng.integers(1, 3, size=3)
        shifts = np.array([[i, j, k] for i in range(reps[0]) for j in range(reps[1]) for k in range(reps[2])])
        frac = ((frac[None] + shifts[:, None]) / reps).reshape(-1, 3)
        symbols = symbols * len(shifts)
        lat = lat * reps[:, None]
    elif kind == "hydrogen_only":
        symbols = ["H"] * len(symbols)
    broken = Cell(lat, symbols, frac)
    if fmt == "cif":
        return write_cif(broken, params, occupancy)
    if fmt == "poscar":
        return write_poscar(broken, scale)
    return write_extxyz(broken)


@dataclass
class FileCase:
    """One input file (or a path that is not a regular file) and how it was made."""

    kind: str
    fmt: str
    base: str
    path: Path


def file_cases(rng: np.random.Generator, n: int, folder: Path) -> list[FileCase]:
    """``n`` mangled structure files, each alone in its own subfolder of ``folder``."""
    cells = base_cells()
    texts = {(name, fmt): library_text(cell, fmt) for name, cell in cells.items() for fmt in NAMES}
    groups = (("text", TEXT_MANGLES, 0.45), ("cell", CELL_MANGLES, 0.35), ("bytes", BYTE_MANGLES, 0.12),
              ("fs", FS_MANGLES, 0.08))
    out = []
    for i in range(n):
        g = int(rng.choice(len(groups), p=[p for *_, p in groups]))
        kind = str(rng.choice(groups[g][1]))
        base = str(rng.choice(list(cells)))
        fmt = str(rng.choice(list(NAMES)))
        case_dir = folder / f"case{i:05d}"
        case_dir.mkdir(parents=True)
        path = case_dir / str(rng.choice(NAMES[fmt]))
        text = texts[(base, fmt)]
        data: bytes | None = None
        if g == 0:
            data = _mangle_text(text, kind, rng).encode()
        elif g == 1:
            data = _mangle_cell(cells[base], kind, fmt, rng).encode()
        elif kind == "empty":
            data = b""
        elif kind == "whitespace":
            data = str(rng.choice([" ", "\n\n", "\t \n", "\r\n"])).encode()
        elif kind == "binary":
            data = bytes(rng.integers(0, 256, size=int(rng.integers(1, 4000)), dtype=np.uint8))
        elif kind == "nul_bytes":
            cut = int(rng.integers(len(text)))
            data = text[:cut].encode() + b"\x00" * int(rng.integers(1, 50)) + text[cut:].encode()
        elif kind == "utf16":
            data = text.encode("utf-16")
        elif kind == "bom":
            data = b"\xef\xbb\xbf" + text.encode()
        elif kind == "crlf":
            data = text.replace("\n", "\r\n").encode()
        elif kind == "latin1":
            cut = int(rng.integers(len(text)))
            data = (text[:cut] + "é\xff\u00b5" + text[cut:]).encode("latin-1", errors="replace")
        elif kind == "gzip":
            data = gzip.compress(text.encode(), mtime=0)
        elif kind == "directory":
            path.mkdir()
        elif kind == "dangling_symlink":
            path.symlink_to(case_dir / "nowhere")
        elif kind == "wrong_extension":
            other = str(rng.choice([f for f in NAMES if f != fmt] + ["wrong"]))
            path = case_dir / (str(rng.choice(NAMES[other])) if other in NAMES else str(rng.choice(WRONG_NAMES)))
            data = text.encode()
        if data is not None:
            path.write_bytes(data)
        out.append(FileCase(f"{groups[g][0]}:{kind}", fmt, base, path))
    return out


# ------------------------------------------------------------------------------------------------ checking


def message_kind(message: str, names: tuple[str, ...] = ()) -> str:
    """An error message with the specific parts (quoted text, numbers, file names) taken out, to count by kind."""
    text = message.removeprefix("xtalforge: error: ")
    for name in sorted(names, key=len, reverse=True):
        if name:
            text = text.replace(name, "FILE")
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"[-+]?\d[\d.eE+-]*", "N", text).removeprefix("FILE: ")
    return text.split(":")[0][:70].strip()


class CaseTimeout(BaseException):
    """A CLI call that hangs (a BaseException, so no ``except Exception`` in the code under test swallows it)."""


@dataclass
class Outcome:
    """What one command did with one input."""

    command: str
    kind: str
    ok: bool  # exit 0 with a result, or exit 2 with one error line and nothing left behind
    result: bool  # exit 0
    message_kind: str
    seconds: float
    problem: str = ""


@dataclass
class Fuzzer:
    """Runs inputs through ``xtalforge.cli.main`` in-process and records :class:`Outcome` s.

    ``readouterr`` returns (stdout, stderr) captured since its last call (pytest's ``capsys.readouterr`` or
    :class:`Capture`).
    """

    readouterr: Callable[[], tuple[str, str]]
    work: Path
    timeout: float = 30.0  # seconds one CLI call may take before it counts as hanging
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _predict_cache: dict = field(default_factory=dict)
    _relax_cache: dict = field(default_factory=dict)

    def _main(self, argv: list[str]) -> tuple[int | str, str, str]:
        from xtalforge.cli import main

        def alarm(signum, frame):
            raise CaseTimeout(f"no answer within {self.timeout} s")

        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            rc: int | str = main(argv)
        except BaseException as exc:  # the point of fuzzing: anything but exit 0 / 2 is a failure to record
            tb = traceback.format_exc(limit=-3)
            rc = f"{type(exc).__name__}: {str(exc)[:300]}\n{tb}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        out, err = self.readouterr()
        return rc, out, err

    def _record(self, command: str, kind: str, shown: str, rc: int | str, err: str, names: tuple[str, ...],
                t0: float, result_problem: str = "", leftovers: list[str] | None = None) -> Outcome:
        problem = ""
        lines = err.rstrip("\n").split("\n")
        if isinstance(rc, str):
            problem = f"raised {rc}"
        elif rc == 0:
            problem = result_problem
        elif rc == 2:
            if len(lines) != 1 or "\r" in err or not lines[0].startswith("xtalforge: error: "):
                problem = f"stderr is not one error line: {err[:300]!r}"
            elif leftovers:
                problem = f"error left output behind: {leftovers[:5]}"
        else:
            problem = f"exit code {rc}, stderr {err[:300]!r}"
        result = rc == 0 and not problem
        kind_of_message = "result" if result else message_kind(lines[-1], names) if rc == 2 else "FAILURE"
        outcome = Outcome(command, kind, not problem, result, kind_of_message, time.perf_counter() - t0, problem)
        self.outcomes.append(outcome)
        if problem:
            self.failures.append(f"{command} [{kind}] {shown}: {problem}")
        return outcome

    # -------------------------------------------------------------------------------------------- formulas
    def formula(self, kind: str, text: str) -> Outcome:
        """``xtalforge predict --method template --n 3 -- FORMULA`` (reused for a formula parsed before)."""
        from xtalforge.composition import Target
        from xtalforge.errors import XtalforgeError

        t0 = time.perf_counter()
        shown = repr(text if len(text) < 80 else text[:60] + f"...({len(text)} chars)")
        key = None
        try:
            target = Target.parse(text)
            key = (tuple(sorted(target.counts.items())), target.exact)
        except XtalforgeError:
            pass  # the CLI must report it: run it
        except Exception as exc:
            self.failures.append(f"Target.parse [{kind}] {shown}: raised {type(exc).__name__}: {exc}")
        if key is not None and key in self._predict_cache:
            cached: Outcome = self._predict_cache[key]
            outcome = Outcome("predict", kind, cached.ok, cached.result, cached.message_kind, 0.0, cached.problem)
            self.outcomes.append(outcome)
            return outcome
        out_dir = self.work / "predict" / f"p{len(self.outcomes)}"
        rc, out, err = self._main(["predict", "--method", "template", "--n", "3", "--no-report", "--out",
                                   str(out_dir), "--", text])
        problem = self._check_predict_output(out_dir) if rc == 0 else ""
        leftovers = [p.name for p in out_dir.parent.iterdir()] if rc != 0 and out_dir.parent.exists() else []
        outcome = self._record("predict", kind, shown, rc, err, (), t0, problem, leftovers)
        if key is not None:
            self._predict_cache[key] = outcome
        shutil.rmtree(out_dir.parent, ignore_errors=True)
        return outcome

    @staticmethod
    def _check_predict_output(out_dir: Path) -> str:
        try:
            run = json.loads((out_dir / "run.json").read_text())
            files = [row["file"] for row in run["candidates"]]
        except Exception as exc:
            return f"exit 0 but no readable run.json: {exc}"
        if not 1 <= len(files) <= 3:
            return f"exit 0 with {len(files)} candidates for --n 3"
        missing = [f for f in files if not (out_dir / f).is_file()]
        return f"run.json lists missing files {missing}" if missing else ""

    # -------------------------------------------------------------------------------------------- files
    def file(self, case: FileCase) -> list[Outcome]:
        """``xtalforge relax FILE --steps 2`` and ``xtalforge property FILE --property formation_energy``."""
        return [self._relax(case), self._property(case)]

    def _names(self, case: FileCase) -> tuple[str, ...]:
        return (str(case.path), case.path.name)

    def _relax(self, case: FileCase) -> Outcome:
        from xtalforge.crystal import Crystal
        from xtalforge.errors import XtalforgeError

        t0 = time.perf_counter()
        key = None
        try:
            c = Crystal.read(case.path)
            key = (c.lattice.round(6).tobytes(), c.frac_coords.round(6).tobytes(), c.numbers.tobytes())
        except XtalforgeError:
            pass
        except Exception as exc:
            self.failures.append(f"Crystal.read [{case.kind}] {case.path.name}: raised {type(exc).__name__}: {exc}")
        if key is not None and key in self._relax_cache:
            cached: Outcome = self._relax_cache[key]
            outcome = Outcome("relax", case.kind, cached.ok, cached.result, cached.message_kind, 0.0, cached.problem)
            self.outcomes.append(outcome)
            return outcome
        folder = case.path.parent
        before = {p.name for p in folder.iterdir()}
        rc, out, err = self._main(["relax", str(case.path), "--steps", "2"])
        new = sorted({p.name for p in folder.iterdir()} - before)
        problem = ""
        if rc == 0:
            relaxed = [n for n in new if n.endswith("_relaxed.cif")]
            csv = [n for n in new if n.endswith("_relaxed.energies.csv")]
            if len(relaxed) != 1 or len(csv) != 1 or len(new) != 2:
                problem = f"exit 0 but wrote {new}"
            else:
                try:
                    Crystal.read(folder / relaxed[0])
                    energies = np.loadtxt(folder / csv[0], delimiter=",", skiprows=1, ndmin=2)[:, 1]
                    if not np.all(np.isfinite(energies)):
                        problem = f"exit 0 with non-finite energies {energies.tolist()}"
                except Exception as exc:
                    problem = f"exit 0 but the output does not read back: {type(exc).__name__}: {exc}"
            for name in new:
                (folder / name).unlink()
        outcome = self._record("relax", case.kind, f"{case.base}/{case.path.name}", rc, err, self._names(case), t0,
                               problem, new if rc != 0 else None)
        if key is not None:
            self._relax_cache[key] = outcome
        return outcome

    def _property(self, case: FileCase) -> Outcome:
        t0 = time.perf_counter()
        folder = case.path.parent
        before = {p.name for p in folder.iterdir()}
        # --method template: a path that is not a file is tried as a composition, and auto would run DAO-G
        rc, out, err = self._main(["property", str(case.path), "--property", "formation_energy",
                                   "--method", "template"])
        new = sorted({p.name for p in folder.iterdir()} - before)
        problem = ""
        if rc == 0:
            lines = out.strip().splitlines()
            try:
                value = float(lines[-1].split("\t")[2].split()[0])
                if len(lines) != 1 or not math.isfinite(value):
                    problem = f"exit 0 with output {out[:200]!r}"
            except (IndexError, ValueError):
                problem = f"exit 0 with output {out[:200]!r}"
            if new:
                problem = problem or f"property wrote files {new}"
        return self._record("property", case.kind, f"{case.base}/{case.path.name}", rc, err, self._names(case), t0,
                            problem, new if rc != 0 else None)

    # -------------------------------------------------------------------------------------------- summary
    def counts(self) -> dict:
        """Outcomes by command: results, one-line errors by message kind, failures, and by input kind."""
        summary: dict = {}
        for command in sorted({o.command for o in self.outcomes}):
            mine = [o for o in self.outcomes if o.command == command]
            summary[command] = {
                "inputs": len(mine),
                "results": sum(o.result for o in mine),
                "errors": sum(o.ok and not o.result for o in mine),
                "failures": sum(not o.ok for o in mine),
                "ran_cli": sum(o.seconds > 0 for o in mine),
                "seconds": round(sum(o.seconds for o in mine), 2),
                "by_message": dict(Counter(o.message_kind for o in mine).most_common()),
                "by_input_kind": {k: dict(sorted(Counter("result" if o.result else "error" if o.ok else "failure"
                                                         for o in mine if o.kind == k).items()))
                                  for k in sorted({o.kind for o in mine})},
            }
        return summary


class Capture:
    """stdout / stderr capture for running outside pytest (what ``capsys.readouterr`` does inside it)."""

    def __init__(self) -> None:
        self._out, self._err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Capture:
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def readouterr(self) -> tuple[str, str]:
        out, err = self._out.getvalue(), self._err.getvalue()
        for buf in (self._out, self._err):
            buf.seek(0)
            buf.truncate()
        return out, err


def run(seed: int, n_formulas: int, n_files: int, work: Path, readouterr: Callable[[], tuple[str, str]],
        pool_size: int = 40) -> tuple[Fuzzer, dict]:
    """Generate and run every case; returns the fuzzer and timings (s) of the formula and file phases."""
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    fuzzer = Fuzzer(readouterr, work)
    t0 = time.perf_counter()
    for kind, text in formula_cases(rng, n_formulas, pool_size):
        fuzzer.formula(kind, text)
    t1 = time.perf_counter()
    for case in file_cases(rng, n_files, work / "files"):
        fuzzer.file(case)
    t2 = time.perf_counter()
    return fuzzer, {"formulas_s": round(t1 - t0, 2), "files_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2)}
