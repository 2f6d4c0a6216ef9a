"""The interface every CSP method implements, and the registry the CLI and the evaluator use.

A method turns target cells (lists of atomic numbers) into ranked candidate crystals. Methods register themselves
with :func:`register`; ``get_method("template")`` returns a ready instance with the shipped data or weights.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Sequence

from xtalforge.composition import Target
from xtalforge.crystal import Crystal
from xtalforge.errors import AtomLimitError, XtalforgeError


class CSPMethod(abc.ABC):
    """A crystal structure prediction method.

    Subclasses set ``name`` and ``max_atoms`` and implement :meth:`generate`. Candidates carry a ``score`` in
    ``Crystal.properties`` (higher is better) so candidates of different Z can be merged by :meth:`predict_target`.
    """

    name: str = "base"
    max_atoms: int = 52

    @abc.abstractmethod
    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        """For each target cell (atomic numbers of all atoms), up to ``n`` candidates, best first."""

    def predict_target(self, target: Target, n: int, seed: int = 0) -> list[Crystal]:
        """Candidates for a composition whose Z may be unknown: every allowed cell, merged by score."""
        cells = target.cells(self.max_atoms)
        per_cell = self.generate(cells, n, seed)
        merged = [c for cands in per_cell for c in cands]
        merged.sort(key=lambda c: -float(c.properties.get("score", 0.0)))
        return merged[:n]

    def settings(self) -> dict:
        """What produced the candidates (recorded in outputs and reports)."""
        return {"method": self.name}


_REGISTRY: dict[str, Callable[..., CSPMethod]] = {}


def register(name: str) -> Callable:
    def deco(factory: Callable[..., CSPMethod]) -> Callable[..., CSPMethod]:
        _REGISTRY[name] = factory
        return factory

    return deco


def available_methods() -> list[str]:
    _import_builtin_methods(BUILTIN_METHODS.values())
    return sorted(_REGISTRY)


def get_method(name: str, **kwargs) -> CSPMethod:
    """A method by name (``template``, ``dao-g``, ...); keyword arguments go to its factory."""
    factory = _factory(name)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError:
        known = ", ".join(method_parameters(name))
        raise XtalforgeError(f"method '{name}' does not take {', '.join(sorted(kwargs))} (it takes: {known})") from None
    return factory(**kwargs)


def method_parameters(name: str) -> list[str]:
    """The keyword arguments ``get_method(name, ...)`` takes (e.g. whether a method runs on a ``device``)."""
    return [p for p in inspect.signature(_factory(name)).parameters if p != "kwargs"]


class BySize(CSPMethod):
    """Several models of one method, each cell sent to the one with the smallest atom limit that holds it.

    Default DAO-G is this: weights trained on cells of <= 20 atoms, and weights fine-tuned on cells up to 52 atoms
    for larger cells. A composition with unknown Z goes to the first model that can hold one of its cells.
    """

    def __init__(self, methods: Sequence[CSPMethod]) -> None:
        if not methods:
            raise ValueError("BySize needs at least one method")
        self.methods = sorted(methods, key=lambda m: m.max_atoms)
        self.name = self.methods[0].name
        self.max_atoms = self.methods[-1].max_atoms

    def settings(self) -> dict:
        return {**self.methods[0].settings(),
                "by_size": [{"max_atoms": m.max_atoms, **m.settings()} for m in self.methods]}

    def _routes(self, sizes: Sequence[int]) -> list[int]:
        """Index into ``self.methods`` for each size."""
        limits = [m.max_atoms for m in self.methods]
        routes = []
        for n in sizes:
            fits = [j for j, limit in enumerate(limits) if n <= limit]
            if not fits:
                raise AtomLimitError(f"a target has {n} atoms; the largest {self.name} weights allow {self.max_atoms}")
            routes.append(fits[0])
        return routes

    def _per_method(self, sizes: Sequence[int], call) -> list:
        """``call(method, indices_routed_to_it)`` for each method; results put back in input order."""
        routes = self._routes(sizes)
        out: list = [None] * len(sizes)
        for j, method in enumerate(self.methods):
            idx = [i for i, r in enumerate(routes) if r == j]
            if idx:
                for i, result in zip(idx, call(method, idx)):
                    out[i] = result
        return out

    def sample_cells(self, cells: Sequence[Sequence[int]], seed: int = 0, init: Sequence[Crystal] | None = None,
                     start_t: int | None = None) -> list[Crystal | None]:
        """One sample per cell from the model its size is routed to (``init`` / ``start_t``: see DAOGMethod)."""
        return self._per_method([len(c) for c in cells], lambda m, idx: m.sample_cells(
            [cells[i] for i in idx], seed, init=None if init is None else [init[i] for i in idx], start_t=start_t))

    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        return self._per_method([len(t) for t in targets],
                                lambda m, idx: m.generate([targets[i] for i in idx], n, seed))

    def predict_target(self, target: Target, n: int, seed: int = 0) -> list[Crystal]:
        for method in self.methods:
            try:
                return method.predict_target(target, n, seed)
            except AtomLimitError:
                continue
        raise AtomLimitError(f"{target.formula} needs more atoms than the largest {self.name} weights allow "
                             f"({self.max_atoms})")


def _factory(name: str) -> Callable[..., CSPMethod]:
    if name not in _REGISTRY and name in BUILTIN_METHODS:  # import only the module that registers it
        _import_builtin_methods([BUILTIN_METHODS[name]])
    if name not in _REGISTRY:
        _import_builtin_methods(BUILTIN_METHODS.values())
        raise XtalforgeError(f"unknown method '{name}' (choose from {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


#: The built-in methods and the module that registers each: a new method is one module plus one line here. The
#: template modules do not import torch, so ``predict --method template`` starts in a second.
BUILTIN_METHODS = {
    "template": "xtalforge.templates",
    "redecorate": "xtalforge.templates",
    "auto": "xtalforge.pipeline",
    "dao-g": "xtalforge.models.dao_g",
    "template+dao-g": "xtalforge.models.dao_g",
    "symmetry": "xtalforge.models.wyckoff_flow",
}


def _import_builtin_methods(modules) -> None:
    import importlib

    for module in dict.fromkeys(modules):
        importlib.import_module(module)
