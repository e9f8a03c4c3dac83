"""End to end: a short training generalises to held-out images; refusals are clear."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REF, ROOT, need, small_config


def _run(cfg, *args):
    return subprocess.run([sys.executable, "-m", "hpcpot.train", str(cfg), *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
# a held-out image may lie just outside the 300 training images' range: the warning is right
@pytest.mark.filterwarnings("ignore::hpcpot.potential.calculator.ExtrapolationWarning")
def test_training_generalises_to_held_out_images(tmp_path):
    import ase.io

    from hpcpot import Calculator

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[data]
train = ["{need(REF)}"]
index = ":400"
validation_fraction = 0.25
seed = 3
[fingerprints]
storage = "float64"  # as hpcpot.evaluate computes them: its figures must match to 1e-9 below
[model]
hidden = [10, 10]
[loss]
precision = "float64"  # likewise
[optimizer]
max_iterations = 300
[convergence]
energy_rmse = 0.002
force_rmse = 0.06
on = "validation"
[output]
dir = "out"
validate_every = 10
""")
    r = _run(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    val = status["stats"]["validation"]
    assert val["energy_rmse"] < 0.006 and val["force_rmse"] < 0.12, val  # eV/atom, eV/Å
    first = json.loads((tmp_path / "out" / "log.jsonl").read_text().splitlines()[0])
    assert first["loss"] > 5 * status["stats"]["train"]["loss"]
    # the saved model reproduces the validation figures on the held-out images themselves
    from hpcpot.training.data import split_indices

    _, val_idx = split_indices(400, 0.25, 3)
    calc = Calculator(str(tmp_path / "out" / "model.json"))
    dE, dF = [], []
    for k in val_idx:
        atoms = ase.io.read(need(REF), int(k))
        ref_e = atoms.get_potential_energy()
        ref_f = atoms.get_forces(apply_constraint=False)
        atoms.set_constraint()
        atoms.calc = calc
        dE.append((atoms.get_potential_energy() - ref_e) / len(atoms))
        dF.append((atoms.get_forces() - ref_f).ravel())
    assert np.sqrt(np.mean(np.square(dE))) == pytest.approx(val["energy_rmse"], rel=1e-6)
    assert np.sqrt(np.mean(np.square(np.concatenate(dF)))) == pytest.approx(val["force_rmse"], rel=1e-6)

    # hpcpot.evaluate (chunked, vectorised) gives the same figures on the same images
    from hpcpot.evaluate import evaluate
    from hpcpot.potential.modelfile import Model
    from hpcpot.training.data import read_structures

    model = Model.load(str(tmp_path / "out" / "model.json"))
    st, _ = read_structures([str(REF)], need_forces=True, elements=model.layout.elements, index=":400")
    rep, E, F = evaluate(model, st.subset(np.asarray(val_idx)), chunk=7)
    assert rep.energy_rmse_mev_per_atom / 1000 == pytest.approx(val["energy_rmse"], rel=1e-9)
    assert rep.force_rmse_ev_per_a == pytest.approx(val["force_rmse"], rel=1e-9)
    assert rep.images == len(val_idx)
    # the training images lie inside the training fingerprint range by definition
    train_idx = np.setdiff1d(np.arange(400), val_idx)
    assert evaluate(model, st.subset(train_idx))[0].extrapolated_atoms_percent == 0.0
    # and a compressed structure lies outside it
    squeezed = st.subset(np.arange(3))
    squeezed.positions *= 0.85
    squeezed.cells *= 0.85
    assert evaluate(model, squeezed, with_forces=False)[0].extrapolated_atoms_percent > 50

    # the command line: report, parity files, and no overwriting of existing ones
    cmd = [sys.executable, "-m", "hpcpot.evaluate", str(tmp_path / "out" / "model.json"), str(REF),
           "--index", ":20", "--parity", str(tmp_path / "p"), "--json", str(tmp_path / "rep.json")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "energy: RMSE" in r.stdout and "forces: RMSE" in r.stdout and "extrapolation" in r.stdout
    assert len((tmp_path / "p-energies.csv").read_text().splitlines()) == 21
    with open(tmp_path / "p-energies.csv") as fh:  # plain numbers that read back exactly
        rows = list(csv.DictReader(fh))
    ref = ase.io.read(need(REF), ":20")
    assert [float(r["energy_ref_eV"]) for r in rows] == [a.get_potential_energy() for a in ref]
    assert all(np.isfinite(float(r["energy_pred_eV_per_atom"])) for r in rows)
    assert len((tmp_path / "p-forces.csv").read_text().splitlines()) == 1 + 20 * 14
    assert json.loads((tmp_path / "rep.json").read_text())["images"] == 20
    before = (tmp_path / "p-energies.csv").read_bytes()
    r = subprocess.run(cmd[:-2], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    assert (tmp_path / "p-energies.csv").read_bytes() == before


def test_float32_network_passes_train_like_float64(tmp_path):
    """A training with [loss] precision = "float32" follows the float64 one (the first
    iterations' losses agree to rounding amplified by a few L-BFGS steps) and ends as low;
    the model it writes is float64 like any other."""
    runs = {}
    for prec in ("float64", "float32"):
        cfg = tmp_path / f"{prec}.toml"
        cfg.write_text(f"""
[data]
train = ["{need(REF)}"]
index = ":120"
[model]
hidden = [8, 8]
[loss]
precision = "{prec}"
[optimizer]
max_iterations = 40
[convergence]
energy_rmse = 0
force_rmse = 0
[output]
dir = "out-{prec}"
""")
        r = _run(cfg)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[prec] = [json.loads(line)["loss"] for line in (tmp_path / f"out-{prec}" / "log.jsonl").read_text().splitlines()]
    a, b = np.array(runs["float64"]), np.array(runs["float32"])
    assert len(a) == len(b) == 40
    np.testing.assert_allclose(b[:5], a[:5], rtol=1e-4)
    assert not np.array_equal(a[:5], b[:5])  # really another arithmetic
    assert b[-1] < a[0] / 5 and b[-1] < 1.5 * a[-1]
    model = json.loads((tmp_path / "out-float32" / "model.json").read_text())
    assert "precision" not in json.dumps(model)


def test_memory_forecast_refuses_before_allocating(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[data]
train = ["{need(REF)}"]
index = ":50"
[parallel]
memory_per_rank = 0.001
[output]
dir = "out"
""")
    r = _run(cfg)
    assert r.returncode == 2
    assert "GiB per rank but 0.00 GiB are available" in r.stderr and 'storage = "recompute"' in r.stderr
    assert "fingerprints and derivatives" not in r.stdout  # refused before fingerprinting


def test_rank0_time_between_evaluations_leaves_out_the_final_validation(tmp_path):
    """The summary's "optimiser and driver" figure counts only the optimiser's evaluations:
    the validation after it (here 360 images, against one iteration on 40) made it
    negative when it was counted in."""
    import re

    cfg = small_config(tmp_path, iters=1, every=0, hidden="[4]", images=400, validation=0.9)
    r = _run(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"between evaluations: (-?\d+) µs per evaluation", r.stdout)
    assert m and int(m.group(1)) >= 0, r.stdout[-2000:]


def test_help_runs():
    r = subprocess.run([sys.executable, "-m", "hpcpot.train", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--restart" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hpcpot.bench", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--ranks" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hpcpot.evaluate", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--parity" in r.stdout


def test_memory_limit_follows_slurm(monkeypatch):
    from hpcpot.training.trainer import node_memory_limit

    monkeypatch.delenv("SLURM_MEM_PER_CPU", raising=False)
    monkeypatch.delenv("SLURM_MEM_PER_NODE", raising=False)
    phys = node_memory_limit()
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1024")
    assert node_memory_limit() == min(phys, 2**30)
    monkeypatch.delenv("SLURM_MEM_PER_NODE")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "100")
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "4")
    assert node_memory_limit() == min(phys, 400 * 2**20)
