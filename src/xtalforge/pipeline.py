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
    """Template candidates first; samples of ``generator`` where the templates are weak.

    - A target whose exact-count anonymised formula is in the template library gets up to ``n`` template candidates;
      slots they leave empty are filled by generator samples, ranked after every template candidate.
    - A template-free target (no exact template: the template method can only offer supercells and merged site sets)
      gets ``ceil(n / 2)`` template candidates alternating with generator samples. On such entries neither source
      is clearly better (MP-20 bi/ternary test, k=20: templates 13.3% of the 30 absent from the pooled library; on the
      33 absent from MP-20 val, templates 3.0%, DAO-G 9.1%, alternating 12.1%; bench/results/dao_g.json).

    The generator is created on first use (``generator_factory()``), so a composition that templates fill never loads
    the network. Targets with more atoms than the generator allows keep only their template candidates.
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
        return {"method": self.name, "templates": self.templates.settings(), "generator": self.generator_name,
                "template_free_policy": "alternate"}

    def _has_template(self, cell: Sequence[int]) -> bool:
        has = getattr(self.templates, "has_template", None)
        return True if has is None else bool(has(cell))

    def _merge(self, templates: list[Crystal], generated: list[Crystal], alternate: bool) -> list[Crystal]:
        """Template candidates, then (or alternating with) generated ones; scores stay decreasing down the list."""
        for c in templates:
            c.properties.setdefault("method", self.templates.name)
        for c in generated:
            c.properties["method"] = self.generator_name
        if not alternate:
            for c in generated:  # below every template score (template scores are log-probabilities > -1e3)
                c.properties["score"] = GENERATED_SCORE_OFFSET + float(c.properties.get("score", 0.0))
            return templates + generated
        merged = [c for pair in zip(templates, generated) for c in pair]
        merged += templates[len(generated):] + generated[len(templates):]
        for prev, c in zip(merged, merged[1:]):
            if c.properties["method"] == self.generator_name:
                c.properties["score"] = float(prev.properties.get("score", 0.0)) - 1e-3
        return merged

    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        out = self.templates.generate(targets, n, seed)
        for row in out:
            for c in row:
                c.properties.setdefault("method", self.templates.name)
        free = [not self._has_template(t) for t in targets]
        keep = [min(len(row), n - n // 2) if f else len(row) for row, f in zip(out, free)]
        wanted = [i for i in range(len(targets)) if keep[i] < n]
        if not wanted:
            return out
        gen = self.generator
        wanted = [i for i in wanted if len(targets[i]) <= gen.max_atoms]
        # one batched generator call for every missing slot: each cell repeated once per sample it needs
        cells = [list(targets[i]) for i in wanted for _ in range(n - keep[i])]
        samples = iter(gen.sample_cells(cells, seed) if cells else [])
        for i in wanted:
            extra = [s for s in (next(samples) for _ in range(n - keep[i])) if s is not None]
            extra.sort(key=lambda c: -float(c.properties.get("score", 0.0)))
            out[i] = self._merge(out[i][: keep[i]], extra, alternate=free[i])
        return out

    def predict_target(self, target: Target, n: int, seed: int = 0) -> list[Crystal]:
        crystals = self.templates.predict_target(target, n, seed)
        free = not any(self._has_template(cell) for cell in target.cells(self.templates.max_atoms))
        keep = min(len(crystals), n - n // 2) if free else len(crystals)
        if keep >= n:
            return self._merge(crystals, [], alternate=False)
        try:
            extra = self.generator.predict_target(target, n - keep, seed)
        except AtomLimitError:  # the generator's cells are smaller than this composition needs
            return self._merge(crystals, [], alternate=False)
        return self._merge(crystals[:keep], extra, alternate=free)


@register("auto")
def _make_auto(library=None, weights: str | None = None, steps: int = 50, sampler: str = "pc",
               device: str = "cpu", step_lr: float | None = None, guidance: float = 0.0) -> TemplatesThenGenerator:
    """``get_method("auto", library=..., weights=..., steps=50, sampler="pc", device="cpu", guidance=0.0)``."""
    templates = get_method("template", library=library)
    return TemplatesThenGenerator(
        templates,
        lambda: get_method("dao-g", weights=weights, steps=steps, sampler=sampler, device=device, step_lr=step_lr,
                           guidance=guidance),
    )
