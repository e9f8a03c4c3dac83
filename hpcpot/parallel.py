"""The only module that knows about MPI: the communicator, collectives and the worker loop.

:func:`world` returns an :class:`MPIComm` under ``mpirun``/``srun`` and a :class:`SerialComm`
with the same methods otherwise (no launcher, or mpi4py not importable), so nothing else
checks for MPI.  Collectives on numpy arrays use mpi4py's buffer interface (no pickling).

Failure policy: an exception on any rank prints one message from that rank and calls
``Abort`` so that no rank is left waiting in a collective (see :func:`run_guarded`).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import InputError


class SerialComm:
    """Stand-in communicator for one process: every collective is the identity."""

    rank = 0
    size = 1
    library = "none (serial)"

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def Bcast(self, arr: np.ndarray, root: int = 0) -> None:
        pass

    def allreduce_sum(self, arr: np.ndarray, overlap: Sequence[Callable[[], None]] | None = None) -> np.ndarray:
        """Sum over ranks, in place.  ``overlap``: work to run while the partial sums travel
        (see :meth:`MPIComm.allreduce_sum`); one process has no wait to hide it behind, so
        here it is not run."""
        return arr

    def allreduce_min(self, arr: np.ndarray) -> np.ndarray:
        return arr

    def allreduce_max(self, arr: np.ndarray) -> np.ndarray:
        return arr

    def allgather(self, obj: Any) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def hosts(self) -> list[str]:
        return [socket.gethostname()]


ABORT_GRACE_S = 1.0


class MPIComm(SerialComm):
    """Thin wrapper of an mpi4py communicator."""

    def __init__(self, comm):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.library = MPI.Get_library_version().splitlines()[0].strip()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def Bcast(self, arr: np.ndarray, root: int = 0) -> None:
        self.comm.Bcast(arr, root=root)

    @staticmethod
    def _check_in_place(arr: np.ndarray) -> None:
        """Reductions work in place on a contiguous array of at least one element (a 0-d
        array would need a copy, and a caller ignoring the return value would silently keep
        its local value)."""
        if arr.ndim == 0 or not arr.flags.c_contiguous:
            raise ValueError("allreduce needs a C-contiguous array with ndim >= 1")

    def _allreduce(self, arr: np.ndarray, op) -> np.ndarray:
        self._check_in_place(arr)
        self.comm.Allreduce(self._MPI.IN_PLACE, arr, op=op)
        return arr

    def allreduce_sum(self, arr: np.ndarray, overlap: Sequence[Callable[[], None]] | None = None) -> np.ndarray:
        """Sum over ranks, in place.  With ``overlap`` (a sequence, possibly empty; every rank
        must pass one or every rank None, as blocking and nonblocking collectives do not
        match): a nonblocking ``Iallreduce``, and the chunks of work in ``overlap`` run in
        order while it is in flight, the request tested after each so that MPI progresses it
        (MPICH progresses a nonblocking collective only inside MPI calls); once the sum has
        arrived the remaining chunks are skipped, so the work costs at most one chunk beyond
        the wait.  For rank-local work worth doing only while waiting for the slowest rank
        and the reduction's stages: the optimiser's cache warm-up, most useful first."""
        if overlap is None:
            return self._allreduce(arr, self._MPI.SUM)
        self._check_in_place(arr)
        req = self.comm.Iallreduce(self._MPI.IN_PLACE, arr, op=self._MPI.SUM)
        for chunk in overlap:
            chunk()
            if req.Test():
                return arr
        req.Wait()
        return arr

    def allreduce_min(self, arr: np.ndarray) -> np.ndarray:
        return self._allreduce(arr, self._MPI.MIN)

    def allreduce_max(self, arr: np.ndarray) -> np.ndarray:
        return self._allreduce(arr, self._MPI.MAX)

    def allgather(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Abort tears the whole job down at once; the launcher (MPICH's hydra, measured under
        # load) can then drop the aborting rank's last lines before forwarding them.  A short
        # pause lets the error message reach the user; the other ranks are waiting anyway.
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)

    def hosts(self) -> list[str]:
        return self.comm.allgather(socket.gethostname())


_LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "PMI_FD", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "HYDRA_CONTROL_FD", "MPI_LOCALNRANKS")


def _launcher_size() -> int:
    """The job size a launcher announced in the environment (1 if none says)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"):
        try:
            return int(os.environ[var])
        except (KeyError, ValueError):
            continue
    return 1


def _launch_error(message: str) -> SystemExit:
    """N copies of one mistaken launch: the first prints why, all exit with code 2."""
    first = all(os.environ.get(v, "0") == "0" for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"))
    if first:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return SystemExit(2)


def world() -> SerialComm:
    """The world communicator: MPI when started by a launcher and mpi4py imports, else serial.

    Launches that would run N independent serial copies (each training alone and writing the
    same output files) are refused: ``srun`` without an MPI plugin, a launcher without mpi4py,
    and an mpi4py built against another MPI than the launcher's.
    """
    if os.environ.get("HPCPOT_SERIAL") == "1":
        return SerialComm()
    size = _launcher_size()
    if not any(v in os.environ for v in _LAUNCH_VARS):
        if size > 1:  # only SLURM_STEP_NUM_TASKS can say so here
            raise _launch_error(
                f"srun started {size} tasks without an MPI environment (no PMI/PMIx variables), so each "
                "would run alone as a serial copy. Use `srun --mpi=pmi2` (PyPI's MPICH) or the MPI "
                "plugin your site's MPI needs (`srun --mpi=list`), or mpiexec."
            )
        return SerialComm()  # plain `python -m ...`: don't pay for MPI_Init
    try:
        from mpi4py import MPI
    except ImportError as exc:
        if size > 1:
            raise _launch_error(
                f"this process is one of {size} MPI ranks, but mpi4py cannot be imported ({exc}). "
                "Install it into this Python (pip install mpi4py, built against the MPI that launches "
                "the job) or run without mpirun/srun for a serial run."
            ) from None
        print("warning: started by an MPI launcher but mpi4py cannot be imported; running serially",
              file=sys.stderr, flush=True)  # fmt: skip
        return SerialComm()
    comm = MPIComm(MPI.COMM_WORLD)
    if comm.size == 1 and size > 1:
        raise _launch_error(
            f"the launcher started {size} processes but mpi4py's MPI ({MPI.Get_library_version().splitlines()[0]}) "
            "sees a world of 1: mpi4py was built against a different MPI than the launcher's. Use the "
            "mpiexec that belongs to mpi4py's MPI, or rebuild mpi4py against the site's MPI (README)."
        )
    return comm if comm.size > 1 else SerialComm()


class GlobalError(Exception):
    """An error every rank meets identically (bad config, reduced memory forecast): only
    rank 0 reports it and every rank exits cleanly, without Abort."""


def run_guarded(comm: SerialComm, main: Callable[[], int]) -> int:
    """Run ``main`` on this rank; any exception ends every rank with a non-zero exit code.

    A :class:`GlobalError` is printed by rank 0 only.  Anything else is printed by the rank
    that hit it (with its rank number when size > 1) and followed by ``Abort``, which kills
    ranks that may be blocked in a collective.
    """
    try:
        return main()
    except GlobalError as exc:
        if comm.rank == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{_who(comm)}interrupted", file=sys.stderr, flush=True)
        comm.abort(130)
        return 130
    except BaseException as exc:  # noqa: BLE001 - the whole point is to catch everything
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, InputError) or (isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS):
            msg = f"{_who(comm)}error: {exc}"
        else:
            msg = f"{_who(comm)}error: {type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc())
        print(msg, file=sys.stderr, flush=True)
        comm.abort(1)
        return 1


# disk full, quota exceeded, file too large, read-only file system, I/O error: the message
# (which names the file) says it all; a traceback would only bury it
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def _who(comm: SerialComm) -> str:
    return f"[rank {comm.rank}] " if comm.size > 1 else ""


# ---------------------------------------------------------------- evaluation service

CMD_STOP = 0.0
CMD_GRAD = 1.0  # train loss + gradient
CMD_LOSS = 2.0  # train loss only
CMD_VALID = 3.0  # validation loss/RMSE only
CMD_EXTRA = 4.0  # the caller's extra evaluation (Levenberg–Marquardt's normal equations)
CMD_JOIN = 5.0  # every rank runs a copy of the optimiser from here (see Evaluator.everywhere)
CMD_DONE = 6.0  # (everywhere only) the copies left the optimiser together
CMD_FLOAT64 = 7.0  # switch the problems' float32 network passes to float64 (no reduction)
FLAG_MAX = 10.0  # added to a command: also reduce the max residuals

# Control slots appended to every reduction of the replicated mode: two 16-bit hashes h of
# (command, params) as h and h² (_hash_slots), the number of ranks that caught a signal, and rank 0's
# elapsed seconds.  Every slot sums exactly (small integers, or one non-zero term), so every
# rank reads the same totals whatever order the MPI library adds in, and all ranks hold the
# same h exactly when P·Σh² = (Σh)².
N_CONTROL = 6


def _hash_slots(values: np.ndarray, cmd: float) -> tuple[int, int, int, int]:
    """(h1, h1², h2, h2²) for two 16-bit hashes of the bits of ``values`` and the command
    (~2 µs for 3000 parameters): summed over the ranks, :func:`_hashes_agree` tells whether
    every rank hashed the same."""
    s = int(values.view(np.uint64).sum(dtype=np.uint64)) ^ (int(cmd) * 0x9E3779B97F4A7C15)
    s = ((s ^ (s >> 29)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    s ^= s >> 32
    h1, h2 = s & 0xFFFF, (s >> 16) & 0xFFFF
    return h1, h1 * h1, h2, h2 * h2


def _hashes_agree(summed: np.ndarray, size: int) -> bool:
    """Whether the ``size`` ranks' :func:`_hash_slots` that add up to ``summed`` were all
    equal: P·Σh² = (Σh)² for both hashes (exact: small integers)."""
    return all(size * int(summed[k + 1]) == int(summed[k]) ** 2 for k in (0, 2))


class ReplicaMismatch(GlobalError):
    """The ranks' copies of the optimiser no longer agree (found by every rank at once)."""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def why_not_replicated(comm: SerialComm, n: int) -> str | None:
    """None when every rank can run an identical copy of the optimiser on ``n``-double
    reductions, else the reason (every rank gets the same answer; collective).

    Copies stay identical when every rank reads the same bits from each Allreduce and does
    the same floating-point operations on them: the ranks must run the same CPU model and
    the same Python, numpy and scipy builds, and a trial Allreduce of ``n`` doubles must
    return the same bits everywhere (MPI does not promise that; the usual algorithms give it).
    """
    if comm.size == 1:
        return None
    import scipy

    ids = comm.allgather((_cpu_model(), sys.version, np.__version__, scipy.__version__))
    if any(i != ids[0] for i in ids):
        return "the ranks differ in CPU model or Python/numpy/scipy build"
    trial = np.random.default_rng(7919 + comm.rank).standard_normal(n)
    comm.allreduce_sum(trial, ())  # nonblocking, as the evaluations reduce
    if not _hashes_agree(comm.allreduce_sum(np.array(_hash_slots(trial, 0.0), float)), comm.size):
        return "this MPI library's Allreduce does not return the same bits on every rank"
    return None


class Evaluator:
    """Loss/gradient evaluations of the whole training set, in the mission's shape.

    Rank 0 calls :meth:`evaluate`; every other rank sits in :meth:`serve`.  One evaluation
    is one ``Bcast`` of ``[command, params...]`` and one in-place ``Allreduce`` of the packed
    partial sums of ``train.evaluate`` / ``valid.evaluate`` (the caller's problems; this
    module only knows their buffer sizes) (plus one 2-value MAX
    reduction only when max residuals are asked for).

    ``extra`` (optional): an object with ``buffer_size`` and ``evaluate(params, arg, out)``,
    run by :data:`CMD_EXTRA` with its own buffer; ``arg`` is one number rank 0 sends along
    (the iteration, say).  Its buffer is allocated only when given.
    """

    def __init__(self, comm: SerialComm, train, valid, n_head: int, extra=None):
        self.comm = comm
        self.train = train
        self.valid = valid
        self.extra = extra
        n = train.layout.n_params
        self.cmd = np.zeros(2 + n)  # [command, arg, params...]
        self.n_head = n_head  # leading buffer entries a loss-only evaluation fills
        self.buf = np.zeros(train.buffer_size)
        # the replicated mode's one buffer: the full loss+gradient buffer for every kind of
        # evaluation (so a rank that asks for another kind is caught, not left waiting), then
        # the control slots
        self.rbuf = np.zeros(train.buffer_size + N_CONTROL)
        self.ctrl = np.zeros(N_CONTROL)  # this rank's control slots of the next replicated evaluation
        self.agreed_stop = 0  # ranks that caught a signal, as of the last replicated evaluation
        self.agreed_elapsed = 0.0  # rank 0's elapsed seconds sent with it
        self.joined = False  # rank 0: the workers are in their copies of the optimiser
        self.join_meta: dict = {}  # ranks > 0: what rank 0 sent with the last CMD_JOIN
        self.extra_buf = np.zeros(extra.buffer_size) if extra is not None else None
        self.timing = {"bcast": 0.0, "compute": 0.0, "allreduce": 0.0, "n": 0}
        # this rank's work run while a loss+gradient evaluation's Allreduce is in flight (the
        # optimiser's cache warm-up; set_overlap); every evaluation reduces nonblocking, so
        # ranks with and without such work issue matching collectives
        self.overlap: Sequence[Callable[[], None]] = ()
        # count and compute seconds per kind: a training's mean over all kinds mixes cheap
        # validation passes with full loss+gradient evaluations
        self.by_kind = {"loss+gradient": [0, 0.0], "loss only": [0, 0.0], "validation": [0, 0.0]}

    def _run(self, cmd: float) -> np.ndarray:
        base = cmd % FLAG_MAX
        want_max = cmd >= FLAG_MAX
        params = self.cmd[2:]
        t1 = time.perf_counter()
        if base == CMD_EXTRA:
            out = self.extra.evaluate(params, float(self.cmd[1]), self.extra_buf)
            t2 = time.perf_counter()
            self.comm.allreduce_sum(out)
            self.timing["extra_compute"] = self.timing.get("extra_compute", 0.0) + t2 - t1
            self.timing["extra_allreduce"] = self.timing.get("extra_allreduce", 0.0) + time.perf_counter() - t2
            self.timing["extra_n"] = self.timing.get("extra_n", 0) + 1
            return out
        if base == CMD_VALID:
            prob, with_grad = self.valid, False
        else:
            prob, with_grad = self.train, base == CMD_GRAD
        out = self.buf if with_grad else self.buf[: self.n_head]
        if prob is not None:
            prob.evaluate(params, with_grad=with_grad, out=out)
        else:
            out[:] = 0.0
        t2 = time.perf_counter()
        self.comm.allreduce_sum(out, self.overlap if with_grad else ())
        self._account(base, with_grad, t1, t2, time.perf_counter(), prob, want_max)
        return out

    def _account(self, base: float, with_grad: bool, t1: float, t2: float, t3: float, prob, want_max: bool) -> None:
        """Timing of one evaluation (compute t1..t2, Allreduce t2..t3) and, with ``want_max``,
        the MAX reduction of the max residuals of ``prob`` (this rank's problem, or None)."""
        self.timing["compute"] += t2 - t1
        self.timing["allreduce"] += t3 - t2
        self.timing["n"] += 1
        kind = self.by_kind["validation" if base == CMD_VALID else "loss+gradient" if with_grad else "loss only"]
        kind[0] += 1
        kind[1] += t2 - t1
        if want_max:
            mx = np.array(prob.last_max if prob is not None else (0.0, 0.0))
            self.comm.allreduce_max(mx)
            self.last_max = (float(mx[0]), float(mx[1]))

    def set_overlap(self, chunks: Sequence[Callable[[], None]]) -> None:
        """Run ``chunks`` (zero-argument callables, in order) while each later loss+gradient
        evaluation waits in its Allreduce, until replaced (``()``: none).  Rank-local: the
        caller's optimiser registers the prefetch of its own memory."""
        self.overlap = tuple(chunks)

    def evaluate(self, params: np.ndarray, cmd: float = CMD_GRAD, want_max: bool = False, arg: float = 0.0) -> np.ndarray:
        """Rank 0: the reduced buffer ``[loss, ΣrE², n_img, ΣΔF², n_F, grad...]`` (a view), or
        the extra evaluation's buffer for :data:`CMD_EXTRA` (``arg`` is passed to it)."""
        self.cmd[0] = cmd + (FLAG_MAX if want_max else 0.0)
        self.cmd[1] = arg
        self.cmd[2:] = params
        t0 = time.perf_counter()
        self.comm.Bcast(self.cmd)
        self.timing["bcast"] += time.perf_counter() - t0
        return self._run(self.cmd[0])

    def serve(self) -> float:
        """Ranks > 0: evaluate whatever rank 0 asks until it says stop (returns
        :data:`CMD_STOP`) or asks every rank to run the optimiser (returns :data:`CMD_JOIN`;
        the starting parameters are then ``self.cmd[2:]``)."""
        while True:
            self.comm.Bcast(self.cmd)
            if self.cmd[0] == CMD_JOIN:
                self.join_meta = self.comm.bcast(None)
            if self.cmd[0] in (CMD_STOP, CMD_JOIN):
                return float(self.cmd[0])
            if self.cmd[0] == CMD_FLOAT64:
                self._use_float64()
                continue
            self._run(self.cmd[0])

    def use_float64(self, broadcast: bool) -> bool:
        """Float64 network passes from the next evaluation on, on every rank (one way; True if
        the passes were float32).  ``broadcast``: rank 0 driving, the workers in :meth:`serve`
        switch too; copies of the optimiser on every rank each call it with False at the same
        iteration."""
        if broadcast and self.comm.size > 1:
            self.cmd[0] = CMD_FLOAT64
            self.comm.Bcast(self.cmd)
        return self._use_float64()

    def _use_float64(self) -> bool:
        changed = False
        for prob in (self.train, self.valid):
            if prob is not None and hasattr(prob, "use_float64"):
                changed = prob.use_float64() or changed
        return changed

    def join(self, params: np.ndarray, meta: dict) -> None:
        """Rank 0: call the workers out of :meth:`serve` into their copies of the optimiser,
        starting from ``params``; ``meta`` (small, picklable) becomes their ``join_meta``."""
        self.cmd[0] = CMD_JOIN
        self.cmd[2:] = params
        self.comm.Bcast(self.cmd)
        self.comm.bcast(meta)
        self.joined = True

    def everywhere(self, params: np.ndarray, cmd: float = CMD_GRAD, want_max: bool = False,
                   stop: bool = False, elapsed: float = 0.0) -> np.ndarray:  # fmt: skip
        """Every rank, with the same ``params``: one evaluation without a broadcast (each rank
        runs its own identical copy of the optimiser), as one ``Allreduce``.

        Returns the reduced ``[head, grad]`` (or the head for loss-only and validation).
        ``stop``: this rank caught a signal; ``elapsed``: rank 0's clock (others' is ignored).
        Afterwards ``agreed_stop`` (ranks that caught one) and ``agreed_elapsed`` are the same
        on every rank.  Raises :class:`ReplicaMismatch` on every rank at once when the ranks
        passed different parameters or commands; :data:`CMD_DONE` checks that all ranks
        left the optimiser together.
        """
        # the control slots before the evaluation: Python right after it runs with its code out
        # of the caches (a 64-rank shard of the reference set: the service's own time ~3 µs less,
        # 28-46 -> 25-42 µs in five interleaved rounds)
        ctrl = self.ctrl
        ctrl[:4] = _hash_slots(params, cmd)
        ctrl[4] = 1.0 if stop else 0.0
        ctrl[5] = elapsed if self.comm.rank == 0 else 0.0
        t1 = time.perf_counter()
        n = self.train.buffer_size
        rb = self.rbuf
        with_grad = cmd == CMD_GRAD
        prob = self.valid if cmd == CMD_VALID else self.train
        head = n if with_grad else self.n_head
        if prob is not None and cmd != CMD_DONE:
            prob.evaluate(params, with_grad=with_grad, out=rb[:head])
            if head < n:
                rb[head:n] = 0.0
        else:
            rb[:n] = 0.0
        rb[n:] = ctrl
        t2 = time.perf_counter()
        self.comm.allreduce_sum(rb, self.overlap if with_grad else ())
        t3 = time.perf_counter()
        c = rb[n:]
        if not _hashes_agree(c, self.comm.size):
            raise ReplicaMismatch(
                "the ranks' copies of the optimiser disagree (different parameters or a different "
                "step), so the MPI library or the ranks' CPUs do not give bit-identical results; "
                "resume with --restart after setting [parallel] optimizer = \"rank0\" (rank 0 then "
                "drives and broadcasts the parameters)"
            )
        self.agreed_stop = int(c[4])
        self.agreed_elapsed = float(c[5])
        if cmd == CMD_DONE:
            return rb[:0]
        self._account(cmd, with_grad, t1, t2, t3, prob, want_max)
        return rb[:head]

    def stop(self) -> None:
        """Rank 0: release the workers.  Not while they run their copies of the optimiser
        (``joined``, cleared by the caller once all copies have left): rank 0 leaving alone
        means an error only it met, and :func:`run_guarded`'s Abort then ends them."""
        if self.comm.size > 1 and not self.joined:
            self.cmd[0] = CMD_STOP
            self.comm.Bcast(self.cmd)


class SignalFlag:
    """Records SIGTERM/SIGUSR1/SIGINT instead of dying, so rank 0 can checkpoint first."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)):
        self.received: int | None = None
        for s in signals:
            signal.signal(s, self._handler)

    def _handler(self, signum, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.received = signum
