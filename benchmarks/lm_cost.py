"""What one Levenberg–Marquardt iteration costs, and its loss per iteration beside L-BFGS-B.

    python benchmarks/lm_cost.py [--images 1000] [--hidden 20 20] [--alpha 0.04]
                                 [--lm-iters 20] [--lbfgs-iters 300] [--fraction 1.0] [--json out.json]

Serial (one rank), the first --images reference images, [fingerprints] preset = "default",
10% held out.  Reports the time of one loss+gradient evaluation, of one JᵀJ build (split
into building Jacobian rows and the dsyrk rank-k updates), and the training loss after each
iteration for LM and L-BFGS-B from the same initial parameters, with wall time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hpcpot.parallel import CMD_EXTRA, CMD_LOSS, Evaluator, SerialComm
from hpcpot.training.config import load_config
from hpcpot.training.jacobian import NormalEquations
from hpcpot.training.loss import N_HEAD
from hpcpot.training.optimizers import LogWriter, run_optimizer
from hpcpot.training.trainer import build

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "data" / "o_pt111_emt_3000.traj"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--hidden", type=int, nargs="+", default=[20, 20])
    ap.add_argument("--alpha", type=float, default=0.04)
    ap.add_argument("--lm-iters", type=int, default=20)
    ap.add_argument("--lbfgs-iters", type=int, default=300)
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "c.toml").write_text(f"""
[data]
train = ["{REF}"]
index = ":{a.images}"
validation_fraction = 0.1
[fingerprints]
preset = "default"
[model]
hidden = {a.hidden}
[loss]
force_coefficient = {a.alpha}
[optimizer]
method = "lm"
force_fraction = {a.fraction}
[convergence]
energy_rmse = 0
force_rmse = 0
[output]
dir = "{tmp / 'out'}"
""")
    cfg = load_config(tmp / "c.toml")
    comm = SerialComm()
    setup = build(comm, cfg, lambda m: None)
    ne = NormalEquations(setup.train, a.fraction)
    ev = Evaluator(comm, setup.train, None, N_HEAD, ne)
    P = setup.layout.n_params
    x0 = setup.x0
    t = time.perf_counter()
    for _ in range(5):
        ev.evaluate(x0)
    t_grad = (time.perf_counter() - t) / 5
    t = time.perf_counter()
    ev.evaluate(x0, CMD_EXTRA, arg=1.0)
    t_jtj = time.perf_counter() - t
    res = {"images_train": setup.n_train, "n_params": P, "alpha": a.alpha, "hidden": a.hidden,
           "force_fraction": a.fraction, "t_loss_grad_s": t_grad, "t_jtj_s": t_jtj,
           "t_rows_s": ne.timing["rows"], "t_dsyrk_s": ne.timing["syrk"], "jacobian_rows": ne.timing["n_rows"]}  # fmt: skip
    print(json.dumps(res))
    curves = {}
    for method, iters in (("lm", a.lm_iters), ("lbfgsb", a.lbfgs_iters)):
        cfg.optimizer.method = method
        cfg.optimizer.max_iterations = iters
        log = LogWriter(None, print_fn=lambda *a, **k: None)
        recs: list[dict] = []
        log.record = recs.append  # type: ignore[method-assign]
        t = time.perf_counter()
        run_optimizer(lambda p, want_max=False: ev.evaluate(p), x0, cfg, setup.train.with_forces, log,
                      normal_equations=lambda p, it: ev.evaluate(p, CMD_EXTRA, arg=float(it)),
                      loss_only=lambda p, want_max=False: ev.evaluate(p, CMD_LOSS), opt_state={})  # fmt: skip
        wall = time.perf_counter() - t
        curves[method] = [(r["iteration"], r["loss"], r["energy_rmse"], r["force_rmse"], r["elapsed"]) for r in recs]
        print(f"{method}: {len(recs)} iterations in {wall:.1f} s ({wall / max(len(recs), 1):.3f} s each)")
        for it, loss, e, f, el in curves[method]:
            if it in (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 1000) or it == len(recs):
                print(f"  iter {it:5d}  loss {loss:.4e}  E {e * 1000:8.3f} meV/atom  F {f if f is None else round(f, 4)} eV/Å  {el:7.1f} s")
    res["curves"] = curves
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
