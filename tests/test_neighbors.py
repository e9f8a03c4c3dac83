"""The direct (numba) neighbour list against vesin's: the same pairs and vectors."""

from __future__ import annotations

import numpy as np
import pytest
import vesin
from conftest import DATA, need

from hpcpot.potential import neighbors
from hpcpot.potential.neighbors import neighbor_list
from hpcpot.training.data import read_structures


def _vesin(pos, cell, pbc, rc):
    nl = vesin.NeighborList(cutoff=rc, full_list=True, sorted=True)
    i, j, D = nl.compute(np.asarray(pos, float), np.asarray(cell, float), np.asarray(pbc, bool), "ijD")
    return i.astype(np.int64), j.astype(np.int64), D


def _same(pos, cell, pbc, rc):
    a = _vesin(pos, cell, pbc, rc)
    b = neighbor_list(pos, cell, pbc, rc)
    assert np.all(np.diff(b[0]) >= 0)  # sorted by centre
    key = lambda t: sorted(zip(t[0].tolist(), t[1].tolist(), np.round(t[2], 9).tolist()))  # noqa: E731
    assert key(a) == key(b)
    return len(a[0])


def _direct_used(pos, cell, pbc, rc) -> bool:
    wrapped, nsh = np.empty_like(np.asarray(pos, float)), np.zeros(3, np.int64)
    ok = neighbors._direct_setup(np.asarray(pos, float), np.asarray(cell, float), np.asarray(pbc, bool), rc, wrapped, nsh)
    return bool(ok) and len(pos) ** 2 * int(np.prod(2 * nsh + 1)) <= neighbors.DIRECT_MAX_CHECKS


@pytest.mark.parametrize(("name", "rc", "index"), [
    ("o_pt111_emt_3000.traj", 6.5, "::300"), ("mo_mlearn_pbe.extxyz.gz", 5.2, "::20"),
    ("tio2_aenet_pbe.extxyz.gz", 5.5, ":10"), ("water_n2p2_rpbed3_small.extxyz.gz", 6.0, ":"),
])  # fmt: skip
def test_real_sets(name, rc, index):
    st, _ = read_structures([str(need(DATA / name))], need_forces=False, index=index)
    assert st.n_images >= 2
    for k in range(st.n_images):
        pos = st.positions[st.atom_ptr[k] : st.atom_ptr[k + 1]]
        assert _same(pos, st.cells[k], st.pbc[k], rc) > 0
        assert _direct_used(pos, st.cells[k], st.pbc[k], rc) or len(pos) > 150


def test_triclinic_unwrapped_small_cells_and_molecules():
    rng = np.random.default_rng(3)
    for _ in range(20):
        cell = np.diag(rng.uniform(3.0, 6.0, 3)) + rng.uniform(-1.5, 1.5, (3, 3)) * (1 - np.eye(3))
        n = int(rng.integers(1, 12))
        frac = rng.uniform(-1.5, 2.5, (n, 3))  # atoms outside the cell too
        pos = frac @ cell
        for pbc in ([True, True, True], [True, True, False], [True, False, False]):
            rc = float(rng.uniform(2.0, 7.0))  # also beyond the cell's size: many images
            _same(pos, cell, pbc, rc)
            assert _direct_used(pos, cell, pbc, rc)
    mol = rng.uniform(0, 6, (10, 3))
    assert _same(mol, np.zeros((3, 3)), [False] * 3, 4.0) > 0  # no cell at all
    assert _direct_used(mol, np.zeros((3, 3)), [False] * 3, 4.0)


def test_singular_periodic_cell_goes_to_vesin():
    cell = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 0]])
    pos = np.random.default_rng(0).uniform(0, 4, (6, 3)) * [1, 1, 0]
    assert not _direct_used(pos, cell, [True, True, False], 3.0)
    i, j, D = neighbor_list(pos, cell, [True, True, False], 3.0)
    assert len(i) == len(_vesin(pos, cell, [True, True, False], 3.0)[0])
