"""Train an example config on real DFT data and test it on its held-out images.

    python benchmarks/real_data.py examples/mo_mlearn_pbe.toml [--np 2] [--json out.json]

Runs ``python -m hpcpot.train CONFIG --overwrite`` (under ``mpiexec -n NP`` when NP > 1),
then rebuilds the run's own held-out set exactly as the training chose it (same files, data
filters and split) and reports energy MAE/RMSE (meV/atom) and force MAE/RMSE (eV/Å) of
``model.json`` and ``model_best.json`` on it, with the wall time, the peak RSS of rank 0 and
the symmetry functions used.  The README's results table comes from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def held_out(cfg):
    """The validation Structures of a run of ``cfg``, as the trainer selects them (one process)."""
    from hpcpot.parallel import SerialComm
    from hpcpot.training.data import ImageSet
    from hpcpot.training.filters import apply_filters
    from hpcpot.training.shard import split_global

    comm = SerialComm()
    d = cfg.data
    need_forces = cfg.loss.force_coefficient > 0
    if d.validation:
        images = ImageSet.open(d.validation, d.index, comm, need_forces)
        return images.read(np.arange(images.n), need_forces)
    images = ImageSet.open(d.train, d.index, comm, need_forces, d.split_key)
    pool = None
    if d.max_energy_above_min > 0 or d.max_force > 0:
        pool = apply_filters(comm, images, d.max_energy_above_min, d.max_force, d.reference_energies, need_forces).kept
    _, val = split_global(comm, images, d.validation_fraction, d.seed, d.split_key, pool, d.validation_values)
    return images.read(val, need_forces)


def errors(model_path: str, st) -> dict:
    from hpcpot.evaluate import evaluate
    from hpcpot.potential.modelfile import Model

    rep, e_pred, f_pred = evaluate(Model.load(model_path), st)
    return {"energy_mae_mev_per_atom": rep.energy_mae_mev_per_atom, "energy_rmse_mev_per_atom": rep.energy_rmse_mev_per_atom,
            "force_mae_ev_per_a": rep.force_mae_ev_per_a, "force_rmse_ev_per_a": rep.force_rmse_ev_per_a}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--np", type=int, default=1, help="MPI ranks (default 1: serial)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-train", action="store_true", help="only test the existing run")
    a = ap.parse_args(argv)
    from hpcpot.training.config import load_config

    cfg = load_config(a.config)
    out = Path(cfg.output.dir)
    res: dict = {"config": a.config, "ranks": a.np}
    if not a.no_train:
        cmd = [sys.executable, "-m", "hpcpot.train", a.config, "--overwrite"]
        if a.np > 1:
            cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(a.np), *cmd]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        # ru_maxrss of the children: the largest single process (rank 0 or a worker), KiB
        res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
        if p.returncode != 0:
            print(p.stdout[-3000:], p.stderr[-3000:])
            return p.returncode
        (out / "train-stdout.txt").write_text(p.stdout)
        res["descriptors"] = [x.strip() for x in p.stdout.splitlines() if re.match(r"\s+\w+: \d+ G2", x)]
        res["iterations"] = json.loads((out / "status.json").read_text())["stats"]["last_iteration"]
        res["parameters"] = int(re.search(r"(\d+) parameters", p.stdout).group(1))
    st = held_out(cfg)
    res["held_out_images"] = st.n_images
    res["last"] = errors(str(out / "model.json"), st)
    if (out / "model_best.json").exists():
        res["best"] = errors(str(out / "model_best.json"), st)
        res["best_iteration"] = json.loads((out / "status.json").read_text())["stats"]["best_validation"]["iteration"]
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
