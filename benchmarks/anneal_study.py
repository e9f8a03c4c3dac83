"""Does simulated annealing before L-BFGS-B pay off?  (issue 5's study)

    python benchmarks/anneal_study.py [--seeds 10] [--images 300] [--steps 10000] [--json out.json]

Energy-only training on the first 300 reference images (10% held out), criterion: train
energy RMSE <= 1 meV/atom (Amp's default), at most 5000 L-BFGS-B iterations.  For each of
--seeds random initialisations, three arms from the same starting parameters:
  none   - L-BFGS-B only
  amp    - annealing with Amp's defaults (Tmax 2000, Tmin 2.5, --steps), then L-BFGS-B
  auto   - annealing with the automatic schedule (Tmax for ~98% acceptance), then L-BFGS-B
Reports per arm the median and spread of wall time (annealing included) and iterations to
converge, how far annealing moved the loss, and the cost of one annealing step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcpot.parallel import CMD_LOSS, Evaluator, SerialComm
from hpcpot.potential.network import initial_parameters
from hpcpot.training.anneal import anneal
from hpcpot.training.config import load_config
from hpcpot.training.loss import N_HEAD
from hpcpot.training.optimizers import LogWriter, run_optimizer
from hpcpot.training.trainer import build

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "o_pt111_emt_3000.traj"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--max-iterations", type=int, default=5000)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfgp = Path(d) / "c.toml"
        cfgp.write_text(f"""
[data]
train = ["{DATA}"]
index = ":{a.images}"
validation_fraction = 0.1
[loss]
force_coefficient = 0.0
[optimizer]
max_iterations = {a.max_iterations}
[convergence]
energy_rmse = 0.001
[output]
dir = "{d}/out"
""")
        cfg = load_config(cfgp)
        comm = SerialComm()
        setup = build(comm, cfg, lambda *x: None)
    ev = Evaluator(comm, setup.train, setup.valid, N_HEAD)
    lay = setup.layout
    ne = len(lay.elements)
    k = lay.scaling_offset
    slope, intercept = setup.x0[k::2][:ne], setup.x0[k + 1 :: 2][:ne]

    def loss(p):
        return float(ev.evaluate(p, CMD_LOSS)[0])

    quiet = LogWriter(None, lambda *a, **k: None)
    rows = []
    for seed in range(a.seeds):
        x0 = initial_parameters(lay, slope, intercept, seed)
        for arm in ("none", "amp", "auto"):
            t0 = time.perf_counter()
            x = x0
            l_start = loss(x0)
            n_steps = 0
            if arm != "none":
                acfg = cfg.anneal
                acfg.enabled, acfg.steps, acfg.seed = True, a.steps, seed
                acfg.auto = arm == "auto"
                acfg.tmax, acfg.tmin = 2000.0, 2.5
                x = anneal(loss, x0, acfg, log=lambda *x: None)
                n_steps = a.steps
            t_anneal = time.perf_counter() - t0
            l_after = loss(x)
            res = run_optimizer(lambda p, want_max=False: ev.evaluate(p), x, cfg, False, quiet)
            wall = time.perf_counter() - t0
            row = {"seed": seed, "arm": arm, "wall_s": wall, "anneal_s": t_anneal, "iterations": res.iterations,
                   "converged": res.converged, "loss_start": l_start, "loss_after_anneal": l_after,
                   "final_energy_rmse": res.stats.energy_rmse,
                   "anneal_step_ms": 1000 * t_anneal / n_steps if n_steps else None}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"{'arm':6} {'converged':>9} {'wall s median [min, max]':>28} {'iterations median [min, max]':>30} {'loss after/before anneal (median)':>34}")
    for arm in ("none", "amp", "auto"):
        r = [x for x in rows if x["arm"] == arm]
        w = np.array([x["wall_s"] for x in r])
        it = np.array([x["iterations"] for x in r])
        ratio = np.median([x["loss_after_anneal"] / x["loss_start"] for x in r])
        conv = sum(x["converged"] for x in r)
        print(f"{arm:6} {conv:5d}/{len(r):<3d} {np.median(w):10.1f} [{w.min():6.1f}, {w.max():6.1f}] "
              f"{np.median(it):14.0f} [{it.min():5d}, {it.max():5d}] {ratio:30.3f}")  # fmt: skip
    steps = [x["anneal_step_ms"] for x in rows if x["anneal_step_ms"]]
    if steps:
        print(f"annealing step (broadcast + loss-only evaluation + reduction, 1 rank): {np.median(steps):.2f} ms median")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
