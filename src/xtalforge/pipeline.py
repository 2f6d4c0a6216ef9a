"""The default CSP pipeline (``method="auto"``): template candidates first, generated ones where templates run out.

Templates are the strongest method wherever the training data hold a structure with the target's anonymised
formula; a generative model is the only source of candidates where they do not (the "template-free" compositions;
docs/methods.md). One registered method does both, so ``xtalforge predict`` and ``xtalforge evaluate
--method auto`` run the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

from xtalforge.composition import Target
from xtalforge.crystal import Crystal
from xtalforge.errors import AtomLimitError, XtalforgeError
from xtalforge.methods import CSPMethod, get_method, register
from xtalforge.ranking import GENERATOR_POOL, consensus_leaders

#: Generated candidates are scored below every template candidate (template scores are log-probabilities > -1e3).
GENERATED_SCORE_OFFSET = -1e3


def in_turn(*sources: Sequence) -> list:
    """The sources' items taken in turn (first of each, then second of each, ...); a short source is skipped."""
    return [s[i] for i in range(max(map(len, sources), default=0)) for s in sources if i < len(s)]


class TemplatesThenGenerator(CSPMethod):
    """Template candidates first; re-decorated templates and samples of ``generator`` where the templates are weak.

    - A target whose exact-count anonymised formula is in the template library gets up to ``n`` template candidates;
      slots they leave empty are filled by generator samples, ranked after every template candidate (with
      ``redecorate_short_lists``: re-decorated templates and generator samples in turn, half the empty slots each).
    - A template-free target (no exact template: the template method can only offer supercells and merged site sets)
      gets the three sources in turn: a re-decorated template (``redecorator``, same-size structures with a few
      atoms' species changed, ranked by CHGNet energy; see :mod:`xtalforge.templates.redecorate`), a template
      candidate, a generator sample, and again, each source taking about a third of the slots (the template
      candidates one more than a third) and a short source's slots going to the next. The re-decorated template leads
      because it was right more often first on val entries made template-free. Without a ``redecorator``, template
      candidates alternate with generator samples (half each).

    The generated candidates are the most agreed-on distinct structures of a pool of ``generator_pool`` samples that
    match no template or re-decorated candidate of the list (ranked as ``--method dao-g`` ranks; a pool of 1: the
    samples in their own order). Where a template exists, no sample is spent on its list: DAO-G's votes on template
    candidates made the first candidate worse.

    The generator is created on first use (``generator_factory()``), so a composition that templates fill never loads
    the network. Targets with more atoms than the generator allows get no generated candidates.
    """

    name = "auto"

    def __init__(self, templates: CSPMethod, generator_factory, generator_name: str = "dao-g",
                 redecorator: CSPMethod | None = None, redecorate_short_lists: bool = False,
                 generator_pool: int = 1) -> None:
        self.templates = templates
        self.generator_pool = generator_pool
        self.generator_factory = generator_factory
        self.generator_name = generator_name
        self.redecorator = redecorator
        self.redecorate_short_lists = redecorate_short_lists and redecorator is not None
        self._generator: CSPMethod | None = None
        self.max_atoms = templates.max_atoms

    @property
    def generator(self) -> CSPMethod:
        if self._generator is None:
            self._generator = self.generator_factory()
        return self._generator

    def settings(self) -> dict:
        # the generator's own settings name its weights (loading them is cheap next to any evaluation)
        out = {"method": self.name, "templates": self.templates.settings(), "generator": self.generator_name,
               "generator_settings": self.generator.settings(), "template_free_policy": "alternate"}
        if self.redecorator is not None:
            out["redecorator_settings"] = self.redecorator.settings()
            out["template_free_policy"] = "alternate redecorated / template / generated"
            out["short_list_policy"] = ("templates, then redecorated / generated in turn" if self.redecorate_short_lists
                                        else "templates, then generated")
        out["generator_pool"] = self.generator_pool
        out["generated_order"] = "consensus, new structures first" if self.generator_pool > 1 else "own score"
        return out

    def _has_template(self, cell: Sequence[int]) -> bool:
        has = getattr(self.templates, "has_template", None)
        return True if has is None else bool(has(cell))

    def _shares(self, n: int, free: bool, n_templates: int) -> tuple[int, int]:
        """Template candidates kept and re-decorated candidates wanted for one target (the rest: generated)."""
        if not free:
            keep = min(n_templates, n)
            return keep, (n - keep) - (n - keep) // 2 if self.redecorate_short_lists else 0
        if self.redecorator is None:
            return min(n_templates, n - n // 2), 0
        keep = min(n_templates, n - 2 * (n // 3))
        return keep, n - keep - n // 3

    def _best_generated(self, pool: list[Crystal], k: int, offered: list[Crystal]) -> list[Crystal]:
        """``k`` of the generator's samples: with a pool, its most agreed-on distinct structures that match none of
        the candidates ``offered`` already (:func:`~xtalforge.ranking.consensus_leaders`), else by the samples'
        own score."""
        if self.generator_pool <= 1:
            return sorted(pool, key=lambda c: -float(c.properties.get("score", 0.0)))[:k]
        return consensus_leaders(pool, k, exclude=offered)

    def _merge(self, templates: list[Crystal], redecorated: list[Crystal], generated: list[Crystal],
               free: bool) -> list[Crystal]:
        """Re-decorated, template and generated candidates in turn (``free``), or template candidates first and the
        other two in turn after them; scores decrease down the list."""
        for c in templates:
            c.properties.setdefault("method", self.templates.name)
        for c in redecorated:
            c.properties["method"] = self.redecorator.name
        for c in generated:
            c.properties["method"] = self.generator_name

        merged = in_turn(redecorated, templates, generated) if free else templates + in_turn(redecorated, generated)
        if merged and merged[0].properties["method"] != self.templates.name:
            # below every template score (template scores are log-probabilities > -1e3)
            merged[0].properties["score"] = GENERATED_SCORE_OFFSET + float(merged[0].properties.get("score", 0.0))
        for prev, c in zip(merged, merged[1:]):  # every score just below the one above it
            if c.properties["method"] != self.templates.name or c.properties["score"] >= prev.properties["score"]:
                c.properties["score"] = float(prev.properties.get("score", 0.0)) - 1e-3
        return merged

    def generate(self, targets: Sequence[Sequence[int]], n: int, seed: int = 0) -> list[list[Crystal]]:
        out = self.templates.generate(targets, n, seed)
        for row in out:
            for c in row:
                c.properties.setdefault("method", self.templates.name)
        free = [not self._has_template(t) for t in targets]
        shares = [self._shares(n, f, len(row)) for row, f in zip(out, free)]
        redecorated: list[list[Crystal]] = [[] for _ in targets]
        wanted = [i for i, (_, r) in enumerate(shares) if r > 0 and len(targets[i]) <= self.redecorator.max_atoms]
        rows = self.redecorator.generate([targets[i] for i in wanted], n, seed) if wanted else []
        for i, row in zip(wanted, rows):
            redecorated[i] = row[: shares[i][1]]
        missing = [n - keep - len(redecorated[i]) for i, (keep, _) in enumerate(shares)]
        wanted = [i for i in range(len(targets)) if missing[i] > 0]
        generated: list[list[Crystal]] = [[] for _ in targets]
        if wanted:  # only then is the generator loaded
            gen = self.generator
            wanted = [i for i in wanted if len(targets[i]) <= gen.max_atoms]
            # one batched generator call: each cell repeated once per sample of its pool
            drawn = {i: max(missing[i], self.generator_pool) for i in wanted}
            cells = [list(targets[i]) for i in wanted for _ in range(drawn[i])]
            samples = iter(gen.sample_cells(cells, seed) if cells else [])
            for i in wanted:
                pool = [s for s in (next(samples) for _ in range(drawn[i])) if s is not None]
                generated[i] = self._best_generated(pool, missing[i], out[i][: shares[i][0]] + redecorated[i])
        return [self._merge(out[i][: shares[i][0]], redecorated[i], generated[i], free[i]) for i in range(len(targets))]

    def predict_target(self, target: Target, n: int, seed: int = 0) -> list[Crystal]:
        crystals = self.templates.predict_target(target, n, seed)
        free = not any(self._has_template(cell) for cell in target.cells(self.templates.max_atoms))
        keep, want = self._shares(n, free, len(crystals))
        redecorated = []
        if want > 0:
            try:
                redecorated = self.redecorator.predict_target(target, want, seed)
            except AtomLimitError:  # no cell of this composition fits the library's largest structures
                pass
        if keep + len(redecorated) >= n:
            return self._merge(crystals[:keep], redecorated, [], free)
        want = n - keep - len(redecorated)
        try:
            pool = self.generator.predict_target(target, max(want, self.generator_pool), seed)
        except AtomLimitError:  # the generator's cells are smaller than this composition needs
            pool = []
        generated = self._best_generated(pool, want, crystals[:keep] + redecorated)
        return self._merge(crystals[:keep], redecorated, generated, free)


@register("auto")
def _make_auto(library=None, weights: str | None = None, steps: int | None = None, sampler: str | None = None,
               device: str = "cpu", step_lr: float | None = None, guidance: float = 0.0,
               redecorate_candidates: int = 1000, redecorate_short_lists: bool = True,
               generator_pool: int | None = None, generator: str = "dao-g") -> TemplatesThenGenerator:
    """``get_method("auto", library=..., weights=..., steps=None, sampler=None, device="cpu", guidance=0.0,
    redecorate_candidates=1000, redecorate_short_lists=True, generator_pool=GENERATOR_POOL)``.

    The generator is DAO-G with ``weights``, by default the shipped weights for cells of <= 20 atoms alone (larger
    cells get no generated candidates: the 21-52-atom weights add nothing there, see docs/methods.md). Template-free
    targets, and targets with fewer than ``n`` template candidates (``redecorate_short_lists``), also get re-decorated
    templates from the same library, at most ``redecorate_candidates`` of them evaluated by CHGNet (0: none). The
    generated slots take the most agreed-on distinct structures of a pool of ``generator_pool`` samples that no
    other candidate of the list matches (:func:`~xtalforge.ranking.consensus_leaders`; 1: the first samples by their
    own score). ``generator="symmetry"``: the symmetry method (library + proposer symmetry, Wyckoff flow; cells up
    to 52 atoms) instead of DAO-G.
    """
    if generator not in ("dao-g", "symmetry"):
        raise XtalforgeError(f"unknown generator '{generator}' for auto (choose dao-g or symmetry)")
    templates = get_method("template", library=library)
    redecorator = None
    if redecorate_candidates > 0:
        redecorator = get_method("redecorate", library=templates.library, max_candidates=redecorate_candidates)

    def make_generator() -> CSPMethod:
        if generator == "symmetry":
            return get_method("symmetry", library=templates.library, steps=steps, device=device,
                              **({"weights": weights} if weights else {}))
        return get_method("dao-g", weights=weights, steps=steps, sampler=sampler, device=device, step_lr=step_lr,
                          guidance=guidance, large_cells=False)

    return TemplatesThenGenerator(templates, make_generator, generator_name=generator, redecorator=redecorator,
                                  redecorate_short_lists=redecorate_short_lists,
                                  generator_pool=GENERATOR_POOL if generator_pool is None else generator_pool)
