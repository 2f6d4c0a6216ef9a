"""CHGNet relaxation: offline loading, energy goes down, batched energies agree with single ones."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from xtalforge.crystal import Crystal
from xtalforge.errors import StructureError, XtalforgeError
from xtalforge.relax import chgnet_energies, load_chgnet, relax


@pytest.fixture(scope="module")
def perturbed_nacl() -> Crystal:
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.9), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s = s.get_primitive_structure()
    s.make_supercell([1, 1, 2])  # 4 atoms, so the perturbation is not just a rigid shift
    rng = np.random.default_rng(0)
    c = Crystal.from_structure(s, {"material_id": "nacl"})
    return Crystal(c.lattice, c.frac_coords + rng.normal(scale=0.03, size=c.frac_coords.shape), c.numbers,
                   c.properties)


def test_model_loads_without_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    load_chgnet.cache_clear()
    model = load_chgnet()
    assert model is not None


@pytest.fixture(scope="module")
def relaxed(perturbed_nacl: Crystal, tmp_path_factory) -> tuple:
    path = tmp_path_factory.mktemp("relax") / "nacl.traj"
    return relax(perturbed_nacl, steps=5, trajectory=path), path


def test_relax_lowers_energy(perturbed_nacl: Crystal, relaxed: tuple) -> None:
    result, path = relaxed
    assert result.steps <= 5 and len(result.energies) == result.steps + 1
    assert result.energies[-1] < result.energies[0] - 1e-3  # eV/atom
    crystal = result.crystal
    assert crystal.properties["energy_per_atom"] == pytest.approx(result.energies[-1])
    assert crystal.properties["material_id"] == "nacl"
    assert sorted(crystal.numbers.tolist()) == sorted(perturbed_nacl.numbers.tolist())
    assert path.is_file()
    # a pymatgen Structure is accepted too, and fixing the cell keeps the lattice
    fixed = relax(perturbed_nacl.to_structure(), steps=1, relax_cell=False, optimizer="BFGS")
    np.testing.assert_allclose(fixed.crystal.lattice, perturbed_nacl.lattice, atol=1e-8)


def test_batched_energies(perturbed_nacl: Crystal, relaxed: tuple) -> None:
    relaxed = relaxed[0].crystal
    energies = chgnet_energies([perturbed_nacl, relaxed, perturbed_nacl], batch_size=2)
    assert energies.shape == (3,)
    assert energies[0] == pytest.approx(energies[2], abs=1e-5)
    assert energies[1] == pytest.approx(relaxed.properties["energy_per_atom"], abs=1e-4)
    assert energies[1] < energies[0]
    # two worker processes give each crystal the energy one process gives it, in the same order
    several = [perturbed_nacl, relaxed] * 5
    np.testing.assert_allclose(chgnet_energies(several, batch_size=2, workers=2),
                               chgnet_energies(several, batch_size=2), atol=1e-5)


def test_bad_arguments(perturbed_nacl: Crystal) -> None:
    with pytest.raises(XtalforgeError, match="potential"):
        relax(perturbed_nacl, potential="m3gnet")
    with pytest.raises(XtalforgeError, match="optimizer"):
        relax(perturbed_nacl, optimizer="LBFGS-B")


def test_template_candidates_relaxed_and_ranked_by_energy() -> None:
    from pymatgen.core import Lattice, Structure

    from xtalforge.templates import TemplateCSP, TemplateLibrary

    def proto(sg: str, a: float, coords: list, mid: str) -> Crystal:
        s = Structure.from_spacegroup(sg, Lattice.cubic(a), ["Na", "Cl"], coords).get_primitive_structure()
        return Crystal.from_structure(s, {"material_id": mid})

    library = TemplateLibrary.from_crystals([
        proto("Fm-3m", 5.64, [[0, 0, 0], [0.5, 0.5, 0.5]], "rock-salt"),
        proto("Pm-3m", 3.45, [[0, 0, 0], [0.5, 0.5, 0.5]], "cscl"),
    ])
    method = TemplateCSP(library, relax="chgnet", relax_top=2, relax_steps=2)
    cands = method.generate([[19, 35]], n=2)[0]
    assert len(cands) == 2
    energies = [c.properties["energy_per_atom"] for c in cands]
    assert energies == sorted(energies)  # best (lowest eV/atom) first
    assert [c.properties["score"] for c in cands] == pytest.approx([-e for e in energies])
    assert all("template_id" in c.properties for c in cands)


def test_collapsed_cell_is_refused_not_relaxed(perturbed_nacl: Crystal) -> None:
    # NaCl has 25.7 A^3/atom; a tenth of it is below MIN_VOLUME_PER_ATOM (3), where CHGNet's graph can explode
    c = perturbed_nacl
    collapsed = Crystal(c.lattice * 0.1 ** (1 / 3), c.frac_coords, c.numbers)
    with pytest.raises(StructureError, match="collapsed to 2.57 A"):
        relax(collapsed, steps=5)


def test_left_handed_cell_relaxes_like_its_right_handed_twin() -> None:
    # CHGNet divides its stress by the signed volume: before right_handed() a left-handed cell (half of all DAO-G
    # samples) had its cell moved uphill, and correct structures collapsed
    a = 5.64 * 1.06  # rock salt NaCl, expanded: relaxation must shrink it
    lattice = np.diag([a, a, a])
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                     [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
    right = Crystal(lattice, frac, [11] * 4 + [17] * 4)
    left = Crystal(-lattice, (-frac) % 1.0, right.numbers)
    assert np.linalg.det(left.lattice) < 0 and np.linalg.det(left.right_handed().lattice) > 0
    np.testing.assert_allclose(left.right_handed().cart_coords % a, right.cart_coords % a, atol=1e-9)
    r_right, r_left = relax(right, steps=15), relax(left, steps=15)
    assert r_left.crystal.volume < right.volume - 1.0
    assert r_left.crystal.volume == pytest.approx(r_right.crystal.volume, rel=1e-6)
    assert r_left.energies[-1] == pytest.approx(r_right.energies[-1], abs=1e-6)
