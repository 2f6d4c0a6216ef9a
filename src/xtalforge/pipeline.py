"""The default CSP pipeline (``method="auto"``): template candidates first, generated ones where templates run out.

Templates are the strongest method wherever the training data hold a structure with the target's anonymised formula
(bench/results/template_csp_*.json); a generative model is the only source of candidates where they do not (the
"template-free" compositions). One registered method does both, so ``xtalforge predict`` and ``xtalforge evaluate
--method auto`` run the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

from xtalforge.composition import Target
from xtalforge.crystal import Crystal
from xtalforge.errors import AtomLimitError
from xtalforge.methods import CSPMethod, get_method, register

#: Generated candidates are scored below every template candidate (template scores are log-probabilities > -1e3).
GENERATED_SCORE_OFFSET = -1e3


class TemplatesThenGenerator(CSPMethod):
    """Up to ``n`` template candidates; the slots they leave empty are filled by samples of ``generator``.

    The generator is created on first use (``generator_factory()``), so a composition that templates fill never
    loads the network. Targets with more atoms than the generator allows keep only their template candidates.
    """

    name = "auto"

    def __init__(self, templates: CSPMethod, generator_factory, generator_name: str = "dao-g") -> None:
        self.templates = templates
        self.generator_factory = generator_factory
        self.generator_name = generator_name
        self._generator: CSPMethod | None = None
        self.max_atoms = templates.max_atoms

    @property
    def generator(self) -> CSPMethod:
        if self._generator is None:
            self._generator = self.generator_factory()
        return self._generator

    def settings(self) -> dict:
        return {"method": self.name, "templates": self.templates.settings(), "generator": self.generator_name}

    def _mark_generated(self, crystals: list[Crystal]) -> list[Crystal]:
        for c in crystals:
            c.properties["method"] = self.generator_name
            c.properties["score"] = GENERATED_SCORE_OFFSET + float(c.properties.get("score", 0.0))
        return crystals

    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        out = self.templates.generate(targets, n, seed)
        for row in out:
            for c in row:
                c.properties.setdefault("method", self.templates.name)
        short = [i for i, row in enumerate(out) if len(row) < n]
        if not short:
            return out
        gen = self.generator
        short = [i for i in short if len(targets[i]) <= gen.max_atoms]
        # one batched generator call for every missing slot: each cell repeated once per sample it needs
        cells = [list(targets[i]) for i in short for _ in range(n - len(out[i]))]
        samples = gen.sample_cells(cells, seed) if cells else []
        it = iter(samples)
        for i in short:
            extra = [s for s in (next(it) for _ in range(n - len(out[i]))) if s is not None]
            extra.sort(key=lambda c: -float(c.properties.get("score", 0.0)))
            out[i] += self._mark_generated(extra)
        return out

    def predict_target(self, target: Target, n: int, seed: int = 0) -> list[Crystal]:
        crystals = self.templates.predict_target(target, n, seed)
        for c in crystals:
            c.properties.setdefault("method", self.templates.name)
        if len(crystals) < n:
            try:
                extra = self.generator.predict_target(target, n - len(crystals), seed)
            except AtomLimitError:  # the generator's cells are smaller than this composition needs
                extra = []
            crystals += self._mark_generated(extra)
        return crystals


@register("auto")
def _make_auto(library=None, weights: str | None = None, steps: int = 50, sampler: str = "pc",
               device: str = "cpu", step_lr: float | None = None) -> TemplatesThenGenerator:
    """``get_method("auto", library=..., weights=..., steps=50, sampler="pc", device="cpu")``."""
    templates = get_method("template", library=library)
    return TemplatesThenGenerator(
        templates,
        lambda: get_method("dao-g", weights=weights, steps=steps, sampler=sampler, device=device, step_lr=step_lr),
    )
