"""hpcpot's own .traj reader gives exactly what reading through ASE gives, without ase.io."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from conftest import read_in_fresh_python

from hpcpot.errors import DataError
from hpcpot.training.data import ImageSet, atoms_to_structures, index_slice, read_structures
from hpcpot.training.trajfile import NotUlm, TrajFile

REF_TRAJ = Path(__file__).resolve().parents[2] / "shared" / "data" / "o_pt111_emt_3000.traj"


def through_ase(path: str, need_forces: bool = True, tags_key: str = ""):
    ims = ase.io.read(path, ":")
    st = atoms_to_structures([(a, f"{path}: image {k}") for k, a in enumerate(ims)], need_forces)
    return st, [a.info.get(tags_key) for a in ims]


def assert_same(a, b) -> None:
    assert a.elements == b.elements and a.sources == b.sources
    for f in ("species", "positions", "cells", "pbc", "atom_ptr", "energy", "forces", "stress"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=f)


def mixed_images() -> list[Atoms]:
    """Images whose atoms, cell, pbc, constraints and stored results change along the file."""
    rng = np.random.default_rng(3)
    out = []
    # image 1 has the same atoms, pbc and constraints as image 0: ASE then leaves numbers
    # and pbc out of its record (the reader takes image 0's); after a change it writes them
    for k, sym in enumerate(["PtO", "PtO", "PtOO", "HHO", "PtO", "Pt"]):
        n = len(Atoms(sym))
        a = Atoms(sym, positions=rng.uniform(0, 4, (n, 3)), cell=np.diag([5.0 + k, 6.0, 7.0]), pbc=[True, k != 3, False])
        if k == 2:
            a.set_constraint(FixAtoms(indices=[0]))
        kw = {"energy": -1.0 - 0.5 * k, "forces": rng.normal(size=(n, 3))}
        if k in (2, 4):
            kw["stress"] = rng.normal(size=6)
        a.calc = SinglePointCalculator(a, **kw)
        a.info["set"] = "validation" if k == 3 else "train"
        out.append(a)
    return out


def test_reference_set_equals_ase():
    if not REF_TRAJ.exists():
        pytest.skip("reference data not found")
    st, _ = read_structures([str(REF_TRAJ)], need_forces=True)
    ref, _ = through_ase(str(REF_TRAJ))
    assert_same(st, ref)
    # FixAtoms in the file: the stored, unconstrained forces (fixed atoms' forces are not zero)
    assert np.abs(st.forces[:4]).max() > 0


def test_changing_images_equal_ase(tmp_path):
    p = str(tmp_path / "mixed.traj")
    ase.io.write(p, mixed_images())
    st, tags = read_structures([p], need_forces=True, info_key="set")
    ref, ref_tags = through_ase(p, tags_key="set")
    assert_same(st, ref)
    assert tags == ref_tags == ["train", "train", "train", "validation", "train", "train"]
    assert np.isnan(st.stress[0]).all() and np.isfinite(st.stress[2]).all()
    with TrajFile(p) as tf:
        assert "numbers." not in tf._record(1) and "numbers." in tf._record(5)
    # a rank's images by index (the training path), in any subset
    ims = ImageSet.open([p], need_forces=True)
    assert ims.sources[0].kind == "traj"
    assert_same(ims.read(np.array([1, 3, 4]), need_forces=True), ref.subset(np.array([1, 3, 4])))
    assert ims.tags("set") == ref_tags


def test_not_a_trajectory_falls_back_to_ase(tmp_path):
    p = tmp_path / "text.traj"
    p.write_text("this is not a trajectory\n")
    with pytest.raises(NotUlm):
        TrajFile(str(p))
    with pytest.raises(DataError) as exc:
        read_structures([str(p)], need_forces=True)
    assert str(p) in str(exc.value)
    with pytest.raises(DataError) as exc:
        ImageSet.open([str(p)])
    assert str(p) in str(exc.value)


def test_truncated_file_is_a_data_error(tmp_path):
    p = tmp_path / "cut.traj"
    ase.io.write(str(p), mixed_images())
    raw = p.read_bytes()
    q = tmp_path / "cut2.traj"
    q.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as exc:
        read_structures([str(q)], need_forces=True)
    assert str(q) in str(exc.value)


@pytest.mark.parametrize(("index", "n"), [(":", "6"), (":3", "3")])
def test_training_reads_traj_without_ase_io(tmp_path, index, n):
    """ase.io imports scipy through ase.constraints (~39 MiB per process): a training reading a
    .traj, whole or through a slice index, must not import it."""
    p = str(tmp_path / "mixed.traj")
    ase.io.write(p, mixed_images())
    out = read_in_fresh_python(
        "from hpcpot.training.data import ImageSet\n"
        f"s = ImageSet.open([{p!r}], {index!r}, need_forces=True)\n"
        "st = s.read(np.arange(s.n), need_forces=True)"
    )
    assert out == [n, "False", "False"]


@pytest.mark.parametrize("index", ["1:5", ":4", "::2", "-3:", "2", "-1", "4:0:-1"])
def test_traj_with_a_slice_index_is_read_by_index_as_ase_selects(tmp_path, index):
    """[data] index on a .traj: a slice (or one image) is read image by image like the whole
    file (no rank-0 parse through ase.io), and selects exactly the images ASE selects;
    sources name each image by its number in the file."""
    p = str(tmp_path / "mixed.traj")
    ase.io.write(p, mixed_images())
    s = ImageSet.open([p], index, need_forces=True)
    assert s.sources[0].kind == "traj"
    st = s.read(np.arange(s.n), need_forces=True)
    ims = ase.io.read(p, index)
    ims = ims if isinstance(ims, list) else [ims]
    ref = atoms_to_structures([(a, "") for a in ims], True)
    for f in ("species", "positions", "cells", "pbc", "atom_ptr", "energy", "forces"):
        np.testing.assert_array_equal(getattr(st, f), getattr(ref, f), err_msg=f)
    ids = np.arange(len(mixed_images()))[index_slice(index)]
    assert st.sources == [f"{p}: image {k}" for k in ids]


def test_traj_index_selecting_nothing_is_a_data_error(tmp_path):
    p = str(tmp_path / "mixed.traj")
    ase.io.write(p, mixed_images())
    with pytest.raises(DataError, match=r"mixed.traj: index '10:' selects none of its 6 images"):
        ImageSet.open([p], "10:", need_forces=True)
