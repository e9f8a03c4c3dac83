"""Command line: ``python -m hpcpot.train CONFIG.toml [--restart] [--overwrite]``.

Runs serially as a plain command, or in parallel under ``mpirun``/``mpiexec``/``srun``.
"""

from __future__ import annotations

import argparse
import sys

from . import _process  # noqa: F401  (before numpy: one BLAS thread per rank, heap thresholds)
from .parallel import GlobalError, SignalFlag, run_guarded, world
from .training.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hpcpot.train",
        description="Train a Behler-Parrinello neural-network potential on DFT energies (eV) and forces (eV/Å). "
        "Serial as is; parallel under mpirun -n N / srun --mpi=pmi2.",
    )
    ap.add_argument("config", help="TOML config file (see examples/)")
    ap.add_argument("--restart", action="store_true", help="resume from the newest valid checkpoint in <output.dir>/checkpoints")
    ap.add_argument("--overwrite", action="store_true", help="start over even if <output.dir> holds a run (old files are moved aside, not deleted)")
    args = ap.parse_args(argv)
    flag = SignalFlag()  # first thing: a SIGUSR1/SIGTERM during start-up is recorded, not fatal
    comm = world()

    def run() -> int:
        from .training.trainer import train

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise GlobalError(str(exc)) from None
        return train(comm, cfg, restart=args.restart, overwrite=args.overwrite, flag=flag)

    return run_guarded(comm, run)


if __name__ == "__main__":
    sys.exit(main())
