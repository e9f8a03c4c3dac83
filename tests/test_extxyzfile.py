"""hpcpot's extended-XYZ reader gives exactly what ASE gives on the files it takes, and
leaves every other file to ASE."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import read_in_fresh_python

from hpcpot.errors import DataError
from hpcpot.training.data import _read_xyz, atoms_to_structures, read_structures
from hpcpot.training.extxyzfile import NotPlainExtxyz

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = [("mo_mlearn_pbe.extxyz.gz", "split"), ("tio2_aenet_pbe.extxyz.gz", "config_type"),
        ("water_deepmd_64H2O.extxyz.gz", "system"), ("water_n2p2_rpbed3_small.extxyz.gz", "")]  # fmt: skip


def through_ase(path: str, tags_key: str = ""):
    # from memory: ASE re-decompresses a .gz from the start for every frame (minutes for TiO2)
    raw = gzip.decompress(Path(path).read_bytes()) if path.endswith(".gz") else Path(path).read_bytes()
    ims = ase.io.read(io.StringIO(raw.decode()), ":", format="extxyz")
    st = atoms_to_structures([(a, f"{path}: image {k}") for k, a in enumerate(ims)], True)
    return st, [a.info.get(tags_key) if tags_key else None for a in ims]


def assert_same(a, b) -> None:
    assert a.elements == b.elements and a.sources == b.sources
    for f in ("species", "positions", "cells", "pbc", "atom_ptr", "energy", "forces"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@pytest.mark.parametrize("name,key", REAL)
def test_real_sets_equal_ase(name, key):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    st, tags = _read_xyz(str(path), True, key)  # raises NotPlainExtxyz if the fast path were not taken
    ref, ref_tags = through_ase(str(path), key)
    assert_same(st, ref)
    assert tags == ref_tags


def images() -> list[Atoms]:
    rng = np.random.default_rng(5)
    out = []
    for k, sym in enumerate(["PtO", "PtOO", "HHO"]):
        n = len(Atoms(sym))
        cell = rng.normal(size=(3, 3)) + 6 * np.eye(3)  # not diagonal: the Lattice's order matters
        a = Atoms(sym, positions=rng.uniform(0, 4, (n, 3)), cell=cell, pbc=[True, k != 1, True])
        a.calc = SinglePointCalculator(a, energy=-1.5 * (k + 1), forces=rng.normal(size=(n, 3)))
        a.info["split"] = ["train", "test", "train"][k]
        a.info["frame"] = k
        a.info["note"] = "a quoted, (free) text"
        out.append(a)
    return out


def test_written_by_ase_equal_ase(tmp_path):
    p = str(tmp_path / "set.extxyz")
    ase.io.write(p, images())
    for key in ("split", "frame"):  # (a tag with spaces, "note", is left to ASE)
        st, tags = _read_xyz(p, True, key)
        ref, ref_tags = through_ase(p, key)
        assert_same(st, ref)
        assert tags == ref_tags
    # gzip, and the public entry point
    q = tmp_path / "set.extxyz.gz"
    q.write_bytes(gzip.compress(Path(p).read_bytes()))
    st, tags = read_structures([str(q)], need_forces=True, info_key="split")
    assert tags == ["train", "test", "train"]
    np.testing.assert_array_equal(st.energy, [-1.5, -3.0, -4.5])


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("Properties=species:S:1:pos:R:3:forces:R:3", "Properties=species:S:1:pos:R:3:forces:R:3:tags:I:1"),
    lambda s: s.replace('pbc="T T T"', 'pbc="T T T" stress="1 2 3 4 5 6 7 8 9"', 1),
    lambda s: s.replace('note="a quoted, (free) text"', "note='single quoted'", 1),
])  # fmt: skip
def test_other_layouts_go_to_ase(tmp_path, edit):
    p = tmp_path / "set.extxyz"
    ase.io.write(str(p), images())
    text = p.read_text()
    if "tags:I:1" in edit("Properties=species:S:1:pos:R:3:forces:R:3"):  # a fourth column needs values
        text = "\n".join(line + " 0" if len(line.split()) == 7 else line for line in edit(text).splitlines()) + "\n"
    else:
        text = edit(text)
    p.write_text(text)
    with pytest.raises(NotPlainExtxyz):
        _read_xyz(str(p), True, "")
    st, _ = read_structures([str(p)], need_forces=True)  # ASE's reader takes it
    assert st.n_images == 3


def test_bad_values_are_data_errors(tmp_path):
    ims = images()
    ims[1].calc = SinglePointCalculator(ims[1], forces=ims[1].get_forces())  # no energy
    p = str(tmp_path / "noenergy.extxyz")
    ase.io.write(p, ims)
    with pytest.raises(DataError, match=r"noenergy.extxyz: image 1: energy missing"):
        read_structures([p], need_forces=True)
    f = ims[2].get_forces()
    f[1, 2] = np.nan
    ims[1].calc = SinglePointCalculator(ims[1], energy=1.0, forces=ims[1].get_forces())
    ims[2].calc = SinglePointCalculator(ims[2], energy=1.0, forces=f)
    q = str(tmp_path / "nanforce.extxyz")
    ase.io.write(q, ims)
    with pytest.raises(DataError, match=r"nanforce.extxyz: image 2: forces contain NaN or inf \(atom 1\)"):
        read_structures([q], need_forces=True)


def test_training_reads_extxyz_without_ase_io(tmp_path):
    p = str(tmp_path / "set.extxyz")
    ase.io.write(p, images())
    out = read_in_fresh_python(f"from hpcpot.training.data import read_structures\nst, _ = read_structures([{p!r}], need_forces=True)")
    assert out == ["3", "False", "False"]
