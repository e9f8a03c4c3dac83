"""MD with the ASE calculator: energy drift and force calls per second against system size.

    python benchmarks/md_speed.py [MODEL] [--json out.json]

MODEL defaults to examples/run-o_pt111/model.json (``make demo``).  For 14 atoms (a reference
structure), 224 (4x4 in-plane supercell) and 1008 (8x9) it runs NVE velocity Verlet (1 fs,
from 600 K, examples/md_nve.py's run_nve) several times with different velocity seeds and
reports the medians over runs of: the energy drift (slope of a straight-line fit of the total
energy per atom against time, meV/atom/ps), the fluctuation about that line, and the force
calls per second (median step time within a run; one energy+forces call per step, ASE's
Verlet bookkeeping included).  Runs are shorter for larger systems, so their drift figures
are noisier.  One process, one BLAS thread; the load average at the start and end is printed
because on a shared machine it moves the speed figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import hpcpot._process  # noqa: F401  (before numpy: one BLAS thread, as the command-line tools)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

from md_nve import reference_structure, run_nve  # noqa: E402

# (in-plane repeat, steps per run, runs): 14, 224 and 1008 atoms
CASES = [((1, 1, 1), 2000, 5), ((4, 4, 1), 1000, 3), ((8, 9, 1), 400, 3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=str(HERE.parent / "examples" / "run-o_pt111" / "model.json"))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true", help="a tenth of the steps (a smoke run)")
    a = ap.parse_args()
    from hpcpot import Calculator
    from hpcpot.potential.calculator import ExtrapolationWarning

    print(f"model {a.model}; {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    results = []
    for rep, steps, runs in CASES:
        steps = max(20, steps // 10) if a.quick else steps
        per_run = []
        n_extrap = 0
        for seed in range(runs):
            atoms = reference_structure(rep)
            calc = Calculator(a.model)
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always", ExtrapolationWarning)
                t0 = time.perf_counter()
                r = run_nve(atoms, calc, steps, dt_fs=1.0, temperature=600.0, every=0, seed=seed)
                wall = time.perf_counter() - t0
            n_extrap += sum(w.category is ExtrapolationWarning for w in rec)
            per_run.append(r | {"wall_s": wall})
            print(f"  {len(atoms):5d} atoms, seed {seed}: drift {r['drift_mev_per_atom_per_ps']:+.4f} meV/atom/ps, "
                  f"fluct {r['fluct_mev_per_atom']:.4f} meV/atom, {r['calls_per_s']:.1f} calls/s, "
                  f"{steps} steps in {wall:.1f} s", flush=True)  # fmt: skip
        med = {k: float(np.median([p[k] for p in per_run]))
               for k in ("drift_mev_per_atom_per_ps", "fluct_mev_per_atom", "max_dev_mev_per_atom", "calls_per_s")}  # fmt: skip
        res = {"atoms": len(atoms), "steps_per_run": steps, "runs": runs, "time_step_fs": 1.0,
               "simulated_ps_per_run": steps / 1000.0, "extrapolation_warnings": n_extrap, **med,
               "drift_range": [float(min(p["drift_mev_per_atom_per_ps"] for p in per_run)),
                               float(max(p["drift_mev_per_atom_per_ps"] for p in per_run))],
               "calls_per_s_range": [float(min(p["calls_per_s"] for p in per_run)),
                                     float(max(p["calls_per_s"] for p in per_run))],
               "atom_steps_per_s": med["calls_per_s"] * len(atoms)}  # fmt: skip
        results.append(res)
        print(f"{len(atoms):5d} atoms: median drift {med['drift_mev_per_atom_per_ps']:+.4f} meV/atom/ps "
              f"(runs {res['drift_range'][0]:+.4f}..{res['drift_range'][1]:+.4f}), fluctuation "
              f"{med['fluct_mev_per_atom']:.4f} meV/atom, {med['calls_per_s']:.1f} force calls/s "
              f"({res['atom_steps_per_s']:.0f} atom-steps/s)", flush=True)  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "cases": results}, indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
