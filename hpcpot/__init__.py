"""hpcpot: MPI-parallel training of Behler–Parrinello neural-network potentials.

Units throughout: eV, Å, eV/Å.  ``hpcpot.Calculator(path)`` loads a trained model as an
ASE calculator.
"""

import os as _os

# One BLAS thread per process: parallelism comes from MPI ranks, and the network matrices
# (atoms x 20) are too small for threads to pay off.  Respect an explicit user setting.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_v, "1")

__version__ = "0.1.0"


def __getattr__(name):
    if name == "Calculator":
        from .calculator import Calculator

        return Calculator
    raise AttributeError(name)
