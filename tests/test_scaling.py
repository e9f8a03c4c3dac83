"""[fingerprints] scaling = "standard": network inputs (G − mean)/std over the training atoms.

The model file (format 2) keeps the training range for the extrapolation check beside the
mean and standard deviation; the calculator, hpcpot.evaluate and the training agree; the
moments are those of the training fingerprints on any number of ranks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REF, ROOT, need, run_mpi


def _config(d, scaling="standard", iters=25):
    d.mkdir(exist_ok=True)
    cfg = d / "c.toml"
    cfg.write_text(f"""
[data]
train = ["{need(REF)}"]
index = ":40"
validation_fraction = 0.25
seed = 1
[fingerprints]
scaling = "{scaling}"
storage = "float64"
[model]
hidden = [8, 8]
[loss]
precision = "float64"  # the readers and the ranks are compared to 1e-12
[optimizer]
max_iterations = {iters}
[convergence]
energy_rmse = 1e-9
force_rmse = 1e-9
[checkpoint]
every = 0
[output]
dir = "out"
validate_every = 5
""")
    return cfg


def _history(d):
    return np.array([json.loads(line)["loss"] for line in (d / "out" / "log.jsonl").read_text().splitlines()])


@pytest.mark.filterwarnings("ignore::hpcpot.potential.calculator.ExtrapolationWarning")
def test_standardised_model_file_and_its_readers_agree(tmp_path):
    from hpcpot.evaluate import evaluate
    from hpcpot.potential.fingerprints import compute_fingerprints
    from hpcpot.potential.modelfile import Model
    from hpcpot.training.data import read_structures, split_indices

    cfg = _config(tmp_path / "std")
    r = subprocess.run([sys.executable, "-m", "hpcpot.train", str(cfg)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "std" / "out"
    d = json.loads((out / "model.json").read_text())
    assert d["format"] == "hpcpot-model-2" and d["input_scaling"] == "standard"
    model = Model.load(str(out / "model.json"))
    assert model.scaling == "standard"

    # mean and std are those of the training atoms' fingerprints (an independent numpy pass)
    train_idx, val_idx = split_indices(40, 0.25, 1)
    st, _ = read_structures([str(REF)], need_forces=True, elements=model.layout.elements, index=":40")
    G, _ = compute_fingerprints(st.subset(np.asarray(train_idx)), model.sf, with_derivs=False)
    sp = st.subset(np.asarray(train_idx)).species
    for e in range(len(model.layout.elements)):
        n = model.layout.n_inputs[e]
        np.testing.assert_allclose(model.gmean[e, :n], G[sp == e, :n].mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(model.gstd[e, :n], G[sp == e, :n].std(0), rtol=1e-9, atol=1e-14)
        np.testing.assert_array_equal(model.gmin[e, :n], G[sp == e, :n].min(0))  # the range, unchanged

    # the saved model reproduces the training's validation figures; training atoms are inside
    status = json.loads((out / "status.json").read_text())
    rep, _, _ = evaluate(model, st.subset(np.asarray(val_idx)))
    assert rep.energy_rmse_mev_per_atom / 1000 == pytest.approx(status["stats"]["validation"]["energy_rmse"], rel=1e-9)
    assert rep.force_rmse_ev_per_a == pytest.approx(status["stats"]["validation"]["force_rmse"], rel=1e-9)
    assert evaluate(model, st.subset(np.asarray(train_idx)), with_forces=False)[0].extrapolated_atoms_percent == 0.0

    # a min-max model file stays format 1, readable by older readers (also written by training: below)
    Model(model.sf, model.layout, model.params, model.gmin, model.gmax).save(str(tmp_path / "mm.json"))
    assert json.loads((tmp_path / "mm.json").read_text())["format"] == "hpcpot-model-1"


def test_unknown_input_scaling_in_a_model_file_is_refused(tmp_path):
    from test_lammps import make_model, structures

    from hpcpot.potential.modelfile import Model

    path = tmp_path / "m.json"
    make_model(path, "tanh", [a for a, _ in structures().values()], scaling="standard")
    d = json.loads(path.read_text())
    d["input_scaling"] = "zscore"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="input_scaling 'zscore'"):
        Model.load(str(path))


@pytest.mark.slow
@pytest.mark.mpi
def test_standardised_training_same_on_1_and_2_ranks(tmp_path):
    """The moments are allreduced: 2 ranks give the serial model inputs and loss history."""
    runs = {}
    for n in (1, 2):
        cfg = _config(tmp_path / f"r{n}", iters=15)
        r = run_mpi(n, ["-m", "hpcpot.train", str(cfg)])
        assert r.returncode == 0, r.stderr[-3000:]
        runs[n] = (json.loads((cfg.parent / "out" / "model.json").read_text()), _history(cfg.parent))
    for el, sc in runs[1][0]["scaling"].items():
        for k in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(runs[2][0]["scaling"][el][k], sc[k], rtol=1e-12, atol=1e-14)
    assert np.allclose(runs[2][1], runs[1][1], rtol=1e-9, atol=0)


def test_minmax_training_writes_a_format_1_model(tmp_path):
    """scaling = "minmax" (Amp's): inputs from the training range, a file every reader knows."""
    from hpcpot.potential.modelfile import Model

    cfg = _config(tmp_path / "mm", scaling="minmax", iters=3)
    r = subprocess.run([sys.executable, "-m", "hpcpot.train", str(cfg)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path / "mm" / "out" / "model.json").read_text())
    assert d["format"] == "hpcpot-model-1" and "input_scaling" not in d
    assert set(d["scaling"]["Pt"]) == {"min", "max"}
    m = Model.load(str(tmp_path / "mm" / "out" / "model.json"))
    lo, hi = m.input_bounds()
    assert m.scaling == "minmax" and (lo == m.gmin).all() and (hi == m.gmax).all()
