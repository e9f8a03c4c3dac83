"""Rank 0's own time per evaluation: scipy's L-BFGS-B against hpcpot's L-BFGS.

    python benchmarks/rank0_optimizer.py [--params 3006] [--repeats 5]

The objective is a cheap separable quadratic with the training problem's parameter count, so
what is timed is the optimiser's own work between evaluations (all other ranks wait for it):
total time minus the time of the same number of objective calls, per evaluation, median over
repeats, for history 10 and 50.  Ratios are what to read; the machine's speed cancels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.optimize

from hpcpot.training.optimizers.lbfgs import minimize_lbfgs


def overhead(method: str, P: int, history: int, seed: int) -> float:
    d = np.random.default_rng(seed).uniform(1, 100, P)
    x0 = np.random.default_rng(seed + 1).normal(size=P)
    n = [0]

    def f(x):
        n[0] += 1
        return 0.5 * float(x @ (d * x)), d * x

    t = time.perf_counter()
    if method == "scipy":
        scipy.optimize.minimize(f, x0, jac=True, method="L-BFGS-B",
                                options={"maxiter": 300, "maxcor": history, "ftol": 1e-15, "gtol": 1e-12, "maxfun": 3000})  # fmt: skip
    else:
        minimize_lbfgs(f, x0, history=history, maxiter=300)
    total = time.perf_counter() - t
    calls = n[0]
    t = time.perf_counter()
    for _ in range(calls):
        f(x0)
    return (total - (time.perf_counter() - t)) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, default=3006, help="parameters (the reference demo's 2 x 20 network: 3006)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    minimize_lbfgs(lambda x: (float(x @ x), 2 * x), np.ones(3), maxiter=3)  # compile outside the timing
    print(f"rank-0 optimiser time per evaluation, {a.params} parameters, median of {a.repeats}:")
    for history in (10, 50):
        res = {m: statistics.median(overhead(m, a.params, history, s) for s in range(a.repeats)) for m in ("scipy", "hpcpot")}
        print(f"  history {history:3d}: scipy L-BFGS-B {res['scipy'] * 1e6:8.0f} µs   hpcpot L-BFGS {res['hpcpot'] * 1e6:6.0f} µs"
              f"   ratio {res['scipy'] / res['hpcpot']:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
