"""The symmetry proposer: its grammar admits exactly the assignments the Wyckoff layer accepts, a tiny model learns a
few crystals' symmetry, and every proposal holds the composition."""

from collections import Counter

import numpy as np
import pytest
import torch

from xtalforge.data import load_split
from xtalforge.data.symmetric import SymmetricDataset
from xtalforge.errors import XtalforgeError
from xtalforge.models.symmetry_proposer import ProposerConfig, SymmetryProposer, encode, propose
from xtalforge.models.symmetry_proposer.model import ProposerBatch
from xtalforge.models.symmetry_proposer.tokens import group_tables
from xtalforge.symmetry import assignments, check_assignment, from_structure


@pytest.fixture(scope="module")
def crystals():
    data = load_split("mp_20_biternary", "val")
    rows = [from_structure(data[i]) for i in range(24)]
    return SymmetricDataset.from_crystals(rows, np.full((len(rows), 2), np.nan))


@pytest.mark.parametrize("group", [2, 14, 62, 139, 194, 225])
def test_fillable_counts_are_those_with_an_assignment(group):
    _, _, fill = group_tables(group)
    for count in range(1, 13):
        try:
            exists = bool(assignments(group, {8: count}, limit=1))
        except XtalforgeError:
            exists = False
        assert fill[-1, count] == exists, (group, count)


def test_the_grammar_admits_every_true_letter(crystals):
    seq = encode(crystals)
    assert len(seq) == len(crystals)
    valid = seq.letters >= 0
    rows, steps = np.nonzero(valid)
    assert seq.masks[rows, steps, seq.letters[rows, steps]].all()


def test_a_tiny_model_learns_its_crystals_and_every_proposal_is_valid(crystals, one_thread):
    torch.manual_seed(0)
    seq = encode(crystals)
    model = SymmetryProposer(ProposerConfig(hidden=48, layers=2, heads=4, dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(200):
        loss, logs = model.loss(ProposerBatch(seq, np.arange(len(seq))), gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or logs["loss"]
    assert logs["loss"] < 0.3 * first
    hits = 0
    for i in range(len(crystals)):
        truth = crystals[i]
        counts = check_assignment(truth.spacegroup, [(o.number, o.index) for o in truth.orbits])
        answers = propose(model, dict(counts), k=5)
        assert answers and all(a.log_prob <= 0 for a in answers)
        for a in answers:
            assert check_assignment(a.spacegroup, a.orbits) == counts
        best = answers[0]
        hits += best.spacegroup == truth.spacegroup and Counter(best.orbits) == Counter(
            (o.number, o.index) for o in truth.orbits)
    assert hits >= 0.7 * len(crystals)


def test_bad_requests_are_one_line_errors():
    model = SymmetryProposer(ProposerConfig(hidden=16, layers=1, heads=2))
    with pytest.raises(XtalforgeError, match="empty composition"):
        propose(model, {})
    with pytest.raises(XtalforgeError, match="unknown property"):
        propose(model, {11: 1, 17: 1}, properties={"bandgap": 1.0})
    with pytest.raises(XtalforgeError, match="formula units"):
        propose(model, {11: 1, 17: 1}, z=[0])


def test_the_symmetry_method_samples_the_proposed_groups(one_thread):
    from xtalforge.backbone.crysformer import CrysformerConfig
    from xtalforge.composition import Target
    from xtalforge.models.wyckoff_flow import SymmetryMethod, WyckoffFlow
    from xtalforge.symmetry import has_group

    torch.manual_seed(0)
    flow = WyckoffFlow(CrysformerConfig(hidden=16, layers=1, heads=2, n_freq=2, time_dim=8),
                       property_mean=[-1.0, 1.0], property_std=[1.0, 1.0], meta={"max_atoms": 60}).eval()
    proposer = SymmetryProposer(ProposerConfig(hidden=16, layers=1, heads=2)).eval()
    method = SymmetryMethod(flow, steps=2, source="proposer", proposer=proposer, max_requests=3)
    requests = method.requests([11, 11, 17, 17])  # Z = 1 or 2 per primitive cell
    assert 1 <= len(requests) <= 3
    for group, orbits in requests:
        got = check_assignment(group, orbits)
        assert set(got) == {11, 17} and got[11] == got[17] and got[11] in (1, 2)
    out = method.generate([[11, 11, 17, 17]], 6)[0]
    assert len(out) == 6
    for crystal in out:
        assert has_group(crystal, crystal.properties["spacegroup"]) or crystal.properties["spacegroup"] > 1
        counts = Counter(crystal.numbers.tolist())
        assert counts[11] == counts[17] and set(counts) == {11, 17}
    # a reduced formula: the proposer chooses Z as well
    cands = method.predict_target(Target.parse("NaCl"), 4)
    assert len(cands) == 4 and all(Counter(c.numbers.tolist())[11] == Counter(c.numbers.tolist())[17]
                                   for c in cands)
    # auto's generator interface: one sample per cell, repeats spread over the requests
    cells = [[11, 17]] * 3 + [[12, 8, 8]]
    one_each = method.sample_cells(cells, seed=1)
    assert len(one_each) == 4 and all(c is not None for c in one_each)
    assert [sorted(c.numbers.tolist()) for c in one_each[:3]] == [[11, 17]] * 3
    assert Counter(one_each[3].numbers.tolist()) == Counter({8: 2, 12: 1})
    with pytest.raises(XtalforgeError, match="unknown symmetry source"):
        SymmetryMethod(flow, source="oracle")
