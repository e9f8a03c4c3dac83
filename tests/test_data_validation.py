"""Reading training data: every bad image is a DataError naming file, image and field."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from hpcpot.errors import DataError
from hpcpot.potential.fingerprints import compute_fingerprints
from hpcpot.training.config import FingerprintConfig
from hpcpot.training.data import read_structures, split_indices
from hpcpot.training.descriptors import symmetry_functions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REF_TRAJ = DATA / "o_pt111_emt_3000.traj"
MO = DATA / "mo_mlearn_pbe.extxyz.gz"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data {path} not found")
    return path


def image(energy=-1.5, forces="zeros", symbols="PtO", d=1.9, shift=0.0) -> Atoms:
    """A small non-periodic image with a SinglePointCalculator (energy/forces None: left out)."""
    n = len(Atoms(symbols))
    pos = np.zeros((n, 3))
    pos[:, 0] = np.arange(n) * d + shift
    pos[:, 1] = 0.3 * np.arange(n) ** 2
    a = Atoms(symbols, positions=pos)
    kw = {}
    if energy is not None:
        kw["energy"] = energy
    if isinstance(forces, str):
        kw["forces"] = np.full((n, 3), 0.1) * np.arange(n)[:, None]
    elif forces is not None:
        kw["forces"] = np.asarray(forces, float)
    if kw:
        a.calc = SinglePointCalculator(a, **kw)
    return a


def write(path: Path, images) -> str:
    ase.io.write(str(path), images)
    return str(path)


def assert_names(exc: pytest.ExceptionInfo, path: str, k: int, *words: str) -> None:
    msg = str(exc.value)
    assert path in msg, msg
    assert re.search(rf"\bimage {k}\b", msg), msg
    for w in words:
        assert w.lower() in msg.lower(), msg


# --------------------------------------------------------------------------- valid input


def test_good_file_reads(tmp_path):
    ims = [image(energy=-1.0 - k, shift=0.1 * k) for k in range(3)]
    p = write(tmp_path / "good.extxyz", ims)
    st, tags = read_structures([p], need_forces=True)
    assert st.elements == ("O", "Pt")
    assert st.n_images == 3
    np.testing.assert_allclose(st.energy, [-1.0, -2.0, -3.0])
    np.testing.assert_array_equal(st.species, [1, 0] * 3)
    np.testing.assert_allclose(st.forces, np.vstack([ims[k].get_forces() for k in range(3)]))
    np.testing.assert_allclose(st.positions, np.vstack([a.positions for a in ims]))
    assert list(st.atom_ptr) == [0, 2, 4, 6]
    assert tags == [None, None, None]
    assert st.sources == [f"{p}: image {k}" for k in range(3)]


# --------------------------------------------------------------------------- bad images


def test_missing_energy(tmp_path):
    # forces only: the calculator has no energy
    p = write(tmp_path / "noenergy.extxyz", [image(), image(energy=None)])
    with pytest.raises(DataError) as exc:
        read_structures([p], need_forces=False)
    assert_names(exc, p, 1, "energy")
    # no calculator at all
    a = image()
    a.calc = None
    p2 = write(tmp_path / "nocalc.extxyz", [image(), image(), a])
    with pytest.raises(DataError) as exc:
        read_structures([p2], need_forces=True)
    assert_names(exc, p2, 2, "energy")


def test_missing_forces(tmp_path):
    p = write(tmp_path / "noforces.extxyz", [image(), image(forces=None), image()])
    with pytest.raises(DataError) as exc:
        read_structures([p], need_forces=True)
    assert_names(exc, p, 1, "forces")
    st, _ = read_structures([p], need_forces=False)  # fine without forces
    assert st.n_images == 3 and st.forces is None


@pytest.mark.parametrize("suffix", ["extxyz", "traj"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_energy(tmp_path, suffix, bad):
    p = write(tmp_path / f"badenergy.{suffix}", [image(), image(energy=bad)])
    for nf in (True, False):
        with pytest.raises(DataError) as exc:
            read_structures([p], need_forces=nf)
        assert_names(exc, p, 1, "energy", "nan" if np.isnan(bad) else "inf")


@pytest.mark.parametrize("suffix", ["extxyz", "traj"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_forces(tmp_path, suffix, bad):
    f = np.zeros((3, 3))
    f[2, 1] = bad
    p = write(
        tmp_path / f"badforces.{suffix}",
        [image(symbols="PtOO"), image(symbols="PtOO"), image(symbols="PtOO", forces=f)],
    )
    with pytest.raises(DataError) as exc:
        read_structures([p], need_forces=True)
    assert_names(exc, p, 2, "forces", "atom 2")
    st, _ = read_structures([p], need_forces=False)  # forces not needed: not checked
    assert st.n_images == 3


def test_nonfinite_positions(tmp_path):
    a = image(symbols="PtOO")
    a.positions[1, 2] = np.nan
    p = write(tmp_path / "badpos.traj", [image(symbols="PtOO"), a])
    with pytest.raises(DataError) as exc:
        read_structures([p], need_forces=False)
    assert_names(exc, p, 1, "positions")


def test_element_not_covered(tmp_path):
    p = write(tmp_path / "water.extxyz", [image(), image(symbols="OHH", d=0.97)])
    with pytest.raises(DataError) as exc:
        read_structures([p], need_forces=True, elements=("O", "Pt"))
    assert_names(exc, p, 1, "element", "H")
    assert "not covered" in str(exc.value)
    # without a model element list the elements present are used
    st, _ = read_structures([p], need_forces=True)
    assert st.elements == ("H", "O", "Pt")
    # a given element list fixes the species order even if an element is absent from the data
    st, _ = read_structures([p], need_forces=True, elements=("Au", "H", "O", "Pt"))
    assert st.elements == ("Au", "H", "O", "Pt")
    np.testing.assert_array_equal(st.species, [3, 2, 2, 1, 1])


def test_atoms_too_close(tmp_path):
    ok = [image(shift=0.01 * k) for k in range(2)]
    bad = image(symbols="PtOO", d=1.9)
    bad.positions[2] = bad.positions[1] + [0.2, 0.05, 0.0]  # 0.206 Å from atom 1
    p = write(tmp_path / "close.extxyz", [*ok, bad, image()])
    st, _ = read_structures([p], need_forces=True)  # reading alone does not check distances
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    for chunk in (300_000, 1):  # whole file in one chunk, and one image per chunk
        with pytest.raises(DataError) as exc:
            compute_fingerprints(st, sf, chunk_pairs=chunk)
        assert_names(exc, p, 2, "atom", "0.206", "0.3")
    # 0.31 Å is allowed
    bad.positions[2] = bad.positions[1] + [0.31, 0.0, 0.0]
    p2 = write(tmp_path / "notclose.extxyz", [*ok, bad])
    st2, _ = read_structures([p2], need_forces=True)
    G, _ = compute_fingerprints(st2, sf, with_derivs=False)
    assert np.all(np.isfinite(G))


def test_atom_too_close_to_its_own_periodic_image(tmp_path):
    a = Atoms("Pt", positions=[[0, 0, 0]], cell=[3.0, 3.0, 0.25], pbc=True)
    a.calc = SinglePointCalculator(a, energy=1.0, forces=np.zeros((1, 3)))
    p = write(tmp_path / "thin.extxyz", [image(), a])
    st, _ = read_structures([p], need_forces=True)
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    with pytest.raises(DataError) as exc:
        compute_fingerprints(st, sf, with_derivs=False)
    assert_names(exc, p, 1, "0.250")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.extxyz"
    p.write_bytes(b"")
    with pytest.raises(DataError) as exc:
        read_structures([str(p)], need_forces=True)
    assert str(p) in str(exc.value) and "empty" in str(exc.value)
    # a file with no frames (only a blank line)
    q = tmp_path / "noframes.extxyz"
    q.write_text("\n")
    with pytest.raises(DataError) as exc:
        read_structures([str(q)], need_forces=True)
    assert str(q) in str(exc.value) and "empty" in str(exc.value)
    # an index that selects nothing
    r = write(tmp_path / "two.traj", [image(), image()])
    with pytest.raises(DataError) as exc:
        read_structures([r], need_forces=True, index="5:")
    assert r in str(exc.value)


def test_unreadable_file(tmp_path):
    p = tmp_path / "garbage.extxyz"
    p.write_text("2\nnot a comment line that ase can parse = = =\nPt 0 0 x\n")
    with pytest.raises(DataError) as exc:
        read_structures([str(p)], need_forces=True)
    assert str(p) in str(exc.value)


def test_missing_file(tmp_path):
    p = str(tmp_path / "nothere.traj")
    with pytest.raises(DataError) as exc:
        read_structures([p], need_forces=True)
    assert p in str(exc.value) and "not found" in str(exc.value)
    # also when it follows a good file
    good = write(tmp_path / "good.traj", [image()])
    with pytest.raises(DataError, match="nothere.traj"):
        read_structures([good, p], need_forces=True)


def test_glob_matching_nothing(tmp_path):
    write(tmp_path / "a.traj", [image()])
    pat = str(tmp_path / "*.extxyz")
    with pytest.raises(DataError) as exc:
        read_structures([pat], need_forces=True)
    assert pat in str(exc.value) and "no file matches" in str(exc.value)


def test_gzip_extxyz(tmp_path):
    ims = [image(energy=-2.0 - k, symbols="PtOO", shift=0.05 * k) for k in range(4)]
    plain = write(tmp_path / "set.extxyz", ims)
    gz = tmp_path / "set.extxyz.gz"
    with open(plain, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    st, _ = read_structures([str(gz)], need_forces=True)
    ref, _ = read_structures([plain], need_forces=True)
    assert st.n_images == 4
    np.testing.assert_allclose(st.energy, ref.energy)
    np.testing.assert_allclose(st.forces, ref.forces)
    np.testing.assert_allclose(st.positions, ref.positions)
    assert st.sources[3] == f"{gz}: image 3"


def test_traj_forces_ignore_constraints():
    st, _ = read_structures([str(need(REF_TRAJ))], need_forces=True, index=":2")
    atoms = ase.io.read(str(REF_TRAJ), 0)
    fixed = atoms.constraints[0].get_indices()
    assert len(fixed) == 4
    assert np.all(atoms.get_forces()[fixed] == 0.0)  # what ASE gives with the constraint applied
    f0 = st.forces[: st.atom_ptr[1]]
    assert np.all(np.abs(f0[fixed]).max(axis=1) > 1e-3)
    np.testing.assert_allclose(f0, atoms.get_forces(apply_constraint=False), rtol=0, atol=0)
    assert st.n_images == 2 and list(st.atom_ptr) == [0, 14, 28]
    assert st.elements == ("O", "Pt")
    assert np.array_equal(st.pbc[0], [True, True, False])
    np.testing.assert_allclose(st.cells[0], atoms.cell.array)
    assert st.energy[0] == atoms.get_potential_energy()


def test_multiple_files_and_globs_concatenate_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    a = write(tmp_path / "sub" / "b_1.extxyz", [image(energy=1.0), image(energy=2.0)])
    b = write(tmp_path / "sub" / "a_2.traj", [image(energy=3.0, symbols="OHH", d=0.97)])
    c = write(tmp_path / "sub" / "a_1.traj", [image(energy=4.0, symbols="Pt")])
    d = write(tmp_path / "z.extxyz", [image(energy=5.0, symbols="PtPtO")])
    # explicit file first, then a glob (expanded in sorted order), then another file
    st, _ = read_structures([d, str(tmp_path / "sub" / "a_*.traj"), a], need_forces=True)
    np.testing.assert_allclose(st.energy, [5.0, 4.0, 3.0, 1.0, 2.0])
    assert st.sources == [f"{d}: image 0", f"{c}: image 0", f"{b}: image 0", f"{a}: image 0", f"{a}: image 1"]
    assert st.elements == ("H", "O", "Pt")
    assert list(st.n_atoms) == [3, 1, 3, 2, 2]
    sym = np.array(st.elements)[st.species]
    assert "".join(sym) == "PtPtO" + "Pt" + "OHH" + "PtO" + "PtO"
    assert st.forces.shape == (11, 3)
    # the image index in error messages counts within each file
    bad = write(tmp_path / "sub" / "c.extxyz", [image(), image(), image(energy=np.nan)])
    with pytest.raises(DataError) as exc:
        read_structures([d, bad], need_forces=True)
    assert_names(exc, bad, 2, "energy")


def test_info_key_tags(tmp_path):
    ims = [image(), image(), image()]
    ims[0].info["split"] = "training"
    ims[2].info["split"] = "test"
    p = write(tmp_path / "tags.extxyz", ims)
    _, tags = read_structures([p], need_forces=False, info_key="split")
    assert tags == ["training", None, "test"]


# --------------------------------------------------------------------------- splits


def test_split_indices_random():
    n = 57
    tr, va = split_indices(n, 0.2, seed=11)
    tr2, va2 = split_indices(n, 0.2, seed=11)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    assert len(va) == round(0.2 * n)
    assert len(np.intersect1d(tr, va)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(n))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    _, va3 = split_indices(n, 0.2, seed=12)
    assert not np.array_equal(va, va3)
    # not simply the first or last images
    assert not np.array_equal(va, np.arange(len(va))) and not np.array_equal(va, np.arange(n - len(va), n))
    tr0, va0 = split_indices(n, 0.0, seed=1)
    assert len(va0) == 0 and np.array_equal(tr0, np.arange(n))


def test_split_indices_from_tags():
    tags = ["training", "test", "Train", "validation", "val", "training"]
    tr, va = split_indices(len(tags), 0.5, 0, tags=tags, key="split")
    np.testing.assert_array_equal(tr, [0, 2, 5])
    np.testing.assert_array_equal(va, [1, 3, 4])
    with pytest.raises(DataError, match=r"image 2.*'split'.*'holdout'"):
        split_indices(3, 0.1, 0, tags=["train", "test", "holdout"], key="split")
    with pytest.raises(DataError, match="image 1"):
        split_indices(2, 0.1, 0, tags=["train", None], key="split")


def test_split_indices_mo_file():
    st, tags = read_structures([str(need(MO))], need_forces=False, info_key="split")
    assert st.elements == ("Mo",)
    assert st.n_images == 217
    tr, va = split_indices(st.n_images, 0.1, 0, tags=tags, key="split")
    assert (len(tr), len(va)) == (194, 23)
    assert all(tags[k] == "training" for k in tr) and all(tags[k] == "test" for k in va)
    assert len(np.intersect1d(tr, va)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(217))


@pytest.mark.parametrize("ext,opener", [("gz", gzip.open), ("bz2", bz2.open), ("xz", lzma.open)])
def test_compressed_extxyz_with_index_and_a_corrupt_one(tmp_path, ext, opener):
    """Compressed extxyz is parsed from memory (ASE's own path re-decompresses per frame):
    same images, the index applies, and a corrupt file is an error naming it."""
    ims = [image(energy=-2.0 - k, symbols="PtOO", shift=0.05 * k) for k in range(6)]
    plain = write(tmp_path / "set.extxyz", ims)
    packed = tmp_path / f"set.extxyz.{ext}"
    with open(plain, "rb") as src, opener(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    st, _ = read_structures([str(packed)], need_forces=True, index="1::2")
    ref, _ = read_structures([plain], need_forces=True, index="1::2")
    assert st.n_images == 3
    np.testing.assert_array_equal(st.energy, ref.energy)
    np.testing.assert_array_equal(st.positions, ref.positions)
    bad = tmp_path / f"bad.extxyz.{ext}"
    bad.write_bytes(packed.read_bytes()[: len(packed.read_bytes()) // 2])
    with pytest.raises(DataError, match=str(bad)):
        read_structures([str(bad)], need_forces=True)


def test_split_by_validation_values():
    """split_key + validation_values: images whose tag is listed are validation, all others training."""
    tags = ["data_0", "data_3", "data_1", "data_3", "data_2"]
    train, val = split_indices(5, 0.5, 0, tags, "system", ["data_3"])
    assert train.tolist() == [0, 2, 4] and val.tolist() == [1, 3]
    with pytest.raises(DataError, match=r"atoms.info\['system'\].*data_9"):
        split_indices(5, 0.5, 0, tags, "system", ["data_9"])


def test_split_by_validation_values_on_the_water_set():
    st, tags = read_structures([str(need(DATA / "water_deepmd_64H2O.extxyz.gz"))], False, info_key="system")
    train, val = split_indices(st.n_images, 0.1, 0, tags, "system", ["data_3"])
    assert len(val) == 80 and len(train) == 320 and all(tags[k] == "data_3" for k in val)


@pytest.mark.parametrize("suffix", ["extxyz", "traj"])
def test_reading_in_chunks_gives_the_same_structures(tmp_path, monkeypatch, suffix):
    """Files are validated and packed READ_CHUNK images at a time (memory): chunks with
    different elements join into the same Structures, tags stay in order, and an error in a
    later chunk still names its image."""
    from hpcpot.training import data
    from hpcpot.training.data import ImageSet

    ims = [image(energy=-1.0 - k, symbols="PtO" if k < 2 else "OHH", d=1.9 if k < 2 else 0.97, shift=0.01 * k)
           for k in range(5)]  # fmt: skip
    for k, a in enumerate(ims):
        a.info["split"] = "training" if k % 2 else "test"
    p = write(tmp_path / f"mixed.{suffix}", ims)
    whole, tags_whole = read_structures([p], need_forces=True, info_key="split")
    whole_set = ImageSet.open([p], need_forces=True).read(np.arange(5), True)
    monkeypatch.setattr(data, "READ_CHUNK", 2)
    st, tags = read_structures([p], need_forces=True, info_key="split")
    part = ImageSet.open([p], need_forces=True).read(np.array([0, 3, 4]), True)
    assert tags == tags_whole == ["test", "training", "test", "training", "test"]
    for got, ref in ((st, whole), (whole_set, whole)):
        assert got.elements == ref.elements == ("H", "O", "Pt")
        np.testing.assert_array_equal(got.species, ref.species)
        np.testing.assert_array_equal(got.positions, ref.positions)
        np.testing.assert_array_equal(got.forces, ref.forces)
        np.testing.assert_array_equal(got.energy, ref.energy)
        assert got.sources == ref.sources
    np.testing.assert_array_equal(part.energy, whole.energy[[0, 3, 4]])
    assert part.sources == [f"{p}: image {k}" for k in (0, 3, 4)]
    bad = write(tmp_path / f"bad.{suffix}", [*ims[:4], image(energy=np.nan)])
    with pytest.raises(DataError) as exc:
        read_structures([bad], need_forces=True)
    assert_names(exc, bad, 4, "energy")
