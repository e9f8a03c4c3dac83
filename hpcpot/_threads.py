"""One BLAS/OpenMP thread per process, for the command-line entry points.

Parallelism comes from MPI ranks, and the network matrices (atoms x 20) are too small for
BLAS threads to pay off: two ranks with two BLAS threads each on two cores ran 3x slower
(measured).  Imported before numpy by the entry points only (hpcpot.train, evaluate, bench,
examples/md_nve.py, benchmarks/md_speed.py, the tests' conftest), so that importing hpcpot
as a library (the ASE calculator) changes nothing; an explicit user setting wins.
"""

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
