"""Evaluation harness: matching fidelity, resumable stages, time-outs, Dask, summaries, de novo metrics."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from xtalforge.crystal import Crystal
from xtalforge.data.dataset import CrystalDataset
from xtalforge.errors import XtalforgeError
from xtalforge.evaluation.csp import (
    evaluate_csp,
    generate_candidates,
    markdown_table,
    match_candidates,
    read_jsonl,
    summarize_csp,
    template_free_mask,
)
from xtalforge.evaluation.denovo import coverage, evaluate_denovo, smact_validity, structure_validity
from xtalforge.evaluation.matching import (
    MatchTolerance,
    PairMatcher,
    lattice_mappings,
    lll_reduce,
    to_structure,
)
from xtalforge.evaluation.workers import MatchWorker, make_task
from xtalforge.methods import CSPMethod

# ----------------------------------------------------------------------------------------------- small crystals


def _from_spacegroup(sg: str, lattice, species, coords) -> Crystal:
    from pymatgen.core import Structure

    return Crystal.from_structure(Structure.from_spacegroup(sg, lattice, species, coords))


@pytest.fixture(scope="module")
def crystals() -> list[Crystal]:
    """Five crystals with distinct compositions (2-8 atoms)."""
    from pymatgen.core import Lattice

    return [
        _from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        _from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
        _from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.2), ["Zn", "O"],
                         [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]]),
        _from_spacegroup("Pm-3m", Lattice.cubic(4.12), ["Cs", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Crystal(np.array([[4.1, 0.2, 0.1], [0.5, 5.2, 0.3], [0.4, 0.7, 6.3]]),
                np.random.default_rng(0).uniform(size=(5, 3)), [8, 8, 22, 20, 8]),  # CaTiO3, P1
    ]


@pytest.fixture(scope="module")
def dataset(crystals) -> CrystalDataset:
    import pandas as pd

    meta = pd.DataFrame({"material_id": [f"x-{i}" for i in range(len(crystals))]})
    return CrystalDataset.from_crystals(crystals, meta=meta, source="synthetic")


def _perturbed(c: Crystal, rng, frac_noise: float = 0.01, strain: float = 0.01) -> Crystal:
    lattice = c.lattice @ (np.eye(3) + rng.normal(0, strain, (3, 3)))
    return Crystal(lattice, c.frac_coords + rng.normal(0, frac_noise, c.frac_coords.shape), c.numbers)


class PerturbMethod(CSPMethod):
    """Test double of a CSP method: even ranks are perturbed copies of the answer, odd ranks random positions."""

    name = "perturb-test"
    max_atoms = 6

    def __init__(self, answers: list[Crystal]) -> None:
        self.answers = {tuple(sorted(c.numbers.tolist())): c for c in answers}
        self.calls: list[int] = []

    def generate(self, targets, n, seed=0):
        self.calls.append(len(targets))
        rng = np.random.default_rng(seed)
        out = []
        for numbers in targets:
            true = self.answers[tuple(sorted(numbers))]
            cands = []
            for rank in range(n):
                if rank % 2 == 0:
                    c = _perturbed(true, rng)
                else:
                    c = Crystal(true.lattice, rng.uniform(size=true.frac_coords.shape), true.numbers)
                c.properties["score"] = -float(rank)
                cands.append(c)
            out.append(cands)
        return out

    def settings(self) -> dict:
        return {"method": self.name}


# ----------------------------------------------------------------------------------------------- pair matching


def test_perturbed_copy_matches_with_small_rms(crystals):
    rng = np.random.default_rng(1)
    fast, reference = PairMatcher(), PairMatcher(engine="pymatgen")
    for c in crystals:
        cand = _perturbed(c, rng, frac_noise=0.005).to_structure()
        got = fast.rms(fast.prepare(cand), fast.prepare(c.to_structure()))
        want = reference.rms(cand, c.to_structure())
        assert got is not None and got[0] < 0.05
        assert got[0] == pytest.approx(want[0], abs=1e-9) and got[1] == pytest.approx(want[1], abs=1e-9)


def test_different_structure_does_not_match(crystals):
    from pymatgen.core import Lattice

    rocksalt = crystals[0]
    cscl_type = _from_spacegroup("Pm-3m", Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    m = PairMatcher()
    assert m.rms(m.prepare(cscl_type.to_structure()), m.prepare(rocksalt.to_structure())) is None
    assert PairMatcher(engine="pymatgen").rms(cscl_type.to_structure(), rocksalt.to_structure()) is None


def test_fast_engine_agrees_with_pymatgen_on_random_pairs(crystals):
    """Same decisions and RMS as get_rms_dist on matching and non-matching pairs, incl. a low-symmetry cell."""
    rng = np.random.default_rng(3)
    fast, reference = PairMatcher(), PairMatcher(engine="pymatgen")
    checked = matched = 0
    for c in crystals:
        target = c.to_structure()
        prepared = fast.prepare(target)
        for j in range(4):
            noise = 0.02 * (j + 1) if j < 3 else None
            cand = _perturbed(c, rng, noise) if noise else Crystal(c.lattice, rng.uniform(size=c.frac_coords.shape),
                                                                   c.numbers)
            got = fast.rms(fast.prepare(cand.to_structure()), prepared)
            want = reference.rms(cand.to_structure(), target)
            assert (got is None) == (want is None)
            if got is not None:
                matched += 1
                assert got[0] == pytest.approx(want[0], abs=1e-9)
            checked += 1
    assert checked == 20 and 0 < matched < 20


def test_lll_and_lattice_mappings_reproduce_pymatgen():
    from pymatgen.core import Lattice

    rng = np.random.default_rng(4)
    for _ in range(300):
        m = rng.normal(size=(3, 3)) * rng.uniform(0.5, 8) + np.diag(rng.uniform(0, 6, 3))
        if abs(np.linalg.det(m)) < 1e-2:
            continue
        want_matrix, want_mapping = Lattice(m)._calculate_lll()
        got_matrix, got_mapping = lll_reduce(m)
        assert np.array_equal(got_mapping, want_mapping)
        np.testing.assert_allclose(got_matrix, want_matrix, atol=1e-10)
    for _ in range(30):
        m1 = rng.normal(size=(3, 3)) + 4 * np.eye(3)
        m2 = m1 @ (np.eye(3) + rng.normal(0, 0.05, (3, 3)))
        want = [lat.matrix for lat, _, sc in Lattice(m1).find_all_mappings(Lattice(m2), 0.3, 10, True)
                if abs(abs(np.linalg.det(sc)) - 1) <= 0.5]
        got = lattice_mappings(m1, m2, 0.3, 10)
        assert len(got) == len(want)
        if want:
            np.testing.assert_array_equal(got, np.stack(want))


# ----------------------------------------------------------------------------------------------- summaries


def _write_matches(path, rows):
    with open(path, "w") as fh:
        for index, rms, valid in rows:
            fh.write(json.dumps({
                "index": index, "material_id": f"x-{index}", "k_max": 3, "rms": rms,
                "timed_out": [False] * len(rms),
                "status": ["match" if r is not None else "no_match" for r in rms],
                "struct_valid": valid, "smact_valid": True, "seconds": 0.1,
            }) + "\n")


def test_summarize_counts_match_rate_and_rmse_at_k(tmp_path):
    path = tmp_path / "matches.jsonl"
    _write_matches(path, [
        (0, [0.10, 0.05, None], [True, True, True]),  # k=1: 0.10; k=3: 0.05
        (1, [None, 0.20, None], [True, False, True]),  # matched only from k=2, by an invalid candidate
        (2, [None, None, None], [True, True, True]),
        (3, [None, None, 0.30], [True, True, True]),
    ])
    s = summarize_csp(path, ks=(1, 3), subset_mask=np.array([False, True, True, True]))
    assert s["entries"] == 4 and s["pairs"] == 12
    assert s["metrics"]["1"] == {"match_rate": 25.0, "rmse": pytest.approx(0.10), "matched": 1, "entries": 4}
    assert s["metrics"]["3"]["match_rate"] == 75.0
    assert s["metrics"]["3"]["rmse"] == pytest.approx((0.05 + 0.20 + 0.30) / 3)
    assert s["metrics_valid_only"]["3"]["matched"] == 2  # entry 1's only match is structurally invalid
    sub = s["template_free"]
    assert sub["entries"] == 3 and sub["metrics"]["3"]["matched"] == 2 and sub["metrics"]["1"]["matched"] == 0
    assert summarize_csp(path, ks=(3,), subset_mask={0})["template_free"]["metrics"]["3"]["matched"] == 1
    with pytest.raises(XtalforgeError, match="k_max=3"):
        summarize_csp(path, ks=(20,))


def test_template_free_mask(dataset, crystals):
    library = CrystalDataset.from_crystals([crystals[0], crystals[3]])  # anonymous formulas (4, 4) and (1, 1)
    mask = template_free_mask(dataset, library)
    # NaCl (4,4) and CsBr (1,1) are known; SrTiO3 (1,1,3), ZnO (2,2) and CaTiO3 (1,1,3) are not
    assert mask.tolist() == [False, True, True, False, True]


# ----------------------------------------------------------------------------------------------- resumable stages


def test_generation_resumes_without_recomputing(tmp_path, dataset, crystals):
    full = tmp_path / "full.jsonl"
    method = PerturbMethod(crystals)
    generate_candidates(method, dataset, 4, full, chunk=2, progress=False)
    assert method.calls == [1, 2, 1]  # row 0 (8 atoms) exceeds max_atoms 6: recorded, not generated
    lines = full.read_text().splitlines(keepends=True)
    assert len(lines) == 5 and "max_atoms" in lines[0]

    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:3]) + lines[3][:25])  # killed half way through writing the second chunk
    method2 = PerturbMethod(crystals)
    stats = generate_candidates(method2, dataset, 4, part, chunk=2, progress=False)
    assert method2.calls == [2, 1] and stats["generated"] == 2  # chunk 1 regenerated whole, row 3 and 4 written
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(part)]
    assert sorted(r["index"] for r in strip) == [0, 1, 2, 3, 4]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(full)]
    method3 = PerturbMethod(crystals)
    assert generate_candidates(method3, dataset, 4, part, chunk=2, progress=False)["generated"] == 0
    assert method3.calls == []


def test_corrupt_line_inside_a_results_file_is_refused(tmp_path, dataset, crystals):
    path = tmp_path / "candidates.jsonl"
    path.write_text('{"index": 1, "candidates": []}\n{"index": 2, "cand\n{"index": 3, "candidates": []}\n')
    with pytest.raises(XtalforgeError, match="corrupt line"):
        generate_candidates(PerturbMethod(crystals), dataset, 2, path, progress=False)


def test_matching_resumes_and_counts(tmp_path, dataset, crystals, monkeypatch):
    cands = tmp_path / "candidates.jsonl"
    PerturbMethod.max_atoms = 8
    try:
        generate_candidates(PerturbMethod(crystals), dataset, 4, cands, progress=False)
    finally:
        PerturbMethod.max_atoms = 6
    full = tmp_path / "full.jsonl"
    match_candidates(dataset, cands, full, k_max=4, workers=0, progress=False)
    records = {r["index"]: r for r in read_jsonl(full)}
    assert len(records) == 5
    for r in records.values():  # every perturbed copy (even rank) matches
        assert all(r["status"][j] == "match" for j in (0, 2)), r

    lines = full.read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:2]) + lines[2][:30])
    calls = []
    original = PairMatcher.rms
    monkeypatch.setattr(PairMatcher, "rms", lambda self, c, t: calls.append(1) or original(self, c, t))
    stats = match_candidates(dataset, cands, part, k_max=4, workers=0, progress=False)
    assert stats["entries"] == 3 and stats["pairs"] == 12 and len(calls) == 12  # two rows were not redone
    resumed = {r["index"]: r for r in read_jsonl(part)}
    assert len(part.read_text().splitlines()) == 5
    assert {i: r["rms"] for i, r in resumed.items()} == {i: r["rms"] for i, r in records.items()}
    assert summarize_csp(part, ks=(1, 4))["metrics"] == summarize_csp(full, ks=(1, 4))["metrics"]


def _tasks(dataset, crystals, timeout, n=3, tol=None):
    rng = np.random.default_rng(7)
    out = []
    for i, c in enumerate(crystals):
        cands = [_perturbed(c, rng) for _ in range(n)]
        target = (dataset.lattices[i], c.frac_coords, c.numbers)
        out.append((i, make_task(target, [(x.lattice, x.frac_coords, x.numbers) for x in cands],
                                 tol or MatchTolerance(), timeout)))
    return out


def test_slow_pair_times_out_in_process(dataset, crystals, monkeypatch):
    from xtalforge.evaluation.workers import run_tasks

    def slow(self, cand, target):
        time.sleep(5)

    monkeypatch.setattr(PairMatcher, "rms", slow)
    start = time.perf_counter()
    results = dict(run_tasks(_tasks(dataset, crystals[1:3], timeout=0.2, n=2), workers=0))
    assert time.perf_counter() - start < 4
    assert [r["status"] for rs in results.values() for r in rs] == ["timeout"] * 4


def test_time_limit_in_child_process_records_timeouts(tmp_path, dataset, crystals):
    from xtalforge.evaluation.workers import run_tasks

    results = dict(run_tasks(_tasks(dataset, crystals, timeout=1e-4), workers=1))
    statuses = [r["status"] for rs in results.values() for r in rs]
    assert len(statuses) == 15 and statuses.count("timeout") >= 12  # a 0.1 ms limit stops (nearly) every pair


def test_silent_child_is_killed_and_replaced(dataset, crystals):
    worker = MatchWorker()
    try:
        tasks = _tasks(dataset, crystals, timeout=30.0)
        warm = worker.run(tasks[3][1])  # starts the child
        assert [r["status"] for r in warm] == ["match"] * 3
        killed = worker.run(tasks[0][1], hard_limit=1e-3)  # parent gives up on silence after 1 ms
        assert [r["status"] for r in killed] == ["timeout"] * 3 and worker.restarts == 1
        again = worker.run(tasks[1][1])  # a new child takes over
        assert [r["status"] for r in again] == ["match"] * 3
    finally:
        worker.close()


def test_dask_cluster_gives_same_results_as_local_processes(dataset, crystals):
    distributed = pytest.importorskip("distributed")
    from xtalforge.evaluation.workers import run_tasks

    local = dict(run_tasks(_tasks(dataset, crystals, timeout=30.0), workers=2))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            remote = dict(run_tasks(_tasks(dataset, crystals, timeout=30.0), scheduler=client))
    assert sorted(local) == sorted(remote) == [0, 1, 2, 3, 4]
    for key in local:
        assert [(r["rank"], r["status"], r["rms"]) for r in local[key]] == \
               [(r["rank"], r["status"], r["rms"]) for r in remote[key]]


def test_evaluate_csp_writes_report_and_resumes(tmp_path, dataset, crystals):
    PerturbMethod.max_atoms = 8
    try:
        library = CrystalDataset.from_crystals([crystals[0]])
        out = tmp_path / "run"
        report = evaluate_csp(PerturbMethod(crystals), dataset, ks=(1, 2), out_dir=out, workers=0, library=library,
                              progress=False)
        assert report["results"]["metrics"]["1"]["match_rate"] == 100.0
        assert report["results"]["metrics"]["2"]["matched"] == 5
        assert report["results"]["template_free"]["entries"] == 4
        assert report["data"]["entries_evaluated"] == 5 and report["counts"]["pairs"] == 10
        assert report["settings"]["tolerance"] == {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}
        assert report["versions"]["pymatgen"] and report["timings"]["generation_s_per_entry"] is not None
        assert json.loads((out / "report.json").read_text())["results"] == report["results"]
        table = markdown_table(report)
        assert "| all | all | 1 | 100.00 |" in table and "| template-free |" in table

        method = PerturbMethod(crystals)
        again = evaluate_csp(method, dataset, ks=(1, 2), out_dir=out, workers=0, library=library, progress=False)
        assert method.calls == [] and again["results"] == report["results"]
        with pytest.raises(XtalforgeError, match="other settings"):
            evaluate_csp(PerturbMethod(crystals), dataset, ks=(1, 3), out_dir=out, workers=0, progress=False)
        with pytest.raises(XtalforgeError, match="rows_sha256"):  # another subset of the same file
            evaluate_csp(PerturbMethod(crystals), dataset.subset([1, 0, 2]), ks=(1, 2), out_dir=out, workers=0,
                         progress=False)
    finally:
        PerturbMethod.max_atoms = 6


def test_evaluate_csp_limit_samples_reproducibly(tmp_path, dataset, crystals):
    PerturbMethod.max_atoms = 8
    try:
        a = evaluate_csp(PerturbMethod(crystals), dataset, ks=(1,), out_dir=tmp_path / "a", limit=3, seed=5,
                         workers=0, progress=False)
        b = evaluate_csp(PerturbMethod(crystals), dataset, ks=(1,), out_dir=tmp_path / "b", limit=3, seed=5,
                         workers=0, progress=False)
    finally:
        PerturbMethod.max_atoms = 6
    rows_a = sorted(r["index"] for r in read_jsonl(tmp_path / "a" / "matches.jsonl"))
    rows_b = sorted(r["index"] for r in read_jsonl(tmp_path / "b" / "matches.jsonl"))
    assert len(rows_a) == 3 and rows_a == rows_b and a["results"] == b["results"]


# ----------------------------------------------------------------------------------------------- de novo


def test_structure_validity(crystals):
    nacl = crystals[0]
    assert structure_validity(nacl)
    overlapping = Crystal(nacl.lattice, np.vstack([nacl.frac_coords, nacl.frac_coords[:1] + 0.01]),
                          np.concatenate([nacl.numbers, [11]]))
    assert not structure_validity(overlapping)
    # periodic distance: atoms at 0.005 and 0.995 are 0.06 A apart through the cell boundary
    wrapped = Crystal(np.eye(3) * 6.0, [[0.005, 0, 0], [0.995, 0, 0]], [11, 17])
    assert not structure_validity(wrapped)


def test_smact_validity_real_behaviour():
    assert smact_validity([11, 17])  # NaCl: Na+ Cl-
    assert not smact_validity([11, 11, 17])  # Na2Cl: no charge-neutral assignment
    assert smact_validity([26, 8, 8, 26, 8])  # Fe2O3
    assert smact_validity([29, 30])  # CuZn: an all-metal alloy counts as valid
    assert smact_validity([6] * 8)  # a pure element is valid


def test_coverage_definition():
    gen_s = np.array([[0.0, 0.0], [1.0, 1.0]])
    gen_c = np.array([[0.0], [5.0]])
    ref_s = np.array([[0.0, 0.1], [3.0, 3.0]])
    ref_c = np.array([[0.0], [0.0]])
    cov = coverage(gen_s, gen_c, ref_s, ref_c, struct_cutoff=0.4, comp_cutoff=1.0, n_generated=4)
    assert cov == {"cov_recall": 50.0, "cov_precision": 25.0}


def test_evaluate_denovo_small(crystals):
    from pymatgen.core import Lattice

    generated = [crystals[0], crystals[3], Crystal(np.eye(3) * 4, [[0, 0, 0], [0.02, 0, 0]], [11, 17]),
                 _from_spacegroup("Pm-3m", Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])]
    reference = [crystals[0], crystals[3]]
    result = evaluate_denovo(generated, reference, struct_cutoff=0.4, comp_cutoff=10.0)
    assert result["struct_valid"] == 75.0 and result["comp_valid"] == 100.0 and result["valid"] == 75.0
    assert result["cov_recall"] == 100.0  # both references are in the generated set
    # CsCl-type NaCl counts as precise: its structure is near CsBr and its composition is NaCl's (CDVAE takes the
    # structure and composition minima separately); the overlapping pair is near neither structure
    assert result["cov_precision"] == pytest.approx(75.0)
    assert result["n_property_samples"] == 3 and result["wdist_num_elems"] == 0.0
    assert result["wdist_density"] > 0


def test_uniqueness_and_novelty_equal_comparing_every_pair_with_pymatgen():
    """The lattice pre-checks only skip pairs StructureMatcher.fit rejects: on strained copies of graphite (from
    within the matcher's tolerances to far beyond), flags equal a brute-force greedy comparison of all pairs."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    from xtalforge.evaluation.denovo import _can_fit, _lattice_shapes, _lattices_map, _reduced, uniqueness_novelty

    graphite = Structure(Lattice.hexagonal(2.46, 6.7), ["C"] * 4,
                         [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    rng = np.random.default_rng(0)
    crystals = []
    for amount in np.linspace(0.0, 0.35, 36):
        s = graphite.copy()
        s.lattice = Lattice(graphite.lattice.matrix @ (np.eye(3) + amount * rng.uniform(-1, 1, (3, 3))))
        crystals.append(Crystal.from_structure(s))
    generated, training = crystals[::2], crystals[1::2]
    matcher = StructureMatcher()
    gen = [_reduced(c.to_structure())[1] for c in generated]
    train = [_reduced(c.to_structure())[1] for c in training]
    unique, kept = [], []
    for i, s in enumerate(gen):
        unique.append(not any(matcher.fit(s, gen[j], skip_structure_reduction=True) for j in kept))
        kept += [i] if unique[-1] else []
    novel = [not any(matcher.fit(s, t, skip_structure_reduction=True) for t in train) for s in gen]
    result = uniqueness_novelty(generated, training, workers=2)
    assert result["unique_flags"].tolist() == unique and result["novel_flags"].tolist() == novel
    assert 0 < sum(unique) < len(gen) and 0 < sum(novel) < len(gen)  # the case is not trivial either way
    # the pre-checks do rule out pairs, and never one that fits
    possible = _can_fit(_lattice_shapes(gen), _lattice_shapes(train))
    fits = np.array([[matcher.fit(s, t, skip_structure_reduction=True) for t in train] for s in gen])
    maps = np.array([[_lattices_map(s, t) for t in train] for s in gen])
    assert not (fits & ~(possible & maps)).any()
    assert (~possible).any() and (possible & ~maps).any()


def test_to_structure_roundtrip(crystals):
    s = to_structure(crystals[1].lattice, crystals[1].frac_coords, crystals[1].numbers)
    assert s.composition.reduced_formula == "SrTiO3"


def test_cached_fingerprints_are_the_fingerprints(crystals, tmp_path, monkeypatch):
    from xtalforge.data.dataset import CrystalDataset
    from xtalforge.evaluation.denovo import cached_fingerprints, fingerprints

    monkeypatch.setenv("XTALFORGE_CACHE", str(tmp_path))
    data = CrystalDataset.from_crystals(list(crystals)[:3])
    first = cached_fingerprints(data, chunk=2)  # two chunks, merged into one file
    assert len(list(tmp_path.glob("fingerprints_*.npz"))) == 1 and not list(tmp_path.glob("*.parts"))
    again = cached_fingerprints(data)  # read back from the file
    for (s1, _), (s2, c2), (s3, c3) in zip(first, again, fingerprints(list(data))):
        np.testing.assert_allclose(s1, s3)
        np.testing.assert_allclose(s2, s3)
        np.testing.assert_allclose(c2, c3)
