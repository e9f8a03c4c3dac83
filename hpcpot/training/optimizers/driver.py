"""The optimiser driver: hpcpot's L-BFGS (:mod:`.lbfgs`, the default), scipy's L-BFGS-B, BFGS
or nonlinear CG, or Levenberg–Marquardt (:mod:`.lm`), with the per-iteration work written once.

The objective is whatever ``evaluate(params) -> buffer`` returns (reduced over all ranks by
the MPI layer).  Convergence follows Amp: the run stops when every criterion that is set
holds (energy RMSE in eV/atom, force RMSE in eV/Å, optional max residuals), or after
``max_iterations``.  Whenever the validation set is evaluated, the parameters of the lowest
validation loss so far are kept (:class:`Best`), so a run that overfits late still yields its
best model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import Config
from ..loss import N_HEAD


@dataclass
class Stats:
    loss: float
    energy_rmse: float  # eV/atom
    force_rmse: float  # eV/Å (nan without forces)
    energy_max: float = math.nan  # eV/atom
    force_max: float = math.nan  # eV/Å
    energy_share: float = math.nan  # the energy term's part of the loss (the rest is the force term)

    @classmethod
    def from_buffer(cls, buf: np.ndarray, maxes: tuple[float, float] | None = None) -> Stats:
        e = math.sqrt(buf[1] / buf[2]) if buf[2] > 0 else math.nan
        f = math.sqrt(buf[3] / buf[4]) if buf[4] > 0 else math.nan
        s = cls(float(buf[0]), e, f)
        if buf[0] > 0:
            s.energy_share = float(0.5 * buf[1] / buf[0])
        if maxes is not None:
            s.energy_max, s.force_max = maxes
        return s


def _criteria(s: Stats, cfg: Config, with_forces: bool) -> list[tuple[str, float, float, str]]:
    """(name, value, limit, unit) of each convergence criterion that is set."""
    c = cfg.convergence
    checks = []
    if c.energy_rmse > 0:
        checks.append(("energy RMSE", s.energy_rmse, c.energy_rmse, "eV/atom"))
    if c.force_rmse > 0 and with_forces:
        checks.append(("force RMSE", s.force_rmse, c.force_rmse, "eV/Å"))
    if c.energy_maxresid > 0:
        checks.append(("max energy residual", s.energy_max, c.energy_maxresid, "eV/atom"))
    if c.force_maxresid > 0 and with_forces:
        checks.append(("max force residual", s.force_max, c.force_maxresid, "eV/Å"))
    return checks


def criteria_met(s: Stats, cfg: Config, with_forces: bool) -> bool:
    """Every set criterion holds (and at least one is set); NaN never meets one."""
    checks = _criteria(s, cfg, with_forces)
    return bool(checks) and all(v <= lim for _, v, lim, _ in checks)


def converged(s: Stats, cfg: Config, with_forces: bool) -> tuple[bool, str]:
    """(all set criteria met, a short description of each)."""
    checks = _criteria(s, cfg, with_forces)
    if not checks:
        return False, "no criterion set"
    text = "; ".join(f"{name} {v:.4g} {'<=' if v <= lim else '>'} {lim:g} {unit}" for name, v, lim, unit in checks)
    return all(v <= lim for _, v, lim, _ in checks), text


class Interrupted(Exception):
    """A signal asked the run to stop (after a checkpoint)."""


class NonFiniteLoss(Exception):
    """The loss became NaN or inf; ``params``/``iteration``/``stats`` are the last accepted
    (finite) point, so the run can keep them."""

    def __init__(self, message: str, params: np.ndarray, iteration: int, stats: Stats | None):
        super().__init__(message)
        self.params = params
        self.iteration = iteration
        self.stats = stats


@dataclass
class Best:
    """The parameters of the lowest validation loss seen, and their iteration."""

    loss: float = math.inf
    iteration: int = 0
    params: np.ndarray | None = None

    def offer(self, loss: float, iteration: int, params: np.ndarray) -> None:
        if loss < self.loss:
            self.loss, self.iteration, self.params = loss, iteration, params.copy()


@dataclass
class Result:
    params: np.ndarray
    iterations: int
    converged: bool
    message: str
    stats: Stats
    best: Best = dataclasses.field(default_factory=Best)


FLUSH_EVERY_S = 1.0


class LogWriter:
    """The human log (stdout) and ``log.jsonl`` (one object per iteration).

    An iteration hands over its figures only; they are formatted into the progress line and
    the JSON record, written and flushed in a batch at most ``FLUSH_EVERY_S`` later.
    Formatting and writing each iteration as it came cost rank 0 ~13 µs per evaluation with
    its caches warm and ~75 µs after an evaluation had streamed its derivatives through them
    (history 50, ``benchmarks/rank0_optimizer.py``), while every other rank waits; in a batch
    the same code runs warm.  :meth:`flush` runs before every checkpoint, so ``log.jsonl``
    always holds the checkpointed iterations, and :meth:`close` at the end.
    ``print_fn=None``: no output at all (the optimiser's copies on ranks > 0).
    """

    def __init__(self, path: str | None, print_fn: Callable[..., None] | None = print):
        self.path = path
        self.fh = open(path, "a") if path else None  # noqa: SIM115 - lives for the run
        self.print = print_fn
        self.t_flush = time.monotonic()
        self.pending: list[tuple] = []
        self.silent = path is None and print_fn is None

    def iteration(self, it: int, s: Stats, elapsed: float, with_forces: bool, vs: Stats | None = None,
                  more: dict | None = None) -> None:  # fmt: skip
        """One accepted iteration: training stats ``s``, validation stats ``vs`` if it was
        validated, ``more``: the method's own fields for the record."""
        if self.silent:
            return
        self.pending.append((it, s, elapsed, with_forces, vs, more))
        if time.monotonic() - self.t_flush >= FLUSH_EVERY_S:
            self.flush()

    @staticmethod
    def format(it: int, s: Stats, elapsed: float, with_forces: bool, vs: Stats | None, more: dict | None) -> tuple[str, dict]:
        """(progress line, log.jsonl record) of one iteration."""
        rec = {"iteration": it, "loss": s.loss, "energy_rmse": s.energy_rmse,
               "force_rmse": s.force_rmse if with_forces else None, "elapsed": round(elapsed, 4), **(more or {})}  # fmt: skip
        line = f"iter {it:6d}  loss {s.loss:.6e}  E_rmse {s.energy_rmse * 1000:9.3f} meV/atom"
        if with_forces:
            line += f"  F_rmse {s.force_rmse:8.4f} eV/Å"
        if vs is not None:
            rec["val_loss"] = vs.loss
            rec["val_energy_rmse"] = vs.energy_rmse
            rec["val_force_rmse"] = vs.force_rmse if with_forces else None
            line += f"  | val E {vs.energy_rmse * 1000:.3f} meV/atom"
            if with_forces:
                line += f" F {vs.force_rmse:.4f} eV/Å"
        return line + f"  {elapsed:8.1f} s", rec

    def flush(self) -> None:
        self.t_flush = time.monotonic()
        pending, self.pending = self.pending, []
        formatted = [self.format(*p) for p in pending]
        # log.jsonl first: it must not wait for stdout, which blocks while a pipe is full
        # (a launcher or a test that reads it only at the end)
        if self.fh:
            if formatted:
                self._file_op(self.fh.write, "".join(json.dumps(rec) + "\n" for _, rec in formatted))
            self._file_op(self.fh.flush)
        if self.print is not None:
            for line, _ in formatted:
                self.print(line, flush=False)
        sys.stdout.flush()

    def _file_op(self, op, *args) -> None:
        try:
            op(*args)
        except OSError as exc:  # disk full, quota: say which file
            raise OSError(exc.errno, f"writing {self.path} failed: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self.flush()
        if self.fh:
            self.fh.close()


class Iterations:
    """What every method does after an accepted step, written once: the log line, the
    ``log.jsonl`` record, validation (and :class:`Best`), ``on_iteration`` (checkpoints,
    signals) and the convergence test.  Also the last accepted point, for
    :class:`NonFiniteLoss`."""

    def __init__(self, cfg: Config, with_forces: bool, log: LogWriter, start_iteration: int, elapsed0: float,
                 validate, on_iteration, best: Best, clock: Callable[[], float] | None = None):  # fmt: skip
        self.cfg, self.with_forces, self.log = cfg, with_forces, log
        self.validate, self.on_iteration, self.best = validate, on_iteration, best
        self.t_start = time.perf_counter() - elapsed0
        self.clock = clock
        self.it = start_iteration
        self.stats: Stats | None = None
        self.x: np.ndarray | None = None
        self.conv = False
        self.verdict: Stats | None = None  # the stats the last convergence test saw
        self.budget_hit = False
        self.fresh_x = False  # True: the method never changes an x it handed over (no copy needed)
        c = cfg.convergence
        self.want_max = c.energy_maxresid > 0 or c.force_maxresid > 0

    def nonfinite(self, loss: float) -> NonFiniteLoss:
        return NonFiniteLoss(
            f"the loss became {loss} in iteration {self.it + 1} (the last finite one was iteration "
            f"{self.it}): check the data (units, outliers) and the learning setup",
            self.x, self.it, self.stats,
        )

    def accept(self, x: np.ndarray, s: Stats, more: dict | None = None) -> bool:
        """Report the accepted point ``x`` with training stats ``s`` (``more``: the method's
        own fields for the log.jsonl record); True when converged."""
        c, with_forces = self.cfg.convergence, self.with_forces
        self.it += 1
        it = self.it
        self.stats, self.x = s, (x if self.fresh_x else x.copy())
        elapsed = self.clock() if self.clock is not None else time.perf_counter() - self.t_start
        vs = None
        # Validation runs every validate_every iterations, also when the criteria are on the
        # validation set (they are then tested there): one validation pass costs ~8% of a
        # loss+gradient (reference demo), and a stop at most validate_every - 1 iterations
        # late costs less than that.
        if self.validate is not None and it % max(1, self.cfg.output.validate_every) == 0:
            vs = self.validate(x)
            self.best.offer(vs.loss, it, x)
        self.log.iteration(it, s, elapsed, with_forces, vs, more)
        if self.on_iteration is not None:
            self.on_iteration(it, x, elapsed)
        # only the verdict here; its text is built once, at the end (msg): rank 0's time per
        # iteration is every other rank's wait
        if c.on != "validation" or self.validate is None:
            self.verdict = s
        elif vs is not None:  # between validations the last verdict (not converged) stands
            self.verdict = vs
        if self.verdict is not None:
            self.conv = criteria_met(self.verdict, self.cfg, with_forces)
        budget = self.cfg.optimizer.max_time
        if not self.conv and budget > 0 and elapsed >= budget:
            self.budget_hit = True
            return True  # stop, not converged
        return self.conv

    @property
    def msg(self) -> str:
        """The last convergence test, in words."""
        text = converged(self.verdict, self.cfg, self.with_forces)[1] if self.verdict is not None else ""
        if self.budget_hit:
            text = f"time budget of {self.cfg.optimizer.max_time:g} s reached; {text or 'validation criteria not tested yet'}"
        return text


def run_optimizer(
    evaluate: Callable[..., np.ndarray],
    x0: np.ndarray,
    cfg: Config,
    with_forces: bool,
    log: LogWriter,
    start_iteration: int = 0,
    elapsed0: float = 0.0,
    validate: Callable[[np.ndarray], Stats] | None = None,
    on_iteration: Callable[[int, np.ndarray, float], None] | None = None,
    best: Best | None = None,
    normal_equations: Callable[[np.ndarray, int], np.ndarray] | None = None,
    loss_only: Callable[[np.ndarray, bool], np.ndarray] | None = None,
    opt_state: dict | None = None,
    clock: Callable[[], float] | None = None,
    on_stall: Callable[[int, str], bool] | None = None,
    overlap: Callable[[Sequence[Callable[[], None]]], None] | None = None,
) -> Result:
    """Minimise with the configured method (:func:`.lbfgs.minimize_lbfgs`, scipy, or
    :func:`.lm.run_lm`); ``evaluate(x, want_max)`` returns the
    reduced buffer.

    ``on_iteration(iteration, x, elapsed)`` runs after each accepted step (checkpoints,
    signal checks: it may raise :class:`Interrupted`).  ``best``: the best validation point of
    the run so far (a restart passes the checkpoint's); updated in place.  Method "lm" also
    needs ``normal_equations(x, iteration)`` (the reduced ``[head, grad, JᵀJ]``),
    ``loss_only(x, want_max)`` (the reduced head) and ``opt_state`` (its damping, read at
    the start and kept current for checkpoints).  ``clock()``: the elapsed seconds of the run
    (default: this process's clock from ``elapsed0``); copies of the optimiser on several
    ranks pass one clock they agree on, so that they stop at the same iteration.
    ``on_stall(iteration, message)``: called when a gradient method stops early (its line
    search found no lower point, say; ``message`` is its own); True if it changed the
    evaluation (float32 network passes switched to float64) and the method should go on from
    the last accepted point with a fresh memory.  ``overlap(chunks)``: where hpcpot's L-BFGS
    registers the prefetch of its memory, for the evaluation to run while its Allreduce is
    in flight (:meth:`hpcpot.parallel.Evaluator.set_overlap`).
    """
    try:
        return _run(evaluate, x0, cfg, with_forces, log, start_iteration, elapsed0, validate, on_iteration, best,
                    normal_equations, loss_only, opt_state, clock, on_stall, overlap)  # fmt: skip
    except BaseException:
        with contextlib.suppress(OSError):  # the iterations so far reach the log, as when written one by one
            log.flush()
        raise


def _run(evaluate, x0, cfg, with_forces, log, start_iteration, elapsed0, validate, on_iteration, best,
         normal_equations, loss_only, opt_state, clock, on_stall, overlap) -> Result:  # fmt: skip
    best = best if best is not None else Best()
    rep = Iterations(cfg, with_forces, log, start_iteration, elapsed0, validate, on_iteration, best, clock)
    rep.x = x0.copy()
    want_max = rep.want_max
    last: dict = {}
    remaining = max(0, cfg.optimizer.max_iterations - start_iteration)
    if remaining == 0:
        buf = evaluate(x0, want_max)
        s = Stats.from_buffer(buf)
        ok, msg = converged(s, cfg, with_forces)
        return Result(x0, start_iteration, ok, "max_iterations reached before start: " + msg, s, best)
    if cfg.optimizer.method == "lm":
        from .lm import run_lm

        if normal_equations is None or loss_only is None:
            raise ValueError('method = "lm" needs normal_equations and loss_only')
        return run_lm(normal_equations, loss_only, x0, cfg, rep, remaining, opt_state if opt_state is not None else {})

    # hpcpot's L-BFGS hands over fresh arrays it never changes and copies the gradient
    # itself; scipy's methods may reuse theirs
    own = rep.fresh_x = cfg.optimizer.method == "lbfgs"

    def fun(x):
        buf = evaluate(x, want_max)
        loss = float(buf[0])
        if not math.isfinite(loss):
            raise rep.nonfinite(loss)
        last["x"] = x if own else x.copy()
        # the figures only: Stats are built for accepted points, not for every line-search trial
        last["head"] = (buf[:N_HEAD].copy(), getattr(evaluate, "last_max", None) if want_max else None)
        return loss, buf[N_HEAD:] if own else buf[N_HEAD:].copy()

    def callback(intermediate_result):
        x = intermediate_result.x
        lx = last.get("x")
        if lx is None or (lx is not x and not np.array_equal(lx, x)):
            fun(x)  # rare: the accepted point was not the last evaluated one
        if rep.accept(x, Stats.from_buffer(*last["head"])):
            raise StopIteration

    def stalled(message: str) -> bool:
        """The method stopped before the budget and the criteria, and on_stall changed the
        evaluation: go on."""
        if rep.conv or rep.budget_hit or rep.it >= cfg.optimizer.max_iterations or "callback" in message:
            return False
        return on_stall is not None and on_stall(rep.it, message)

    if cfg.optimizer.method == "lbfgs":
        from .lbfgs import minimize_lbfgs

        while True:
            res = minimize_lbfgs(fun, x0, cfg.optimizer.history, cfg.optimizer.max_iterations - rep.it, callback,
                                 overlap=overlap)  # fmt: skip
            if not stalled(res.message):
                return _finish(rep, last, fun, res.x, res.message, best)
            x0 = rep.x
    if cfg.optimizer.method == "lbfgsb":
        opts = {"maxiter": remaining, "maxcor": cfg.optimizer.history, "ftol": 1e-15, "gtol": 1e-12, "maxfun": 10 * remaining + 100}
        method = "L-BFGS-B"
    elif cfg.optimizer.method == "cg":
        opts = {"maxiter": remaining, "gtol": 1e-12}
        method = "CG"  # Polak-Ribière with a Wolfe line search; memory O(P)
    else:
        opts = {"maxiter": remaining, "gtol": 1e-12}
        method = "BFGS"
    import scipy.optimize  # only here: ~35 MiB of imports a run with hpcpot's L-BFGS does not need

    while True:
        res = scipy.optimize.minimize(fun, x0, jac=True, method=method, callback=callback, options=opts)
        if not stalled(str(res.message)):
            return _finish(rep, last, fun, res.x, res.message, best)
        x0 = rep.x.copy()
        left = cfg.optimizer.max_iterations - rep.it
        opts = {**opts, "maxiter": left, **({"maxfun": 10 * left + 100} if "maxfun" in opts else {})}


def _finish(rep: Iterations, last: dict, fun, x_end: np.ndarray, message: str, best: Best) -> Result:
    """The Result from the driver's state after a method returned."""
    x = rep.x if rep.stats is not None else x_end
    if rep.stats is None:
        fun(x)
        rep.stats = Stats.from_buffer(*last["head"])
    if rep.conv:
        msg = f"converged after {rep.it} iterations: {rep.msg}"
    else:
        msg = f"not converged after {rep.it} iterations ({message}); {rep.msg}"
    return Result(x, rep.it, rep.conv, msg, rep.stats, best)
