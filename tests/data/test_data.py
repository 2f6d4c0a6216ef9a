import time

import numpy as np
import pandas as pd
import pytest

from xtalforge.data import CrystalDataset, check_no_leak, collate, load_csv, load_split
from xtalforge.data.batch import size_bucketed_batches
from xtalforge.errors import ProtocolError, XtalforgeError


@pytest.fixture
def csv_file(tmp_path, nacl, triclinic):
    rows = [
        {"material_id": "a", "cif": nacl.to_cif_string(), "energy": -1.0},
        {"material_id": "b", "cif": "data_broken\n_cell_length_a 1\n", "energy": 0.0},
        {"material_id": "c", "cif": triclinic.to_cif_string(), "energy": 2.0},
    ]
    path = tmp_path / "set.csv.gz"
    pd.DataFrame(rows).to_csv(path)
    return path


def test_load_csv_skips_bad_rows_and_caches(csv_file, tmp_path, monkeypatch, nacl):
    monkeypatch.setenv("XTALFORGE_CACHE", str(tmp_path / "cache"))
    data = load_csv(csv_file)
    assert len(data) == 2 and data.skipped == {"malformed CIF": 1}
    assert data.ids == ["a", "c"]
    assert list(data.num_atoms) == [8, 5]
    assert data[0].num_atoms == 8 and data[1].properties["energy"] == 2.0
    assert list((tmp_path / "cache").iterdir())
    again = load_csv(csv_file)
    np.testing.assert_array_equal(again.frac_coords, data.frac_coords)
    # a subset keeps the file's sha256; rows_sha256 tells subsets apart
    assert again.rows_sha256() == data.rows_sha256() and data.subset([1, 0]).sha256 == data.sha256
    assert len({data.rows_sha256(), data.subset([1, 0]).rows_sha256(), data.subset([0]).rows_sha256()}) == 3


def test_missing_cif_column(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"a": [1]}).to_csv(path)
    with pytest.raises(XtalforgeError, match="no 'cif' column"):
        load_csv(path)


def test_collate_pads_and_masks(nacl, triclinic):
    data = CrystalDataset.from_crystals([nacl, triclinic])
    batch = collate(data, [1, 0])
    assert batch.frac.shape == (2, 8, 3) and batch.mask.sum().item() == 13
    assert batch.types[0, 5:].eq(0).all() and batch.types[1].tolist() == nacl.numbers.tolist()
    back = batch.crystals()
    np.testing.assert_allclose(back[0].frac_coords, triclinic.frac_coords, atol=1e-6)


def test_size_buckets_cover_all_rows_once():
    sizes = np.random.default_rng(0).integers(1, 52, size=500)
    batches = size_bucketed_batches(sizes, 1000, rng=np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    assert all(sizes[b].max() * len(b) <= 1000 for b in batches if len(b) > 1)


def test_real_split_loads_fast_the_second_time():
    load_split("perov_5", "test")
    t = time.perf_counter()
    data = load_split("perov_5", "test")
    assert time.perf_counter() - t < 5 and len(data) > 3000 and set(data.num_atoms) == {5}


def test_protocol_refuses_test_ids():
    test = load_split("perov_5", "test")
    with pytest.raises(ProtocolError, match="perov_5 test split"):
        check_no_leak(test.subset([0, 1, 2]), "perov_5")
    check_no_leak(load_split("perov_5", "val"), "perov_5")


def test_every_shipped_weight_file_is_small_and_has_a_model_card():
    from xtalforge.checkpoints import WEIGHTS_DIR

    files = [p for p in WEIGHTS_DIR.iterdir() if p.suffix in (".pt", ".npz")]
    assert len(files) >= 10
    for p in files:
        assert p.stat().st_size < 25 * 2**20, f"{p.name} is over 25 MB"
        card = p.with_suffix(".md")
        assert card.is_file() and len(card.read_text()) > 200, f"{p.name} has no model card"


def test_aflow_pretraining_structures_hold_no_test_formula_or_property_test_structure():
    from xtalforge.data.protocol import BENCHMARKS, aflow_structures, data_root
    from xtalforge.evaluation.matching import composition_key

    extra = aflow_structures()
    assert 2000 < len(extra) < 4905  # 4,905 distinct structures in the five property sets, before the filters
    formulas = {composition_key(extra.atoms_of(i)) for i in range(len(extra))}
    for b in BENCHMARKS.values():
        test = load_split(b.name, b.test_split)
        assert not formulas & {composition_key(test.atoms_of(i)) for i in range(len(test))}, b.name
        check_no_leak(extra, b.name)
    assert all(mid.startswith("aflow:") for mid in extra.ids) and len(set(extra.ids)) == len(extra)
    prop_test = load_csv(data_root() / "aflow_properties" / "bulk_modulus" / "test.csv.gz")
    def key(data, i):  # atoms and lattice (lattices alone coincide: cubic cells of different compounds)
        return data.atoms_of(i).tobytes(), np.round(data.lattices[i], 4).tobytes()

    test_cells = {key(prop_test, i) for i in range(len(prop_test))}
    assert not any(key(extra, i) in test_cells for i in range(len(extra)))
    assert composition_key(np.array([8, 26, 26, 8, 8, 8])) == ((8, 2), (26, 1))
