"""Process settings for the command-line entry points: one BLAS thread, and a heap that
keeps the network passes' per-block arrays instead of handing them back to the OS.

Imported before numpy by the entry points only (hpcpot.train, evaluate, bench,
examples/md_nve.py, benchmarks/md_speed.py, the tests' conftest), so that importing hpcpot
as a library (the ASE calculator) changes nothing; an explicit user setting wins.

* Threads: parallelism comes from MPI ranks, and the network matrices (atoms x 20) are too
  small for BLAS threads to pay off: two ranks with two BLAS threads each on two cores ran
  3x slower (measured).
* Heap (glibc): every evaluation allocates and frees the same few dozen arrays of 0.1-2 MB
  per 2048-atom block.  glibc's adaptive thresholds decide, depending on the history of
  sizes, whether these come from mmap or the heap and whether the freed heap top is given
  back; when it is, the next evaluation page-faults all of it again.  With the fixed
  20-function set on the reference set that was ~6300 page faults per evaluation: energy-only
  23.6 -> 11.3 ms, with forces 43.8 -> 30.8 ms with the thresholds fixed below (the auto set
  happened to escape it; same peak RSS, 487 against 488 MiB).  Arrays above 8 MiB still
  come from mmap (and go back to the OS when freed); up to 256 MiB of freed heap top is kept.
"""

import ctypes
import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def _fix_heap_thresholds() -> None:
    if "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        return  # the user's settings
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 8 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


_fix_heap_thresholds()
