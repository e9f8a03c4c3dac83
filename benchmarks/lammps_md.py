"""MD speed: pair_style hpcpot in LAMMPS (1 and 2 MPI ranks) beside hpcpot.Calculator under ASE.

    python benchmarks/lammps_md.py [--sizes 1000 10000] [--steps 20] [--repeats 3] [--ase-max 1000]

Structure: fcc Pt (a = 3.92 Å) with 1 in 8 atoms turned into O and rattled by 0.05 Å, in a
periodic cubic box.  Model: the default fingerprint set (cutoff 6.5 Å), 20 x 20 tanh
networks, random parameters with a scaling range from the structure itself (the speed of a
model does not depend on its parameter values).  NVE, velocity Verlet, 1 fs, 300 K.
LAMMPS: steps per second over --steps steps after 5 warm-up steps, median of --repeats
runs; ASE: the same with ase.md.VelocityVerlet (only up to --ase-max atoms: it is slow).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "lammps_driver.py"


def structure(n_target: int):
    from ase.build import bulk

    k = max(1, round((n_target / 4) ** (1 / 3)))
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True).repeat((k, k, k))
    atoms.symbols[::8] = "O"
    atoms.rattle(0.05, seed=0)
    return atoms


def make_model(path: Path, atoms) -> None:
    from hpcpot.potential.fingerprints import fingerprints
    from hpcpot.potential.modelfile import Model
    from hpcpot.potential.network import Layout
    from hpcpot.training.config import FingerprintConfig
    from hpcpot.training.descriptors import symmetry_functions

    els = ["O", "Pt"]
    sf = symmetry_functions(FingerprintConfig(preset="default"), els)
    lay = Layout(tuple(els), tuple(int(n) for n in sf.n_functions), (20, 20), "tanh")
    params = np.random.default_rng(0).normal(0, 0.2, lay.n_params)
    G = fingerprints(atoms[:500] if len(atoms) > 500 else atoms, sf)
    sp = np.array([els.index(s) for s in atoms.get_chemical_symbols()])[: len(G)]
    gmin = np.stack([G[sp == e].min(0) for e in range(2)])
    gmax = np.stack([G[sp == e].max(0) for e in range(2)])
    Model(sf, lay, params, gmin - 0.5 * (gmax - gmin), gmax + 0.5 * (gmax - gmin)).save(str(path))


def lammps_speed(plugin: Path, model: Path, atoms, steps: int, ranks: int, work: Path) -> float:
    from ase.data import atomic_masses, atomic_numbers

    from hpcpot.lammps import lammps_env

    els = ["O", "Pt"]
    job = {
        "name": "md", "cell": atoms.cell.array.tolist(), "boundary": "p p p",
        "types": [els.index(s) + 1 for s in atoms.get_chemical_symbols()],
        "positions": atoms.positions.tolist(),
        "masses": [float(atomic_masses[atomic_numbers[e]]) for e in els], "elements": els,
        "pair_style": "warn_every 0", "md_speed": {"steps": steps, "dt": 0.001},
    }  # fmt: skip
    jobs, out = work / "jobs.json", work / "out.json"
    jobs.write_text(json.dumps([job]))
    cmd = [sys.executable, str(DRIVER), str(plugin), str(model), str(jobs), str(out)]
    if ranks > 1:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), *cmd]
    subprocess.run(cmd, env=lammps_env(), check=True, capture_output=True, text=True)
    return json.loads(out.read_text())[0]["steps_per_second"]


def ase_speed(model: Path, atoms, steps: int) -> float:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from hpcpot import Calculator

    a = atoms.copy()
    a.calc = Calculator(str(model))
    MaxwellBoltzmannDistribution(a, temperature_K=300, rng=np.random.default_rng(1))
    md = VelocityVerlet(a, 1.0 * units.fs)
    md.run(2)  # warm-up (numba compilation is cached, but the first calls still cost)
    t0 = time.perf_counter()
    md.run(steps)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ase-max", type=int, default=1000, help="largest structure to run under ASE")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    from hpcpot.lammps import build_plugin

    plugin = build_plugin()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in a.sizes:
            atoms = structure(n)
            model = work / f"model_{len(atoms)}.json"
            make_model(model, atoms)
            row = {"atoms": len(atoms)}
            for ranks in (1, 2):
                s = [lammps_speed(plugin, model, atoms, a.steps, ranks, work) for _ in range(a.repeats)]
                row[f"lammps_{ranks}_rank"] = float(np.median(s))
            if len(atoms) <= a.ase_max:
                s = [ase_speed(model, atoms, max(2, a.steps // 4)) for _ in range(a.repeats)]
                row["ase_calculator"] = float(np.median(s))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| atoms | LAMMPS 1 rank | LAMMPS 2 ranks | ASE + hpcpot.Calculator |\n|---|---|---|---|")
    for r in rows:
        ase = f"{r['ase_calculator']:.3g}" if "ase_calculator" in r else "not run"
        print(f"| {r['atoms']} | {r['lammps_1_rank']:.3g} | {r['lammps_2_rank']:.3g} | {ase} |")
    print("(MD steps per second, medians)")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
