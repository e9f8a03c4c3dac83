"""Simulated-annealing search in parameter space before gradient descent (Amp's Annealer).

Runs on rank 0 only; every trial state is evaluated through ``loss(params)`` (the MPI
layer broadcasts it and reduces the loss, no gradient).  Metropolis acceptance, exponential
cooling ``T_k = Tmax (Tmin/Tmax)^(k/steps)``, Gaussian moves of all parameters with standard
deviation ``step_size``.  The best state seen is returned, so the result is never worse
than the start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from .config import AnnealConfig


def _temperature_for_acceptance(dE: np.ndarray, target: float) -> float:
    """T with mean(exp(-dE/T)) = target over uphill moves dE > 0 (bisection on log T)."""
    lo, hi = 1e-12, 1e12
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if np.mean(np.exp(-dE / mid)) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def auto_schedule(loss: Callable[[np.ndarray], float], x0: np.ndarray, cfg: AnnealConfig, log, n_trials: int = 100) -> tuple[float, float]:
    """Estimate (Tmax, Tmin) from a short exploratory random walk from x0.

    Tmax: ~98% of the uphill moves seen are accepted.  Tmin: only ~0.1% are, so almost no
    move improves at the end of the schedule."""
    rng = np.random.default_rng(cfg.seed + 1)
    x = x0.copy()
    e = loss(x)
    ups = []
    for _ in range(n_trials):
        y = x + rng.normal(0.0, cfg.step_size, x.shape)
        ey = loss(y)
        if ey > e:
            ups.append(ey - e)
        x, e = y, ey  # random walk: sample the landscape, not just around x0
    if not ups:
        log("anneal auto: no uphill move seen; keeping the configured Tmax/Tmin")
        return cfg.tmax, cfg.tmin
    d = np.array(ups)
    tmax = _temperature_for_acceptance(d, 0.98)
    tmin = _temperature_for_acceptance(d, 0.001)
    log(f"anneal auto: from {n_trials} exploratory moves (median uphill ΔL {np.median(d):.3e}): "
        f"Tmax = {tmax:.4g} (98% accepted), Tmin = {tmin:.4g} (0.1% accepted)")  # fmt: skip
    return tmax, tmin


def anneal(
    loss: Callable[[np.ndarray], float],
    x0: np.ndarray,
    cfg: AnnealConfig,
    log=print,
    resume=None,
    on_update: Callable[[int, dict, dict], None] | None = None,
    checkpoint_every: int = 0,
    save: Callable[[int, dict, dict], None] | None = None,
) -> np.ndarray:
    """Anneal from x0 (or a checkpoint ``resume``); returns the best parameters found."""
    steps = cfg.steps
    updates = cfg.updates or max(1, steps // 200)
    every = max(1, steps // updates)
    rng = np.random.default_rng(cfg.seed)
    if resume is not None:
        ex = resume.extra
        x, best = resume.arrays["current"].copy(), resume.arrays["best"].copy()
        e, e_best = ex["loss"], ex["best_loss"]
        tmax, tmin = ex["tmax"], ex["tmin"]
        rng.bit_generator.state = ex["rng"]
        ex = {"start_loss": ex.get("start_loss", math.nan)}
        k0 = resume.iteration
    else:
        x = x0.copy()
        e = loss(x)
        best, e_best = x.copy(), e
        ex = {"start_loss": e}
        tmax, tmin = auto_schedule(loss, x0, cfg, log) if cfg.auto else (cfg.tmax, cfg.tmin)
        k0 = 0
    log(f"anneal: {steps} steps, Tmax {tmax:g}, Tmin {tmin:g}, step size {cfg.step_size:g}, start loss {e:.6e}")
    log(f"{'temperature':>12} {'loss':>13} {'best':>13} {'accepted':>9} {'improved':>9} {'elapsed':>9} {'remaining':>9}")
    t0 = time.perf_counter()
    cool = math.log(tmin / tmax)
    acc = imp = n = 0
    self_state = {}
    for k in range(k0, steps):
        T = tmax * math.exp(cool * k / steps)
        y = x + rng.normal(0.0, cfg.step_size, x.shape)
        ey = loss(y)
        dE = ey - e
        n += 1
        if dE > 0.0 and math.exp(-dE / T) < rng.random():
            pass  # rejected
        else:
            acc += 1
            if dE < 0.0:
                imp += 1
            x, e = y, ey
            if e < e_best:
                best, e_best = x.copy(), e
        done = k + 1
        if done % every == 0 or done == steps:
            el = time.perf_counter() - t0
            rem = el / (done - k0) * (steps - done)
            log(f"{T:12.5g} {e:13.6e} {e_best:13.6e} {100 * acc / n:8.2f}% {100 * imp / n:8.2f}% {el:8.1f}s {rem:8.1f}s")
            self_state = {"accepted": acc / n, "improved": imp / n}
            acc = imp = n = 0
        extra = None
        if on_update is not None or (save is not None and checkpoint_every and done % checkpoint_every == 0):
            extra = {"loss": e, "best_loss": e_best, "start_loss": ex["start_loss"], "tmax": tmax, "tmin": tmin, "rng": rng.bit_generator.state}
            arrays = {"current": x, "best": best}
            if save is not None and checkpoint_every and done % checkpoint_every == 0:
                save(done, extra, arrays)
            if on_update is not None:
                on_update(done, extra, arrays)
    anneal.last_rates = self_state
    log(f"anneal: best loss {e_best:.6e} (start {ex['start_loss']:.6e})")
    return best
