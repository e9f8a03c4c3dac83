"""NVE molecular dynamics with a trained hpcpot model and ASE.

    python examples/md_nve.py [MODEL] [--repeat 4 4 1] [--steps 1000] [--dt 1.0] [--temperature 600]

MODEL defaults to the example training's ``examples/run-o_pt111/model.json`` (``make demo``).
The start is a reference structure (image 0 of ../shared/data/o_pt111_emt_3000.traj: two O
on a 12-atom Pt(111) slab, periodic in x and y, bottom Pt layer fixed), repeated in-plane
with ``--repeat`` (4 4 1: 224 atoms).  Velocities are drawn at ``--temperature`` (K); then
velocity Verlet with a ``--dt`` (fs) step conserves the total energy up to the integration
error.  The script prints a line every ``--every`` steps, and at the end the energy drift
(slope of a straight-line fit of the total energy per atom against time, meV/atom/ps), the
fluctuation around that line, and the force calls per second.

The calculator warns (at most every 10 s) if the trajectory leaves the training range of the
model's fingerprints: the forces there are extrapolations.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hpcpot._process  # noqa: F401  (before numpy: one BLAS thread, as the command-line tools)
import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "o_pt111_emt_3000.traj"


def reference_structure(repeat=(1, 1, 1)):
    """Image 0 of the reference set (its FixAtoms constraint kept), repeated."""
    import ase.io

    atoms = ase.io.read(DATA, 0)
    atoms.calc = None
    return atoms.repeat(tuple(repeat))


def run_nve(atoms, calc, steps: int, dt_fs: float = 1.0, temperature: float = 600.0, every: int = 100,
            seed: int = 0, log=print) -> dict:  # fmt: skip
    """Velocity-Verlet NVE from Maxwell-Boltzmann velocities at ``temperature`` (K).

    Returns ``{"time_ps", "etot_per_atom" (eV), "drift_mev_per_atom_per_ps", "fluct_mev_per_atom",
    "max_dev_mev_per_atom", "calls_per_s", "step_times_s"}``; ``log(line)`` every ``every`` steps."""
    from ase import units
    from ase.md.velocitydistribution import Stationary
    from ase.md.verlet import VelocityVerlet

    atoms.calc = calc
    # Maxwell-Boltzmann momenta, drawn here (ASE renamed its helper between versions)
    rng = np.random.default_rng(seed)
    m = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(m * units.kB * temperature))  # fixed atoms: 0
    Stationary(atoms)
    n = len(atoms)
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    etot, t_ps, step_times = [], [], []
    last = [time.perf_counter()]

    def record():
        e = atoms.get_potential_energy() + atoms.get_kinetic_energy()  # no extra calculator call
        etot.append(e / n)
        t_ps.append(dyn.nsteps * dt_fs / 1000.0)
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
        if every and dyn.nsteps % every == 0:
            log(f"step {dyn.nsteps:6d}  t {t_ps[-1]:7.3f} ps  E_tot {e / n:+.6f} eV/atom  "
                f"T {atoms.get_temperature():6.1f} K  {1 / max(np.median(step_times[-every:]), 1e-9):7.1f} steps/s")  # fmt: skip

    dyn.attach(record, interval=1)  # also called once before the first step
    dyn.run(steps)
    t = np.array(t_ps)
    e = np.array(etot)
    slope, icpt = np.polyfit(t, e, 1)
    resid = e - (slope * t + icpt)
    return {
        "time_ps": t, "etot_per_atom": e,
        "drift_mev_per_atom_per_ps": 1000 * float(slope),
        "fluct_mev_per_atom": 1000 * float(resid.std()),
        "max_dev_mev_per_atom": 1000 * float(np.abs(e - e[0]).max()),
        "calls_per_s": 1.0 / float(np.median(step_times[1:])),  # one force call per Verlet step
        "step_times_s": np.array(step_times[1:]),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=str(HERE / "run-o_pt111" / "model.json"))
    ap.add_argument("--repeat", type=int, nargs=3, default=[1, 1, 1], metavar=("NX", "NY", "NZ"))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--dt", type=float, default=1.0, help="time step (fs)")
    ap.add_argument("--temperature", type=float, default=600.0, help="initial temperature (K)")
    ap.add_argument("--every", type=int, default=100, help="print a line every this many steps")
    a = ap.parse_args()
    from hpcpot import Calculator

    atoms = reference_structure(a.repeat)
    print(f"{len(atoms)} atoms ({atoms.get_chemical_formula()}), model {a.model}, "
          f"{a.steps} steps of {a.dt} fs from {a.temperature} K")  # fmt: skip
    r = run_nve(atoms, Calculator(a.model), a.steps, a.dt, a.temperature, a.every)
    print(f"energy drift {r['drift_mev_per_atom_per_ps']:+.4f} meV/atom/ps, fluctuation {r['fluct_mev_per_atom']:.4f} "
          f"meV/atom (rms about the fit), largest deviation from the start {r['max_dev_mev_per_atom']:.4f} meV/atom; "
          f"{r['calls_per_s']:.1f} force calls/s (median)")  # fmt: skip


if __name__ == "__main__":
    main()
