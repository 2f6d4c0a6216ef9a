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
from xtalforge.errors import XtalforgeError


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
    _import_builtin_methods(_BUILTIN_MODULES)
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


def _factory(name: str) -> Callable[..., CSPMethod]:
    # cheap modules first: the template method must not pay for importing torch (`predict` start-up time)
    _import_builtin_methods(_BUILTIN_MODULES[:2])
    if name not in _REGISTRY:
        _import_builtin_methods(_BUILTIN_MODULES[2:])
    if name not in _REGISTRY:
        raise XtalforgeError(f"unknown method '{name}' (choose from {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


#: Modules that register the built-in methods; the first two do not import torch.
_BUILTIN_MODULES = ("xtalforge.templates", "xtalforge.pipeline", "xtalforge.models.dao_g")


def _import_builtin_methods(modules: Sequence[str]) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a method whose module is not written yet is simply absent
            if exc.name != module:
                raise
