"""Rank 0's own time per evaluation, as a training spends it: scipy's L-BFGS-B against
hpcpot's L-BFGS, each run through hpcpot's optimiser driver (log line, log.jsonl record,
convergence test, the per-iteration hook).

    python benchmarks/rank0_optimizer.py [--params 2962] [--repeats 5]

The objective is a cheap separable quadratic with the training problem's parameter count
(the reference demo's 2 x 20 networks on 52 functions: 2962).  What is timed is the time
between the return of one evaluation and the start of the next (every other rank waits for
it), per evaluation, median over repeats, for histories 10, 50 and 200:

* warm: nothing else touches memory, so the optimiser's history stays in cache;
* cold: each evaluation first streams 256 MiB, as a training's evaluation streams its stored
  derivatives (the reference set: ~200 MiB on one rank), so the history is read from DRAM.
  On many ranks a rank's share of the derivatives is small and the truth lies in between.

Ratios are what to read; the machine's speed cancels.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcpot.training.config import parse_config
from hpcpot.training.loss import N_HEAD
from hpcpot.training.optimizers.driver import LogWriter, run_optimizer
from hpcpot.training.optimizers.lbfgs import minimize_lbfgs

FLUSH = np.ones(256 * 2**20 // 8)


def overhead(method: str, P: int, history: int, cold: bool, seed: int) -> float:
    iters = max(200, 2 * history)  # the median evaluation sees a full history
    d = np.logspace(0, 6, P)[np.random.default_rng(seed).permutation(P)]  # ill-conditioned: no early convergence
    x0 = np.random.default_rng(seed + 1).normal(size=P)
    cfg = parse_config({"optimizer": {"method": method, "history": history, "max_iterations": iters},
                        "convergence": {"energy_rmse": 0.0, "force_rmse": 0.0}})  # fmt: skip
    gaps: list[float] = []
    t_out = [None]

    def evaluate(x, want_max=False):
        t = time.perf_counter()
        if t_out[0] is not None:
            gaps.append(t - t_out[0])
        if cold:
            FLUSH.sum()
        buf = np.empty(N_HEAD + P)
        buf[N_HEAD:] = d * x
        buf[0] = 0.5 * float(x @ buf[N_HEAD:])
        buf[1:N_HEAD] = (1.0, 10.0, 1.0, 30.0)
        t_out[0] = time.perf_counter()
        return buf

    with tempfile.TemporaryDirectory() as tmp:
        log = LogWriter(str(Path(tmp) / "log.jsonl"), lambda line, flush=True: print(line, file=io.StringIO(), flush=flush))
        run_optimizer(evaluate, x0, cfg, True, log, on_iteration=lambda it, x, el: None)
        log.close()
    return statistics.median(gaps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, default=2962, help="parameters (the reference demo's: 2962)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    minimize_lbfgs(lambda x: (float(x @ x), 2 * x), np.ones(3), maxiter=3)  # compile outside the timing
    print(f"rank-0 time per evaluation (driver + optimiser), {a.params} parameters, median of {a.repeats}:")
    for cold in (False, True):
        for history in (10, 50, 200):
            res = {m: statistics.median(overhead(m, a.params, history, cold, s) for s in range(a.repeats))
                   for m in ("lbfgsb", "lbfgs")}  # fmt: skip
            print(f"  {'cold' if cold else 'warm'} history {history:3d}: scipy L-BFGS-B {res['lbfgsb'] * 1e6:6.0f} µs"
                  f"   hpcpot L-BFGS {res['lbfgs'] * 1e6:5.0f} µs   ratio {res['lbfgsb'] / res['lbfgs']:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
