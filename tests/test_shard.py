"""Which images each rank owns: the cost-balanced assignment and reading a rank's share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcpot.parallel import SerialComm
from hpcpot.training.data import ImageSet
from hpcpot.training.shard import balanced_assignment, balanced_ranges, imbalance, pair_cost, read_shard

REF = Path(__file__).resolve().parents[2] / "shared" / "data" / "o_pt111_emt_3000.traj"


def test_assignment_takes_the_better_of_ranges_and_lpt():
    # ranges split [5, 4 | 3, 3, 3] exactly; LPT would give 5+3+... = 10 against 8
    c = np.array([5.0, 4.0, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(balanced_assignment(c, 2), [0, 0, 1, 1, 1])
    # near-equal costs, 6 per rank: ranges leave a rank a whole image over; LPT evens it out
    rng = np.random.default_rng(0)
    c = rng.uniform(90, 110, 48)
    ranges = np.repeat(np.arange(8), np.diff(balanced_ranges(c, 8)))
    own = balanced_assignment(c, 8)
    assert imbalance(own, c, 8) < imbalance(ranges, c, 8) - 0.005
    assert imbalance(own, c, 8) < 1.01
    # every image owned once, by a valid rank; the same answer every time (every rank computes it)
    assert own.shape == (48,) and own.min() >= 0 and own.max() < 8
    np.testing.assert_array_equal(own, balanced_assignment(c.copy(), 8))
    # LPT's defining step: the costliest images go to distinct ranks first
    assert len(set(own[np.argsort(-c)[:8]].tolist())) == 8
    # more ranks than images: some own nothing
    own = balanced_assignment(np.ones(3), 5)
    assert sorted(own.tolist()) == sorted(set(own.tolist())) and len(own) == 3


class _RankOf(SerialComm):
    """Rank ``rank`` of ``size`` for read_shard, whose only collective is one allgather of
    each rank's costs: computed here from the slices every rank reads first."""

    def __init__(self, rank: int, size: int, images: ImageSet, gidx: np.ndarray, cutoff: float):
        self.rank, self.size = rank, size
        eq = np.linspace(0, len(gidx), size + 1).astype(np.int64)
        self._costs = [pair_cost(images.read(gidx[eq[r] : eq[r + 1]], False), cutoff) for r in range(size)]

    def allgather(self, obj):
        return self._costs


@pytest.mark.parametrize("size", [3, 7])
def test_every_rank_reads_exactly_its_images(size):
    """Whether the assignment is ranges or scattered (LPT), the shards read by the ranks are
    the assigned images, in global order, each once, with their own energies and forces."""
    if not REF.exists():
        pytest.skip(f"reference data {REF} not found")
    images = ImageSet.open([str(REF)], need_forces=True)
    gidx = np.sort(np.random.default_rng(1).choice(200, 29, replace=False)).astype(np.int64)
    whole = images.read(gidx, True)
    own = balanced_assignment(pair_cost(whole, 6.5), size)
    seen = []
    for r in range(size):
        st = read_shard(_RankOf(r, size, images, gidx, 6.5), images, gidx, 6.5, True)
        mine = np.nonzero(own == r)[0]
        np.testing.assert_array_equal(st.energy, whole.energy[mine])
        ref = whole.subset(mine)
        np.testing.assert_array_equal(st.forces, ref.forces)
        np.testing.assert_array_equal(st.positions, ref.positions)
        seen.extend(mine.tolist())
    assert sorted(seen) == list(range(len(gidx)))
