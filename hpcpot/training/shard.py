"""Which images each rank owns, and reading only those.

The global image list spans all files, in order.  Train/validation split is decided on the
global indices (identically on every rank).  Each rank then owns a share of the train (and
validation) list balanced by cost (:func:`balanced_assignment`): the number of (centre,
partner) derivative pairs, i.e. atoms × neighbours, which is what fingerprinting and every
evaluation scale with.

File access per rank: HDF5 files from ``python -m hpcpot.prepare`` and ASE ``.traj`` files
are read by image index (a rank reads only its images).  Any other format (extxyz, ASE db, a
.traj with an index) is parsed once, by rank 0, validated, and broadcast as compact arrays:
one read of the file instead of one per rank, and no rank holds ASE Atoms objects of the whole
set.  ``hpcpot.prepare`` still pays for big sets: it parses once for all runs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..parallel import SerialComm
from ..potential.structures import Structures, concat_structures
from .data import ImageSet, split_indices


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


def imbalance(owner: np.ndarray, cost: np.ndarray, size: int) -> float:
    """Busiest rank's cost over the mean (1 = perfect balance)."""
    loads = np.bincount(owner, weights=cost, minlength=size)
    return float(loads.max() / loads.mean()) if loads.sum() > 0 else 1.0


def balanced_assignment(cost: np.ndarray, size: int) -> np.ndarray:
    """The rank that owns each image, the same on every rank: contiguous cost-balanced ranges
    (each rank then keeps almost all the images it read first, see :func:`read_shard`),
    unless longest-processing-time-first (the costliest image to the least-loaded rank)
    balances the busiest rank better by more than 0.5% of the mean.

    With few images per rank the ranges leave the busiest rank an image's share above the
    mean: 1.9% at 64 ranks on the reference set (47 images of near-equal cost per rank)
    against 0.3% for LPT (4.1% against 2.4% at 256); LPT costs most ranks a second read of
    most of their images, which only pays there.  Returns (n,) int64."""
    cost = np.asarray(cost, float)
    owner = np.repeat(np.arange(size), np.diff(balanced_ranges(cost, size)))
    order = np.argsort(-cost, kind="stable")
    lpt = np.empty(len(order), np.int64)
    lpt[order] = _lpt(cost[order], size)
    return lpt if imbalance(lpt, cost, size) < imbalance(owner, cost, size) - 0.005 else owner


@njit(cache=True)
def _lpt(sorted_cost, size):
    """Owner of each (descending-sorted) cost: a binary min-heap of (load, rank)."""
    load = np.zeros(size)
    heap = np.arange(size)  # ranks, heap-ordered by (load, rank)
    out = np.empty(len(sorted_cost), np.int64)
    for i in range(len(sorted_cost)):
        r = heap[0]
        out[i] = r
        load[r] += sorted_cost[i]
        j = 0  # sift the root down
        while True:
            lo = j
            for c in (2 * j + 1, 2 * j + 2):
                if c < size and (load[heap[c]] < load[heap[lo]] or (load[heap[c]] == load[heap[lo]] and heap[c] < heap[lo])):
                    lo = c
            if lo == j:
                break
            heap[j], heap[lo] = heap[lo], heap[j]
            j = lo
    return out


def pair_cost(st: Structures, cutoff: float) -> np.ndarray:
    """Cost per image: (centre, partner) derivative pairs (atoms × in-cell neighbours)."""
    from ..potential.fingerprints import neighbor_counts

    return neighbor_counts(st, cutoff).astype(float)


def read_shard(comm: SerialComm, images: ImageSet, gidx: np.ndarray, cutoff: float, need_forces: bool) -> Structures:
    """Read and validate the images this rank owns out of ``gidx``, balanced by pair cost.

    Each rank reads an equal-count slice and measures its cost, the costs are gathered (N
    floats), every rank computes the same cost-balanced assignment, and then reads the images
    assigned to it that it does not hold yet.
    """
    if comm.size == 1 or len(gidx) == 0:
        return images.read(gidx, need_forces)
    eq = np.linspace(0, len(gidx), comm.size + 1).astype(np.int64)
    first = gidx[eq[comm.rank] : eq[comm.rank + 1]]
    pre = images.read(first, need_forces)
    local = pair_cost(pre, cutoff) if len(first) else np.zeros(0)
    cost = np.concatenate(comm.allgather(local))
    mine = gidx[balanced_assignment(cost, comm.size) == comm.rank]
    have = np.isin(mine, first)
    kept = pre.subset(np.searchsorted(first, mine[have]))
    if have.all():
        return kept
    extra = images.read(mine[~have], need_forces)
    both = concat_structures([kept, extra], tuple(sorted(set(kept.elements) | set(extra.elements))))
    order = np.argsort(np.concatenate([mine[have], mine[~have]]), kind="stable")
    return both.subset(order)


def split_global(comm: SerialComm, images: ImageSet, fraction: float, seed: int, key: str,
                 pool: np.ndarray | None = None, validation_values: list[str] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Global train/validation indices, identical on every rank (tags read by rank 0).

    ``pool``: the global indices to split (those the data filters kept; default all)."""
    pool = np.arange(images.n) if pool is None else np.asarray(pool, np.int64)
    tags = None
    if key:
        tags = comm.bcast(images.tags(key) if comm.rank == 0 else None)
        tags = [tags[k] for k in pool]
    train, val = split_indices(len(pool), fraction, seed, tags, key, validation_values)
    return pool[train], pool[val]
