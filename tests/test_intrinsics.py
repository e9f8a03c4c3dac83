"""The LLVM operations the kernels use that numba does not expose (hpcpot.potential.intrinsics)."""

import numpy as np
from numba import njit

from hpcpot.potential.intrinsics import f64_from_bits, prefetch


@njit
def _sum_with_prefetches(a, far):
    s = 0.0
    for i in range(a.shape[0]):
        prefetch(a, np.uint64(i + far))  # past the end for most i: must not fault
        prefetch(a, i)
        s += a[i]
    return s


def test_prefetch_changes_nothing_and_never_faults():
    for dtype in (np.float32, np.float64):
        a = np.arange(1, 101, dtype=dtype)
        before = a.copy()
        assert _sum_with_prefetches(a, 1 << 40) == before.sum()
        np.testing.assert_array_equal(a, before)


@njit
def _from_bits(b):
    return f64_from_bits(b)


def test_f64_from_bits_is_the_ieee_bit_pattern():
    for x in (1.0, -2.5, 1e-300, np.inf):
        assert _from_bits(np.array([x]).view(np.int64)[0]) == x
