"""HDF5 data sets from `python -m hpcpot.prepare`: same images, sliceable, validated."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, REF, need

from hpcpot.errors import DataError
from hpcpot.prepare import main as prepare_main
from hpcpot.training.data import read_structures
from hpcpot.training.hdf5 import read_hdf5


def test_prepare_round_trip_and_slices(tmp_path):
    out = tmp_path / "ref.h5"
    src = tmp_path / "first50.traj"
    import ase.io

    ase.io.write(src, ase.io.read(need(REF), ":50"))
    assert prepare_main([str(out), str(src)]) == 0
    a, _ = read_structures([str(src)], need_forces=True)
    b, _ = read_structures([str(out)], need_forces=True)
    for f in ("species", "positions", "cells", "pbc", "atom_ptr", "energy", "forces"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    part, _ = read_hdf5(str(out), need_forces=True, images=np.array([3, 4, 9]))
    ref = a.subset(np.array([3, 4, 9]))
    assert np.array_equal(part.positions, ref.positions) and np.array_equal(part.forces, ref.forces)
    assert part.sources[0].endswith("image 3")
    assert prepare_main([str(out), str(src)]) == 2  # refuses to overwrite


def test_prepare_keeps_split_tags(tmp_path):
    out = tmp_path / "mo.h5"
    assert prepare_main([str(out), str(need(DATA / "mo_mlearn_pbe.extxyz.gz")), "--info-key", "split"]) == 0
    _, tags = read_structures([str(out)], need_forces=False, info_key="split")
    assert tags.count("training") == 194 and tags.count("test") == 23


def test_bad_values_in_hdf5_are_named(tmp_path):
    import h5py

    out = tmp_path / "bad.h5"
    import ase.io

    src = tmp_path / "s.traj"
    ase.io.write(src, ase.io.read(need(REF), ":5"))
    prepare_main([str(out), str(src)])
    with h5py.File(out, "r+") as h:
        f = h["forces"][()]
        f[14 * 3 + 2, 1] = np.nan  # image 3, atom 2
        h["forces"][...] = f
    with pytest.raises(DataError, match=r"bad\.h5: image 3: forces"):
        read_structures([str(out)], need_forces=True)
