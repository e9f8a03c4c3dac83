"""hpcpot: MPI-parallel training of Behler–Parrinello neural-network potentials.

Units throughout: eV, Å, eV/Å.  ``hpcpot.Calculator(path)`` loads a trained model as an
ASE calculator; ``python -m hpcpot.evaluate MODEL DATA`` tests it on reference data.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "Calculator":
        from .potential.calculator import Calculator

        return Calculator
    raise AttributeError(name)
