"""Run under mpiexec by tests/test_mpi.py (also serially).

    helper.py eval CONFIG OUT.npy      reduced [loss, ..., grad] at x0 + fixed perturbation
    helper.py train CONFIG             python -m hpcpot.train CONFIG --overwrite
    helper.py fail CONFIG              like train, but rank 1 raises in its 3rd evaluation
"""

import sys

import numpy as np

from hpcpot.parallel import Evaluator, run_guarded, world
from hpcpot.training.config import load_config
from hpcpot.training.loss import N_HEAD
from hpcpot.training.trainer import build


def main() -> int:
    mode, cfgpath = sys.argv[1], sys.argv[2]
    comm = world()
    if mode == "eval":

        def run():
            cfg = load_config(cfgpath)
            setup = build(comm, cfg, lambda *a: None)
            ev = Evaluator(comm, setup.train, setup.valid, N_HEAD)
            if comm.rank != 0:
                ev.serve()
                return 0
            p = setup.x0 + np.random.default_rng(5).normal(0, 0.05, setup.x0.size)
            buf = ev.evaluate(p).copy()
            ev.stop()
            np.save(sys.argv[3], np.concatenate([buf, setup.x0]))
            return 0

        return run_guarded(comm, run)
    if mode == "fail":
        import hpcpot.training.loss

        orig = hpcpot.training.loss.ShardProblem.evaluate
        count = {"n": 0}

        def bad(self, *a, **k):
            count["n"] += 1
            if comm.rank == 1 and count["n"] == 3:
                raise RuntimeError("injected failure on rank 1")
            return orig(self, *a, **k)

        hpcpot.training.loss.ShardProblem.evaluate = bad
    from hpcpot.train import main as train_main

    return train_main([cfgpath, "--overwrite"])


if __name__ == "__main__":
    sys.exit(main())
