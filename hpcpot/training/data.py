"""Reading and validating training data (energies in eV, forces in eV/Å, positions in Å).

Any file ASE reads (``.traj``, extxyz, ASE db, gzip-compressed too) or an HDF5 file made by
``python -m hpcpot.prepare``.  Every image is checked up front; a problem raises
:class:`DataError` naming the file, the image index and the field.

:class:`ImageSet` is all input files as one global image list that a rank reads by index:
HDF5 files and ASE ``.traj`` files (also with an index that is a slice or one image) are
read image by image (a rank reads only its images); any other format (extxyz, ASE db, a
.traj with another kind of index) is parsed once, by rank 0,
validated, and broadcast as compact arrays.  Which images a rank owns is
:mod:`hpcpot.training.shard`'s business.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..parallel import SerialComm
from ..potential.structures import Structures, concat_structures, species_indices
from .extxyzfile import NotPlainExtxyz, read_frames
from .hdf5 import hdf5_n_images, is_hdf5, read_hdf5
from .trajfile import NotUlm, TrajFile


def expand_paths(patterns: list[str]) -> list[str]:
    """Expand globs; a pattern that matches nothing or a missing file is an error."""
    out: list[str] = []
    for pat in patterns:
        if any(ch in pat for ch in "*?["):
            hits = sorted(glob.glob(pat))
            if not hits:
                raise DataError(f"{pat}: no file matches this pattern")
            out.extend(hits)
        else:
            if not os.path.isfile(pat):
                raise DataError(f"{pat}: file not found")
            out.append(pat)
    return out


_OPENERS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def _open_text(path: str):
    """``path`` opened as text, decompressed on the fly when its extension names a compression."""
    import importlib

    ext = os.path.splitext(path)[1]
    return importlib.import_module(_OPENERS[ext]).open(path, "rt") if ext in _OPENERS else open(path)  # noqa: SIM115


def _decompressed_text(path: str):
    """A compressed (extended) XYZ file as an in-memory text stream, else None.

    ASE seeks back into a compressed file frame by frame, which re-decompresses from the
    start each time: reading the 7815-image TiO2 set took 452 s that way and 11 s from
    memory (the text is about as large as the Atoms objects it becomes)."""
    import io

    ext = os.path.splitext(path)[1]
    if ext not in _OPENERS:
        return None
    from ase.io.formats import filetype

    try:
        if filetype(path) not in ("extxyz", "xyz"):
            return None
    except Exception:
        return None  # let ASE report what it cannot read
    with _open_text(path) as fh:
        return io.StringIO(fh.read())


# Images are validated and packed this many at a time: holding every ASE Atoms of a file at
# once left its garbage behind (fragmented small-object memory that the process keeps): 35 MiB
# after reading the 3000 reference images, 88 MiB after TiO2's 7815.
READ_CHUNK = 256


def _iter_file(path: str, index: str):
    """The images of a file ASE reads (``index``: ASE's index string), one by one."""
    import ase.io

    # parallel=False: under MPI, ASE's default reads on its rank 0 and broadcasts in a
    # collective of its own, which would pair with ours (hpcpot does the MPI itself)
    text = _decompressed_text(path)
    if text is not None:
        return ase.io.iread(text, index, format="extxyz", parallel=False)
    return ase.io.iread(path, index, parallel=False)


def _read_packed(path: str, index: str, need_forces: bool, tags_key: str,
                 elements: tuple[str, ...] | None = None) -> tuple[Structures, list]:  # fmt: skip
    """Parse and validate a whole file into Structures (and tags), READ_CHUNK images at a time
    (``elements``: the model's, others are an error; None: those present, sorted)."""
    if path.endswith(".traj") and index == ":":
        try:
            return _read_traj(path, None, need_forces, tags_key, elements)
        except NotUlm:
            pass  # ASE reads it (and reports what is wrong with it)
    if index == ":" and _plain_name(path).endswith((".xyz", ".extxyz")):
        try:
            return _read_xyz(path, need_forces, tags_key, elements)
        except NotPlainExtxyz:
            pass  # ASE reads it (and reports what is wrong with it)
    parts: list[Structures] = []
    tags: list = []
    k = 0
    try:
        it = _iter_file(path, index)
        while True:
            chunk = []
            for a in it:
                chunk.append(a)
                if len(chunk) == READ_CHUNK:
                    break
            if not chunk:
                break
            st, t = _pack(chunk, range(k, k + len(chunk)), path, need_forces, tags_key, elements)
            parts.append(st)
            tags.extend(t)
            k += len(chunk)
            del chunk
    except DataError:
        raise
    except Exception as exc:  # ASE raises many types for unreadable files
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty") from None
        where = f" (after image {k - 1})" if k else ""
        raise DataError(f"{path}: ASE cannot read it{where}: {type(exc).__name__}: {exc}") from None
    if not parts:
        raise DataError(f"{path}: the file is empty (no images)")
    return concat_structures(parts, elements or _union_elements(parts)), tags


def _plain_name(path: str) -> str:
    """The file name without a compression extension."""
    base, ext = os.path.splitext(path)
    return base if ext in _OPENERS else path


def _read_xyz(path: str, need_forces: bool, tags_key: str,
              elements: tuple[str, ...] | None = None) -> tuple[Structures, list]:  # fmt: skip
    """A whole extended XYZ file through :mod:`.extxyzfile` (no ``ase.io``), validated.

    Raises NotPlainExtxyz for anything that reader leaves to ASE, unreadable or empty files
    included (ASE then reports them as before)."""
    from ase.data import chemical_symbols

    known = set(chemical_symbols[1:])

    def frames(fh):
        for k, (species, pos, cell, pbc, energy, forces, tag) in enumerate(read_frames(fh, tags_key)):
            if not set(species.tolist()) <= known:
                raise NotPlainExtxyz("unknown element symbol")
            yield k, species, pos, cell, pbc, energy, forces, None, tag

    try:
        with _open_text(path) as fh:
            st, tags = _validated(path, frames(fh), need_forces, elements)
    except DataError:
        raise
    except (OSError, ValueError, IndexError, EOFError, UnicodeDecodeError) as exc:
        raise NotPlainExtxyz(f"{type(exc).__name__}: {exc}") from None
    if st.n_images == 0:
        raise NotPlainExtxyz("no images")
    return st, tags


def _union_elements(parts: list[Structures]) -> tuple[str, ...]:
    return tuple(sorted(set().union(*(p.elements for p in parts))))


def check_values(source: str, symbols, positions: np.ndarray, energy, forces, need_forces: bool,
                 elements: tuple[str, ...] | None, no_energy: str = "energy missing") -> tuple[float, np.ndarray | None]:
    """Validate one image's arrays (any reader's); returns (energy, forces or None).

    ``energy`` None: missing (``no_energy`` is the message); ``forces`` None: missing, an
    error only with ``need_forces``.  Raises DataError naming ``source`` and the field."""
    n = len(symbols)
    if n == 0:
        raise DataError(f"{source}: image has no atoms")
    if not np.all(np.isfinite(positions)):
        raise DataError(f"{source}: positions contain NaN or inf")
    if elements is not None:
        bad = sorted(set(np.asarray(symbols).tolist()) - set(elements))
        if bad:
            raise DataError(
                f"{source}: element(s) {', '.join(bad)} not covered by the model (elements: {', '.join(elements)})"
            )
    if energy is None:
        raise DataError(f"{source}: {no_energy}")
    if not np.isfinite(energy):
        raise DataError(f"{source}: energy is {energy} (must be a finite number in eV)")
    if not need_forces:
        return float(energy), None
    if forces is None:
        raise DataError(f"{source}: forces missing (needed because force_coefficient > 0)")
    forces = np.asarray(forces, dtype=float)
    if forces.shape != (n, 3):
        raise DataError(f"{source}: forces have shape {forces.shape}, expected ({n}, 3)")
    if not np.all(np.isfinite(forces)):
        bad_atom = int(np.argwhere(~np.isfinite(forces))[0, 0])
        raise DataError(f"{source}: forces contain NaN or inf (atom {bad_atom})")
    return float(energy), forces


def check_image(atoms, source: str, need_forces: bool, elements: tuple[str, ...] | None) -> tuple[float, np.ndarray | None]:
    """Validate one ASE Atoms; returns (energy, forces or None). Raises DataError."""
    symbols = atoms.get_chemical_symbols()
    pos = atoms.get_positions()
    if atoms.calc is None:
        return check_values(source, symbols, pos, None, None, need_forces, elements,
                            "energy missing (the image has no energy or forces attached)")  # fmt: skip
    from ase.calculators.singlepoint import SinglePointCalculator

    # Stored results are read directly: going through get_potential_energy()/get_forces()
    # re-compares the atoms with the calculator's copy, ~0.5 ms per image (1.5 s of the 2.9 s
    # it took to read and check the 3000 reference images).  Forces straight from the
    # results are the unconstrained ones, as apply_constraint=False gives.
    stored = atoms.calc.results if isinstance(atoms.calc, SinglePointCalculator) else None
    try:
        energy = stored["energy"] if stored is not None and "energy" in stored else atoms.get_potential_energy()
    except Exception:
        energy = None
    forces = None
    if need_forces:
        try:
            # apply_constraint=False: FixAtoms would otherwise zero the fixed atoms' forces
            forces = stored["forces"] if stored is not None and "forces" in stored else atoms.get_forces(apply_constraint=False)
        except Exception:
            forces = None
    return check_values(source, symbols, pos, energy, forces, need_forces, elements)


def atoms_to_structures(
    items: list, need_forces: bool, elements: tuple[str, ...] | None = None
) -> Structures:
    """Validate ``[(atoms, source_label), ...]`` and pack them as Structures.

    ``elements``: the model's elements (others are an error); None: those present, sorted.
    """
    rows = []
    for atoms, src in items:
        e, f = check_image(atoms, src, need_forces, elements)
        rows.append((src, np.asarray(atoms.get_chemical_symbols()), atoms.get_positions(), atoms.cell.array,
                     atoms.pbc, e, f, _stored_stress(atoms)))  # fmt: skip
    return pack_images(rows, need_forces, elements)


def pack_images(rows: list, need_forces: bool, elements: tuple[str, ...] | None = None) -> Structures:
    """Validated images ``[(source, symbols, positions, cell, pbc, energy, forces, stress (6,)), ...]``
    as Structures (``elements``: as in :func:`atoms_to_structures`)."""
    symbols = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, "<U2")
    els = tuple(sorted(set(symbols.tolist()))) if elements is None else tuple(elements)
    ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([len(r[1]) for r in rows], out=ptr[1:])
    stress = [r[7] for r in rows]
    return Structures(
        els,
        species_indices(symbols, els),
        np.concatenate([r[2] for r in rows]) if rows else np.zeros((0, 3)),
        np.array([r[3] for r in rows], float).reshape(-1, 3, 3),
        np.array([r[4] for r in rows], bool).reshape(-1, 3),
        ptr,
        np.array([r[5] for r in rows], float),
        (np.concatenate([r[6] for r in rows]) if rows else np.zeros((0, 3))) if need_forces else None,
        [r[0] for r in rows],
        np.array(stress) if any(np.isfinite(x).all() for x in stress) else None,
    )


def _validated(path: str, frames, need_forces: bool, elements: tuple[str, ...] | None) -> tuple[Structures, list]:
    """(Structures, tags) of the images that hpcpot's own readers yield for ``path``, as
    ``(index, symbols, positions, cell, pbc, energy, forces, stress, tag)`` (None: not stored),
    validated as :func:`check_image` validates ASE's."""
    rows, tags = [], []
    for k, symbols, pos, cell, pbc, energy, forces, stress, tag in frames:
        src = f"{path}: image {k}"
        # nothing stored at all: ASE's image would have no calculator, and check_image says so
        why = "energy missing" if forces is not None or stress is not None else \
            "energy missing (the image has no energy or forces attached)"  # fmt: skip
        e, f = check_values(src, symbols, pos, energy, forces, need_forces, elements, why)
        rows.append((src, symbols, pos, cell, pbc, e, f, voigt_stress(stress)))
        tags.append(tag)
    return pack_images(rows, need_forces, elements), tags


def _read_traj(path: str, idx, need_forces: bool, tags_key: str,
               elements: tuple[str, ...] | None = None) -> tuple[Structures, list]:  # fmt: skip
    """Images ``idx`` (None: all, of which there must be some) of an ASE trajectory through
    :mod:`.trajfile` (no ``ase.io``), validated.

    Raises NotUlm for anything that reader does not understand, corrupt files included:
    the caller then reads through ASE, which reports its own errors as before."""
    from ase.data import chemical_symbols

    syms = np.array(chemical_symbols)

    def frames(tf):
        for k in range(len(tf)) if idx is None else idx:
            numbers, pos, cell, pbc, energy, forces, stress, info = tf.image(int(k))
            yield k, syms[numbers], pos, cell, pbc, energy, forces, stress, (info.get(tags_key) if tags_key else None)

    try:
        with TrajFile(path) as tf:
            if idx is None and len(tf) == 0:
                raise NotUlm("no images")
            return _validated(path, frames(tf), need_forces, elements)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise NotUlm(f"{type(exc).__name__}: {exc}") from None


def _stored_stress(atoms) -> np.ndarray:
    """The image's reference stress (6,) in eV/Å³, ASE Voigt order, or NaNs when it has none
    (read from the stored results only: never computed)."""
    res = getattr(atoms.calc, "results", None) or {}
    return voigt_stress(res.get("stress"))


def voigt_stress(s) -> np.ndarray:
    """A stored stress, (6,) or (3, 3), as (6,) in ASE's Voigt order; NaNs for None or another shape."""
    if s is None:
        return np.full(6, np.nan)
    s = np.asarray(s, float)
    if s.shape == (3, 3):
        s = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return s if s.shape == (6,) else np.full(6, np.nan)


def read_structures(
    patterns: list[str],
    need_forces: bool,
    elements: tuple[str, ...] | None = None,
    index: str = ":",
    info_key: str = "",
) -> tuple[Structures, list]:
    """Read and validate every image of the files (globs allowed), in one process.

    Returns the Structures (elements sorted by symbol, or the given ``elements``) and, per
    image, ``atoms.info[info_key]`` (None where absent) when ``info_key`` is set.
    """
    parts, tags = [], []
    for path in expand_paths(patterns):
        if is_hdf5(path):
            s, t = read_hdf5(path, need_forces=need_forces, elements=elements, info_key=info_key)
        else:
            s, t = _read_packed(path, index, need_forces, info_key, elements)
        parts.append(s)
        tags.extend(t)
    els = elements or _union_elements(parts)
    return concat_structures(parts, els), tags


TRAIN_TAGS = {"train", "training"}
VALIDATION_TAGS = {"validation", "valid", "val", "test"}


def split_indices(
    n: int, fraction: float, seed: int, tags: list | None = None, key: str = "",
    validation_values: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Train/validation image indices: from ``tags`` (values of ``atoms.info[key]``) when
    given, else a random ``fraction`` for validation drawn with ``seed``.  With
    ``validation_values``, an image is validation when its tag is one of them and training
    otherwise (e.g. ``info["system"] == "data_3"``); without, tags must name the set."""
    if key and validation_values:
        assert tags is not None
        vals = {str(v) for v in validation_values}
        is_val = np.array([str(t) in vals for t in tags], bool)
        if not is_val.any():
            raise DataError(f"no image has atoms.info['{key}'] in {sorted(vals)}: the validation set would be empty")
        return np.nonzero(~is_val)[0].astype(np.int64), np.nonzero(is_val)[0].astype(np.int64)
    if key:
        assert tags is not None
        train, val = [], []
        for k, t in enumerate(tags):
            tl = str(t).lower()
            if tl in TRAIN_TAGS:
                train.append(k)
            elif tl in VALIDATION_TAGS:
                val.append(k)
            else:
                raise DataError(
                    f"image {k}: atoms.info['{key}'] is {t!r}; expected one of "
                    f"{sorted(TRAIN_TAGS | VALIDATION_TAGS)}"
                )
        return np.array(train, np.int64), np.array(val, np.int64)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _pack(images: list, idx, path: str, need_forces: bool, tags_key: str,
          elements: tuple[str, ...] | None = None) -> tuple[Structures, list]:  # fmt: skip
    """Validate ASE images (``idx``: their indices in ``path``) into Structures, and their tags."""
    items = [(a, f"{path}: image {k}") for a, k in zip(images, idx, strict=True)]
    tags = [a.info.get(tags_key) if tags_key else None for a in images]
    return atoms_to_structures(items, need_forces, elements), tags


def _parse_on_root(comm: SerialComm, path: str, index: str, need_forces: bool, tags_key: str):
    """Rank 0 parses and validates a whole non-indexable file; every rank gets (Structures, tags).

    A DataError on rank 0 is raised on every rank, with rank 0's message."""
    payload = None
    if comm.rank == 0:
        try:
            payload = _read_packed(path, index, need_forces, tags_key)
        except DataError as exc:
            payload = str(exc)
    payload = comm.bcast(payload)
    if isinstance(payload, str):
        raise DataError(payload)
    return payload


def index_slice(index: str) -> slice | None:
    """ASE's index string as a slice (``":"``, ``"a:b"``, ``"a:b:c"``; an integer k: image k
    alone), or None for anything else (a file with such an index is read by ASE)."""
    parts = index.split(":")
    try:
        if len(parts) == 1:
            k = int(parts[0])
            return slice(k, k + 1 if k != -1 else None)
        if len(parts) <= 3:
            return slice(*(int(x) if x.strip() else None for x in parts))
    except ValueError:
        return None
    return None


class _Source:
    """One input file, readable by image index."""

    def __init__(self, path: str, index: str, comm: SerialComm | None = None, need_forces: bool = True,
                 tags_key: str = ""):  # fmt: skip
        self.path = path
        self.index = index
        sel = index_slice(index) if path.endswith(".traj") else None
        self.kind = "hdf5" if is_hdf5(path) else ("traj" if sel is not None else "ase")
        self._st: Structures | None = None
        self._tags: list = []
        self._tags_key = tags_key
        self._ids: np.ndarray | None = None  # a .traj's image of each of this source's images
        if self.kind == "hdf5":
            self.n = hdf5_n_images(path)
        elif self.kind == "traj":
            try:
                with TrajFile(path) as tf:
                    n_file = len(tf)
            except (NotUlm, OSError, ValueError):
                self.kind = "traj-ase"
                from ase.io.trajectory import Trajectory

                try:
                    with Trajectory(path) as tr:
                        n_file = len(tr)
                except Exception as exc:
                    raise DataError(f"{path}: ASE cannot read it: {type(exc).__name__}: {exc}") from None
            if n_file == 0:
                raise DataError(f"{path}: the file is empty (no images)")
            if index.strip() != ":":
                self._ids = np.arange(n_file)[sel]
                if len(self._ids) == 0:
                    raise DataError(f"{path}: index {index!r} selects none of its {n_file} images")
            self.n = n_file if self._ids is None else len(self._ids)
        else:
            self._st, self._tags = _parse_on_root(comm or SerialComm(), path, index, need_forces, tags_key)
            self.n = self._st.n_images

    def read(self, idx: np.ndarray, need_forces: bool, tags_key: str = "") -> tuple[Structures, list]:
        if self.kind == "hdf5":
            return read_hdf5(self.path, need_forces=need_forces, images=idx, info_key=tags_key)
        if self.kind == "ase":
            if need_forces and self._st.forces is None:
                raise DataError(f"{self.path}: forces missing (needed because force_coefficient > 0)")
            return self._st.subset(np.asarray(idx, np.int64)), [self._tags[int(k)] for k in idx]
        if self._ids is not None:
            idx = self._ids[np.asarray(idx, np.int64)]
        if self.kind == "traj":
            try:
                return _read_traj(self.path, idx, need_forces, tags_key)
            except NotUlm:
                self.kind = "traj-ase"
        from ase.io.trajectory import Trajectory

        parts, tags = [], []
        with Trajectory(self.path) as tr:
            for c in range(0, len(idx), READ_CHUNK):  # a chunk at a time: see READ_CHUNK
                sel = idx[c : c + READ_CHUNK]
                st, t = _pack([tr[int(k)] for k in sel], sel, self.path, need_forces, tags_key)
                parts.append(st)
                tags.extend(t)
        if not parts:
            return _pack([], [], self.path, need_forces, tags_key)
        return concat_structures(parts, _union_elements(parts)), tags

    def tags(self, key: str) -> list:
        if self.kind == "ase":
            if key != self._tags_key:
                raise ValueError(f"{self.path} was parsed keeping info key {self._tags_key!r}, not {key!r}")
            return list(self._tags)
        if self.kind == "hdf5":
            _, t = read_hdf5(self.path, need_forces=False, images=np.arange(self.n), info_key=key)
            return t
        _, t = self.read(np.arange(self.n), need_forces=False, tags_key=key)
        return t


@dataclass
class ImageSet:
    """All input files as one global image list."""

    sources: list[_Source]
    offsets: np.ndarray  # global index of each file's first image

    @classmethod
    def open(cls, patterns: list[str], index: str = ":", comm: SerialComm | None = None, need_forces: bool = True,
             tags_key: str = "") -> ImageSet:  # fmt: skip
        """All files of ``patterns``; non-indexable ones are parsed by rank 0 of ``comm`` only
        (validated with ``need_forces``, keeping ``atoms.info[tags_key]``)."""
        srcs = [_Source(p, index, comm, need_forces, tags_key) for p in expand_paths(patterns)]
        off = np.zeros(len(srcs) + 1, np.int64)
        np.cumsum([s.n for s in srcs], out=off[1:])
        return cls(srcs, off)

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def read(self, gidx: np.ndarray, need_forces: bool, elements: tuple[str, ...] | None = None) -> Structures:
        """The images with global indices ``gidx`` (sorted), validated."""
        gidx = np.asarray(gidx, np.int64)
        parts = []
        for f, s in enumerate(self.sources):
            sel = gidx[(gidx >= self.offsets[f]) & (gidx < self.offsets[f + 1])] - self.offsets[f]
            if len(sel):
                parts.append(s.read(sel, need_forces)[0])
        els = elements or _union_elements(parts) if parts else (elements or ())
        return concat_structures(parts, els)

    def tags(self, key: str) -> list:
        out: list = []
        for s in self.sources:
            out.extend(s.tags(key))
        return out
