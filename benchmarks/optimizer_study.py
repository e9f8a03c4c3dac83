"""The report's optimiser study on the reference set: L-BFGS-B, hpcpot's L-BFGS, CG, BFGS and
Levenberg–Marquardt, learning curves against iteration and wall time, and time to accuracy.

    python benchmarks/optimizer_study.py [--budget 120] [--methods lbfgsb,lbfgs,cg,bfgs,lm]
                                         [--alphas 0.04,0.3] [--png docs/optimizer-study.png]

All 3000 images of ``../shared/data/o_pt111_emt_3000.traj``: training on images 0-2699, testing
on 2700-2999 (two MD runs never seen in training), with the README's demo config
(``examples/o_pt111.toml``, its [optimizer] history included) and only the method changed (``--alphas``: also the force
coefficient, each method run once per value).  Every run stops when the test set
reaches both 1.5 meV/atom and 0.025 eV/Å (RMSE), or after ``--budget`` seconds of
optimisation.  Reported per method: time and iterations to that accuracy (if reached), the
best test errors, time per iteration, and peak RSS.  The curves go to a PNG (matplotlib,
the ``plot`` extra).  Run it on an idle machine: the times are what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "data" / "o_pt111_emt_3000.traj"
E_GOAL, F_GOAL = 0.0015, 0.025  # eV/atom, eV/Å (RMSE on images 2700-2999)
EXTRA = {"lm": 'force_fraction = 0.1\n'}  # LM's JᵀJ over all force rows costs minutes per iteration here


def config(d: Path, method: str, budget: float, alpha: str = "", name: str = "") -> Path:
    demo = (ROOT / "examples" / "o_pt111.toml").read_text()
    body = demo[demo.index("[fingerprints]") : demo.index("[optimizer]")]
    if alpha:
        head, tail = body.split("force_coefficient", 1)
        body = head + f"force_coefficient = {alpha}" + tail[tail.index("\n") :]
    name = name or method
    # the demo's own L-BFGS history stays; only the method and the budget change
    history = tomllib.loads(demo).get("optimizer", {}).get("history")
    extra = f"history = {history}\n" if history else ""
    cfg = d / f"{name}.toml"
    cfg.write_text(f"""[data]
train = ["{d / 'train.traj'}"]
validation = ["{d / 'test.traj'}"]
{body}[optimizer]
method = "{method}"
max_iterations = 1000000
max_time = {budget}
{extra}{EXTRA.get(method, '')}
[convergence]
energy_rmse = {E_GOAL}
force_rmse = {F_GOAL}
on = "validation"

[checkpoint]
every = 0

[output]
dir = "{d / name}"
""")
    return cfg


def train(cfg: Path, d: Path) -> tuple[int, float, float, str]:
    """Run one training; (exit code, wall s, peak RSS MiB from the kernel's rusage, stderr)."""
    with open(d / "stdout.txt", "w") as so, open(d / "stderr.txt", "w") as se:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "hpcpot.train", str(cfg), "--overwrite"], stdout=so, stderr=se)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024, (d / "stderr.txt").read_text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of optimisation per method")
    ap.add_argument("--methods", default="lbfgsb,lbfgs,cg,bfgs,lm")
    ap.add_argument("--alphas", default="", help="force coefficients to try (default: the demo config's)")
    ap.add_argument("--png", default=str(ROOT / "docs" / "optimizer-study.png"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "optimizer-study-results.json"))
    a = ap.parse_args()
    import ase.io

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        images = ase.io.read(str(REF), ":")
        ase.io.write(str(d / "train.traj"), images[:2700])
        ase.io.write(str(d / "test.traj"), images[2700:])
        alphas = [x for x in a.alphas.split(",") if x] or [""]
        for method, alpha in [(m, x) for m in a.methods.split(",") for x in alphas]:
            m = f"{method} α={alpha}" if len(alphas) > 1 else method  # the label in output and plot
            run = m.replace(" ", "_")
            cfg = config(d, method, a.budget, alpha, run)
            rc, wall, rss_mib, err = train(cfg, d)
            if rc != 0:
                print(f"{m}: exit {rc}\n{err[-2000:]}")
                continue
            log = [json.loads(x) for x in (d / run / "log.jsonl").read_text().splitlines()]
            both = [r for r in log if r.get("val_energy_rmse") is not None and r["val_energy_rmse"] <= E_GOAL
                    and r["val_force_rmse"] <= F_GOAL]  # fmt: skip
            status = json.loads((d / run / "status.json").read_text())
            res = {
                "iterations": len(log), "wall_s": round(wall, 1), "peak_rss_mib": round(rss_mib),
                "s_per_iteration": round(log[-1]["elapsed"] / max(len(log), 1), 4),
                "reached_both": bool(both),
                "time_to_both_s": round(both[0]["elapsed"], 1) if both else None,
                "iterations_to_both": both[0]["iteration"] if both else None,
                "best_test_energy_rmse_mev": round(1000 * min(r["val_energy_rmse"] for r in log if "val_energy_rmse" in r), 3),
                "best_test_force_rmse": round(min(r["val_force_rmse"] for r in log if "val_energy_rmse" in r), 4),
                "stop": status["message"],
                "curve": [(r["iteration"], r["elapsed"], r["energy_rmse"], r["force_rmse"],
                           r.get("val_energy_rmse"), r.get("val_force_rmse")) for r in log],
            }  # fmt: skip
            results[m] = res
            print(f"{m:7s} {res['iterations']:6d} it  {res['s_per_iteration'] * 1000:7.1f} ms/it  peak {res['peak_rss_mib']:5d} MiB  "
                  f"both goals: {str(res['time_to_both_s']) + ' s' if both else 'no'}  best test "
                  f"{res['best_test_energy_rmse_mev']:.3f} meV/atom, {res['best_test_force_rmse']:.4f} eV/Å", flush=True)  # fmt: skip
    Path(a.json).write_text(json.dumps(results) + "\n")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib missing (pip install 'hpcpot[plot]'): no PNG")
        return
    fig = Figure(figsize=(9, 6.5), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for m, res in results.items():
        c = [r for r in res["curve"] if r[4] is not None]
        it = [r[0] for r in c]
        t = [r[1] for r in c]
        axes[0, 0].plot(t, [1000 * r[4] for r in c], label=m)
        axes[0, 1].plot(t, [r[5] for r in c], label=m)
        axes[1, 0].plot(it, [1000 * r[4] for r in c], label=m)
        axes[1, 1].plot(it, [r[5] for r in c], label=m)
    for ax, (xl, yl, goal) in zip(axes.flat, [("wall time (s)", "test energy RMSE (meV/atom)", 1000 * E_GOAL),
                                              ("wall time (s)", "test force RMSE (eV/Å)", F_GOAL),
                                              ("iteration", "test energy RMSE (meV/atom)", 1000 * E_GOAL),
                                              ("iteration", "test force RMSE (eV/Å)", F_GOAL)]):  # fmt: skip
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_yscale("log")
        ax.axhline(goal, color="k", lw=0.8, ls="--")
        ax.legend(fontsize=8)
    fig.suptitle("reference set: train 0-2699, test 2700-2999 (dashed: the goal)")
    fig.tight_layout()
    fig.savefig(a.png)
    print(f"plot: {a.png}")


if __name__ == "__main__":
    main()
