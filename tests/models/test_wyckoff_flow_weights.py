"""The shipped Wyckoff flow weights: they load offline and place rock salt in Fm-3m at a sensible cell size."""

from xtalforge.methods import get_method


def test_shipped_weights_build_rock_salt_of_a_sensible_size(one_thread):
    method = get_method("symmetry", spacegroup=225, wyckoff="Na:a Cl:b")
    out = method.generate([[11, 17]], 4)[0]
    assert all(c.properties["spacegroup"] == 225 for c in out)
    # experiment: a = 5.64 A, i.e. 44.9 A^3 per primitive cell; an untrained model is nowhere near
    volumes = sorted(c.volume for c in out)
    assert 30 < volumes[len(volumes) // 2] < 65
