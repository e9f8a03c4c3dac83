"""Which images each rank owns, and reading only those.

The global image list spans all files, in order.  Train/validation split is decided on the
global indices (identically on every rank).  Each rank then owns a contiguous range of the
train (and validation) list, balanced by cost: the number of (centre, partner) derivative
pairs, i.e. atoms × neighbours, which is what fingerprinting and every evaluation scale with.

File access per rank: HDF5 files from ``python -m hpcpot.prepare`` and ASE ``.traj`` files
are read by image index (a rank reads only its images).  Any other format (extxyz, ASE db, a
.traj with an index) is parsed once, by rank 0, validated, and broadcast as compact arrays:
one read of the file instead of one per rank, and no rank holds ASE Atoms objects of the whole
set.  ``hpcpot.prepare`` still pays for big sets: it parses once for all runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import DataError, Structures, _read_file, atoms_to_structures, expand_paths, split_indices
from .parallel import SerialComm
from .prepare import hdf5_n_images, is_hdf5, read_hdf5


def _pack(images: list, idx, path: str, need_forces: bool, tags_key: str) -> tuple[Structures, list]:
    """Validate ASE images (``idx``: their indices in ``path``) into Structures, and their tags."""
    items = [(a, f"{path}: image {k}") for a, k in zip(images, idx, strict=True)]
    tags = [a.info.get(tags_key) if tags_key else None for a in images]
    return atoms_to_structures(items, need_forces), tags


def _parse_on_root(comm: SerialComm, path: str, index: str, need_forces: bool, tags_key: str):
    """Rank 0 parses and validates a whole non-indexable file; every rank gets (Structures, tags).

    A DataError on rank 0 is raised on every rank, with rank 0's message."""
    payload = None
    if comm.rank == 0:
        try:
            images = _read_file(path, index)
            payload = _pack(images, range(len(images)), path, need_forces, tags_key)
        except DataError as exc:
            payload = str(exc)
    payload = comm.bcast(payload)
    if isinstance(payload, str):
        raise DataError(payload)
    return payload


class _Source:
    """One input file, readable by image index."""

    def __init__(self, path: str, index: str, comm: SerialComm | None = None, need_forces: bool = True,
                 tags_key: str = ""):  # fmt: skip
        self.path = path
        self.index = index
        self.kind = "hdf5" if is_hdf5(path) else ("traj" if path.endswith(".traj") and index == ":" else "ase")
        self._st: Structures | None = None
        self._tags: list = []
        self._tags_key = tags_key
        if self.kind == "hdf5":
            self.n = hdf5_n_images(path)
        elif self.kind == "traj":
            from ase.io.trajectory import Trajectory

            try:
                with Trajectory(path) as tr:
                    self.n = len(tr)
            except Exception as exc:
                raise DataError(f"{path}: ASE cannot read it: {type(exc).__name__}: {exc}") from None
            if self.n == 0:
                raise DataError(f"{path}: the file is empty (no images)")
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
        from ase.io.trajectory import Trajectory

        with Trajectory(self.path) as tr:
            images = [tr[int(k)] for k in idx]
        return _pack(images, idx, self.path, need_forces, tags_key)

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
        from .data import concat_structures

        gidx = np.asarray(gidx, np.int64)
        parts = []
        for f, s in enumerate(self.sources):
            sel = gidx[(gidx >= self.offsets[f]) & (gidx < self.offsets[f + 1])] - self.offsets[f]
            if len(sel):
                parts.append(s.read(sel, need_forces)[0])
        els = elements or tuple(sorted(set().union(*(p.elements for p in parts)))) if parts else (elements or ())
        return concat_structures(parts, els)

    def tags(self, key: str) -> list:
        out: list = []
        for s in self.sources:
            out.extend(s.tags(key))
        return out


def balanced_ranges(cost: np.ndarray, size: int) -> np.ndarray:
    """Split a cost list into ``size`` contiguous ranges of near-equal total cost.

    Returns bounds (size + 1,): rank r owns ``bounds[r]:bounds[r+1]``.  A rank may be empty
    when there are fewer images than ranks.
    """
    c = np.concatenate([[0.0], np.cumsum(cost, dtype=float)])
    targets = c[-1] * np.arange(1, size) / size
    # nearest cumulative boundary to each target
    k = np.searchsorted(c, targets)
    k = np.clip(k, 1, len(c) - 1)
    left_closer = (targets - c[k - 1]) < (c[k] - targets)
    k = np.where(left_closer, k - 1, k)
    bounds = np.concatenate([[0], np.maximum.accumulate(k), [len(cost)]])
    return bounds.astype(np.int64)


def pair_cost(st: Structures, cutoff: float) -> np.ndarray:
    """Cost per image: (centre, partner) derivative pairs (atoms × in-cell neighbours)."""
    from .fingerprints import neighbor_counts

    return neighbor_counts(st, cutoff).astype(float)


def read_shard(comm: SerialComm, images: ImageSet, gidx: np.ndarray, cutoff: float, need_forces: bool) -> Structures:
    """Read and validate the images this rank owns out of ``gidx``, balanced by pair cost.

    Each rank reads an equal-count slice and measures its cost, the costs are gathered (N
    floats), every rank computes the same cost-balanced contiguous ranges, and then reads
    only the images of its range that it does not hold yet (usually few).
    """
    if comm.size == 1 or len(gidx) == 0:
        return images.read(gidx, need_forces)
    eq = np.linspace(0, len(gidx), comm.size + 1).astype(np.int64)
    first = gidx[eq[comm.rank] : eq[comm.rank + 1]]
    pre = images.read(first, need_forces)
    local = pair_cost(pre, cutoff) if len(first) else np.zeros(0)
    cost = np.concatenate(comm.allgather(local))
    b = balanced_ranges(cost, comm.size)
    mine = gidx[b[comm.rank] : b[comm.rank + 1]]
    have = np.isin(mine, first)
    kept = pre.subset(np.searchsorted(first, mine[have]))
    if have.all():
        return kept
    extra = images.read(mine[~have], need_forces)
    from .data import concat_structures

    both = concat_structures([kept, extra], tuple(sorted(set(kept.elements) | set(extra.elements))))
    order = np.argsort(np.concatenate([mine[have], mine[~have]]), kind="stable")
    return both.subset(order)


def split_global(comm: SerialComm, images: ImageSet, fraction: float, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Global train/validation indices, identical on every rank (tags read by rank 0)."""
    tags = None
    if key:
        tags = comm.bcast(images.tags(key) if comm.rank == 0 else None)
    return split_indices(images.n, fraction, seed, tags, key)
