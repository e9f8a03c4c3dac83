"""Levenberg–Marquardt on rank 0, over normal equations that every rank helps build.

Each iteration asks all ranks once for ``[head, grad, JᵀJ]`` (one Allreduce of P² + P + 5
numbers; see :class:`hpcpot.training.jacobian.NormalEquations`), then solves

    (JᵀJ + μ I) δ = −Jᵀr

by Cholesky and tries θ + δ with a loss-only evaluation.  A lower loss is accepted, and μ
follows the gain ratio ρ = (actual decrease) / (decrease predicted by the quadratic model):
μ · ``lm_decrease`` when ρ > 0.75 (the model is good: trust it further), μ · ``lm_increase``
when ρ < 0.25, unchanged in between.  A step that does not lower the loss (or a failed
factorisation) multiplies μ by ``lm_increase`` and the same system is solved again.  Every accepted step is one
iteration of the driver (:class:`.driver.Iterations`): log line, record, validation,
checkpoint and convergence test, as for the scipy methods.  μ lives in ``state`` so that a
checkpoint carries it and a restart continues with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.linalg

from ..config import Config
from ..loss import N_HEAD
from .driver import Iterations, NonFiniteLoss, Result, Stats

# μ beyond this (in loss units per parameter², against a JᵀJ whose entries are O(1) or less
# for scaled data) makes δ ~ −Jᵀr / μ vanish: no step can lower the loss any more.
MU_MAX = 1e16
MU_MIN = 1e-30


def run_lm(
    normal_equations: Callable[[np.ndarray, int], np.ndarray],
    loss_only: Callable[[np.ndarray, bool], np.ndarray],
    x0: np.ndarray,
    cfg: Config,
    rep: Iterations,
    remaining: int,
    state: dict,
) -> Result:
    """Up to ``remaining`` accepted LM steps from ``x0``; ``state["lm_damping"]`` (μ) is read
    at the start (default ``[optimizer] lm_damping``) and kept current."""
    o = cfg.optimizer
    mu = float(state.get("lm_damping", o.lm_damping))
    state["lm_damping"] = mu
    x = x0.copy()
    P = len(x)
    stop = "max_iterations reached"
    done = 0
    diag = np.arange(P)
    while done < remaining:
        buf = normal_equations(x, rep.it + 1)
        loss = float(buf[0])
        if not math.isfinite(loss):
            raise rep.nonfinite(loss)
        if rep.stats is None:
            rep.stats = Stats.from_buffer(buf)
        g = buf[N_HEAD : N_HEAD + P].copy()
        # the lower triangle of this row-major view holds JᵀJ (see NormalEquations)
        A = buf[N_HEAD + P :].reshape(P, P)
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(A[diag, diag]))):
            raise NonFiniteLoss(f"the Jacobian became non-finite in iteration {rep.it + 1}: check the data and the "
                                "learning setup", rep.x, rep.it, rep.stats)  # fmt: skip
        accepted = None
        rejected = 0
        while mu <= MU_MAX:
            M = np.tril(A)
            M[diag, diag] += mu
            try:
                cf = scipy.linalg.cho_factor(M, lower=True, overwrite_a=True, check_finite=False)
            except np.linalg.LinAlgError:
                mu *= o.lm_increase  # not positive definite at this μ (JᵀJ is singular for P > rows)
                continue
            del M
            delta = scipy.linalg.cho_solve(cf, -g, check_finite=False)
            del cf
            head = loss_only(x + delta, rep.want_max)
            trial = float(head[0])
            if math.isfinite(trial) and trial < loss:
                accepted = (x + delta, Stats.from_buffer(head, getattr(loss_only, "last_max", None) if rep.want_max else None))
                # predicted decrease of ½‖r + Jδ‖² with (JᵀJ + μI)δ = −g: ½ (μ‖δ‖² − g·δ) > 0
                rho = (loss - trial) / max(0.5 * (mu * float(delta @ delta) - float(g @ delta)), 1e-300)
                if rho > 0.75:
                    mu = max(mu * o.lm_decrease, MU_MIN)
                elif rho < 0.25:
                    mu *= o.lm_increase
                break
            rejected += 1
            mu *= o.lm_increase
        if accepted is None:
            stop = f"no step lowers the loss any more (damping above {MU_MAX:g})"
            mu = min(mu, MU_MAX)
            state["lm_damping"] = mu
            break
        state["lm_damping"] = mu  # before accept(): its checkpoint must carry the new μ
        x = accepted[0]
        done += 1
        if rep.accept(x, accepted[1], {"lm_damping": mu, "lm_rejected": rejected}):
            break
    if rep.conv:
        msg = f"converged after {rep.it} iterations: {rep.msg}"
    else:
        msg = f"not converged after {rep.it} iterations ({stop}); {rep.msg}"
    return Result(x, rep.it, rep.conv, msg, rep.stats, rep.best)
