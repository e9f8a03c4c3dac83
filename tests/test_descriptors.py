"""The data-driven symmetry-function set (preset "auto")."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from conftest import DATA, need
from test_fingerprints import reference_fingerprints

from hpcpot.potential.fingerprints import fingerprints, shortest_distances
from hpcpot.potential.structures import structure_arrays
from hpcpot.training.config import ConfigError, FingerprintConfig, parse_config
from hpcpot.training.descriptors import generated_set


def _water_structures():
    from hpcpot.training.data import read_structures

    st, _ = read_structures([str(need(DATA / "water_n2p2_rpbed3_small.extxyz.gz"))], need_forces=False, index=":5")
    return st


def test_generated_set_is_deterministic_and_covers_every_pair():
    st = _water_structures()
    cfg = FingerprintConfig(cutoff=6.0, preset="auto", n_radial=6)
    r = shortest_distances(st, cfg.cutoff)
    assert r.shape == (2, 2) and np.allclose(r, r.T) and 0.8 < r[0, 1] < 1.2  # an O-H bond
    a, b = generated_set(cfg, ["H", "O"], r), generated_set(cfg, ["O", "H"], r.copy())
    assert a.to_dict() == b.to_dict()
    for el, fs in a.to_dict()["functions"].items():
        g2 = [f for f in fs if f["type"] == "G2"]
        assert sorted({f["element"] for f in g2}) == ["H", "O"] and len(g2) == 12
        g4_pairs = {tuple(f["elements"]) for f in fs if f["type"] == "G4"}
        assert g4_pairs == {("H", "H"), ("H", "O"), ("O", "O")}
        keys = [tuple(sorted((k, str(v)) for k, v in f.items())) for f in fs]
        assert len(set(keys)) == len(keys)  # every function distinct
        # the radial grid starts at the shortest distance of that pair and stays inside the cutoff
        for other in ("H", "O"):
            rs = sorted(f["Rs"] for f in g2 if f["element"] == other)
            i, j = ["H", "O"].index(el), ["H", "O"].index(other)
            assert rs[0] == pytest.approx(np.floor(r[i, j] * 100) / 100) and rs[-1] < cfg.cutoff


def test_generated_shifted_g2_match_reference():
    """Fingerprints of a generated set against the straightforward reference implementation
    (shifted G2 with one eta per neighbour pair are expressed there one pair at a time)."""
    atoms = bulk("Mo", "bcc", a=3.16, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    cfg = FingerprintConfig(cutoff=5.2, preset="auto", n_radial=5)
    st = structure_arrays(atoms, ("Mo",))
    sf = generated_set(cfg, ["Mo"], shortest_distances(st, cfg.cutoff))
    d = sf.to_dict()["functions"]["Mo"]
    g2 = [f for f in d if f["type"] == "G2"]
    g4 = [f for f in d if f["type"] == "G4"]
    G = fingerprints(atoms, sf)
    for k, f in enumerate(g2):
        ref = reference_fingerprints(atoms, 5.2, {"Mo": {"g2_etas": [f["eta"]], "g2_offsets": [f["Rs"]],
                                                         "g4_etas": [], "g4_zetas": [], "g4_gammas": []}})  # fmt: skip
        assert np.allclose(G[:, k], ref[:, 0], rtol=1e-10, atol=1e-12)
    etas = sorted({f["eta"] for f in g4})
    zetas = sorted({f["zeta"] for f in g4})
    assert zetas == [1.0, 2.0, 4.0, 16.0]  # one element: the four zetas
    ref = reference_fingerprints(atoms, 5.2, {"Mo": {"g2_etas": [], "g2_offsets": [0.0], "g4_etas": etas,
                                                     "g4_zetas": zetas, "g4_gammas": [1.0, -1.0]}})  # fmt: skip
    assert np.allclose(G[:, len(g2):], ref, rtol=1e-10, atol=1e-12)


def test_auto_is_the_default():
    assert parse_config({"data": {"train": ["x"]}}).fingerprints.preset == "auto"


def test_auto_with_explicit_radial_lists_is_a_config_error():
    with pytest.raises(ConfigError, match="g2_etas"):
        parse_config({"data": {"train": ["x"]}, "fingerprints": {"preset": "auto", "g2_etas": [1.0]}})
    with pytest.raises(ConfigError, match="n_radial"):
        parse_config({"data": {"train": ["x"]}, "fingerprints": {"preset": "auto", "n_radial": 0}})


def test_unseen_pair_takes_the_shortest_seen_distance():
    st = structure_arrays(molecule("H2O"), ("H", "O"))
    r = shortest_distances(st, 6.0)
    assert np.isfinite(r[0]).all() and r[1, 1] == np.inf  # one O: no O-O pair
    sf = generated_set(FingerprintConfig(cutoff=6.0, preset="auto", n_radial=4), ["H", "O"], r)
    oo = [f["Rs"] for f in sf.to_dict()["functions"]["O"] if f["type"] == "G2" and f["element"] == "O"]
    assert oo[0] == pytest.approx(np.floor(r[0, 1] * 100) / 100)  # the O-H bond, the shortest seen
