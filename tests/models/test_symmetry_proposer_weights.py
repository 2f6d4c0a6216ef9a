"""The shipped symmetry proposer: it loads offline, knows rock salt and MgB2, and every answer is valid."""

from xtalforge.models.symmetry_proposer import SymmetryProposer, propose
from xtalforge.symmetry import check_assignment


def test_shipped_proposer_knows_common_prototypes(one_thread):
    model = SymmetryProposer.load()
    for counts, group in (({11: 1, 17: 1}, 225), ({12: 1, 5: 2}, 191), ({14: 1, 8: 2}, None)):
        answers = propose(model, counts, k=5, z=[1, 2, 3, 4])
        assert len(answers) == 5
        for a in answers:
            got = check_assignment(a.spacegroup, a.orbits)
            assert set(got) == set(counts) and all(got[e] == counts[e] * a.z for e in counts)
        if group is not None:
            assert group in [a.spacegroup for a in answers[:3]], [a.text() for a in answers]
        probs = [a.probability for a in answers]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    # a property target is an input the model uses: it changes the probabilities of the same answers
    free = {(a.spacegroup, a.orbits): a.log_prob for a in propose(model, {11: 1, 17: 1}, k=5)}
    gap = {(a.spacegroup, a.orbits): a.log_prob for a in propose(model, {11: 1, 17: 1}, {"band_gap": 5.0}, k=5)}
    shared = set(free) & set(gap)
    assert shared and any(abs(free[s] - gap[s]) > 1e-4 for s in shared)


def test_scoring_a_given_answer_agrees_with_the_beam_search(one_thread):
    from xtalforge.models.symmetry_proposer.propose import answer_log_probs

    model = SymmetryProposer.load()
    found = propose(model, {8: 6, 22: 2, 38: 2}, k=5)
    scored = answer_log_probs(model, [(a.spacegroup, tuple(reversed(a.orbits))) for a in found])  # any orbit order
    assert [round(float(s), 4) for s in scored] == [round(a.log_prob, 4) for a in found]
    assert answer_log_probs(model, [(225, ((11, 0),) * 30)])[0] == float("-inf")  # 30 Na per cell: no token
