"""Run under mpiexec by tests/test_mpi.py (also serially).

    helper.py eval CONFIG OUT.npy      reduced [loss, ..., grad] at x0 + fixed perturbation
    helper.py train CONFIG             python -m hpcpot.train CONFIG --overwrite
    helper.py fail CONFIG              like train, but rank 1 raises in its 3rd evaluation
    helper.py mismatch CONFIG          replicated evaluations in which rank 1 passes other
                                       parameters, then another command: every rank reports
    helper.py overlap CONFIG           evaluations with work registered to run during their
                                       Allreduce: every rank reports how often it ran
    helper.py inject SPEC CONFIG [ARGS] python -m hpcpot.train CONFIG ARGS with a fault injected
                                       on every rank (see install_fault)
"""

import sys

import numpy as np

from hpcpot.parallel import CMD_DONE, CMD_LOSS, CMD_VALID, Evaluator, ReplicaMismatch, run_guarded, world
from hpcpot.training.config import load_config
from hpcpot.training.loss import N_HEAD
from hpcpot.training.trainer import build


def install_fault(spec: str) -> None:
    """``KIND@POINT[:N]``: at the N-th time (default 1) this rank passes POINT, do KIND.

    KIND: ``sigterm`` (the rank signals itself, as a launcher forwarding SIGTERM would),
    ``sigterm1`` (only rank 1 does) or ``nan`` (the shard's loss becomes NaN; POINT must be
    ``eval``).  POINT: ``read`` (reading
    the shard), ``fingerprints``, ``anneal`` (an annealing loss evaluation), ``eval`` (a
    loss evaluation), ``model`` (writing model.json)."""
    import os
    import signal

    import hpcpot.training.anneal as an
    import hpcpot.training.trainer as tr
    from hpcpot.potential.modelfile import Model
    from hpcpot.training.loss import ShardProblem

    kind, _, where = spec.partition("@")
    point, _, n = where.partition(":")
    count = {"n": 0, "at": int(n or 1)}

    def fire() -> bool:
        count["n"] += 1
        if count["n"] != count["at"]:
            return False
        if kind == "sigterm" or (kind == "sigterm1" and os.environ.get("PMI_RANK") == "1"):
            os.kill(os.getpid(), signal.SIGTERM)
        return True

    def wrap(fn):
        def wrapped(*a, **k):
            fire()
            return fn(*a, **k)

        return wrapped

    if point == "read":
        tr.read_shard = wrap(tr.read_shard)
    elif point == "fingerprints":
        tr.compute_fingerprints = wrap(tr.compute_fingerprints)
    elif point == "model":
        Model.save = wrap(Model.save)
    elif point == "anneal":
        orig_anneal = an.anneal
        an.anneal = lambda loss, *a, **k: orig_anneal(wrap(loss), *a, **k)
    elif point == "eval":
        orig_eval = ShardProblem.evaluate

        def evaluate(self, *a, **k):
            out = orig_eval(self, *a, **k)
            if self.n_images < 2:  # the kernels' warm-up on a one-image problem
                return out
            if fire() and kind == "nan":
                out[0] = float("nan")
            return out

        ShardProblem.evaluate = evaluate
    else:
        raise ValueError(f"unknown fault point {point!r}")


def _evaluator(comm, cfgpath):
    """The training set-up of CONFIG on these ranks and an Evaluator over it."""
    setup = build(comm, load_config(cfgpath), lambda *a: None)
    return setup, Evaluator(comm, setup.train, setup.valid, N_HEAD)


def main() -> int:
    mode, cfgpath = sys.argv[1], sys.argv[2]
    if mode == "inject":
        install_fault(sys.argv[2])
        from hpcpot.train import main as train_main

        return train_main(sys.argv[3:])
    comm = world()
    if mode == "eval":

        def run():
            setup, ev = _evaluator(comm, cfgpath)
            if comm.rank != 0:
                ev.serve()
                return 0
            p = setup.x0 + np.random.default_rng(5).normal(0, 0.05, setup.x0.size)
            buf = ev.evaluate(p).copy()
            ev.stop()
            np.save(sys.argv[3], np.concatenate([buf, setup.x0]))
            return 0

        return run_guarded(comm, run)
    if mode == "mismatch":

        def run():
            setup, ev = _evaluator(comm, cfgpath)
            p = setup.x0.copy()
            ev.everywhere(p)
            print(f"rank {comm.rank}: agreed", flush=True)
            if comm.rank == 1:
                p[-1] = np.nextafter(p[-1], np.inf)  # one bit of one parameter
            try:
                ev.everywhere(p)
            except ReplicaMismatch:
                print(f"rank {comm.rank}: parameters differ", flush=True)
            try:  # rank 0's copy has finished, rank 1's evaluates again
                ev.everywhere(setup.x0, CMD_DONE if comm.rank == 0 else 1.0)
            except ReplicaMismatch:
                print(f"rank {comm.rank}: commands differ", flush=True)
            return 0

        return run_guarded(comm, run)
    if mode == "overlap":

        def run():
            setup, ev = _evaluator(comm, cfgpath)
            ran = []
            p = setup.x0 + 0.01
            plain = ev.everywhere(p).copy()
            ev.set_overlap([lambda: ran.append(1), lambda: ran.append(2)])
            same = np.array_equal(ev.everywhere(p), plain)
            ev.everywhere(p, CMD_VALID)  # loss-only kinds run nothing
            print(f"rank {comm.rank}: everywhere ran {ran}, same sums {same}", flush=True)
            ran.clear()
            ev.set_overlap(())  # ranks in serve() have no optimiser
            if comm.rank != 0:
                ev.serve()
                return 0
            plain = ev.evaluate(p).copy()
            ev.set_overlap([lambda: ran.append(1), lambda: ran.append(2)])
            same = np.array_equal(ev.evaluate(p), plain)
            ev.evaluate(p, CMD_LOSS)
            ev.stop()
            print(f"rank 0: evaluate ran {ran}, same sums {same}", flush=True)
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
