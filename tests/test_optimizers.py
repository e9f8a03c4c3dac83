"""The optimiser methods and the best-validation model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REF, ROOT, need

from hpcpot.potential.modelfile import Model

pytestmark = pytest.mark.slow


def _cfg(d, method: str, iters: int, extra: str = "") -> str:
    cfg = d / "c.toml"
    cfg.write_text(f"""
[data]
train = ["{need(REF)}"]
index = ":60"
validation_fraction = 0.3
[fingerprints]
preset = "default"
[model]
hidden = [6]
[optimizer]
method = "{method}"
max_iterations = {iters}
[convergence]
energy_rmse = 0
force_rmse = 0
[checkpoint]
every = 5
min_interval = 0
[output]
dir = "out"
validate_every = 3
{extra}
""")
    return str(cfg)


def _train(cfg: str, *args) -> None:
    r = subprocess.run([sys.executable, "-m", "hpcpot.train", cfg, *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("method", ["lbfgsb", "lbfgs", "bfgs", "cg"])
def test_every_method_lowers_the_loss_and_keeps_the_best_validation_model(tmp_path, method):
    _train(_cfg(tmp_path, method, 25))
    out = tmp_path / "out"
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(1, 26))
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    validated = [r for r in log if "val_loss" in r]
    assert [r["iteration"] for r in validated] == list(range(3, 26, 3))
    best = min(validated, key=lambda r: r["val_loss"])
    status = json.loads((out / "status.json").read_text())
    assert status["stats"]["best_validation"] == {"iteration": best["iteration"], "validation_loss": best["val_loss"]}
    assert status["stats"]["last_iteration"] == 25
    assert Model.load(str(out / "model_best.json")).params.shape == Model.load(str(out / "model.json")).params.shape


def test_best_model_survives_a_restart(tmp_path):
    """SIGTERM mid-run, then --restart to 25 iterations: the log continues without gaps, and the
    best validation point is the lowest of the whole log, whichever part it fell in."""
    cfg = _cfg(tmp_path, "lbfgsb", 25)
    helper = str(ROOT / "tests" / "mpi" / "helper.py")
    r = subprocess.run([sys.executable, helper, "inject", "sigterm@eval:30", cfg], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["state"] == "interrupted"
    stopped = len((tmp_path / "out" / "log.jsonl").read_text().splitlines())
    assert 3 <= stopped < 25
    from hpcpot.training import checkpoint as ckpt

    ck = ckpt.latest(str(tmp_path / "out" / "checkpoints"), log=lambda m: None)
    assert "best" in ck.arrays and 3 <= ck.extra["best_iteration"] <= stopped  # carried by the checkpoint
    _train(cfg, "--restart")
    log = [json.loads(x) for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(1, 26))  # no gaps, no repeats
    best = min((r for r in log if "val_loss" in r), key=lambda r: r["val_loss"])
    status = json.loads((tmp_path / "out" / "status.json").read_text())["stats"]["best_validation"]
    assert status == {"iteration": best["iteration"], "validation_loss": best["val_loss"]}


def test_time_budget_stops_a_run_that_would_go_on(tmp_path):
    """max_time = a tiny budget: the run stops after its first iteration, not converged, and
    says why (no assumption on the machine's speed: any iteration takes longer than 1 ns)."""
    cfg = _cfg(tmp_path, "lbfgsb", 10**6, extra="")
    path = Path(cfg)
    path.write_text(path.read_text().replace("max_iterations = 1000000", "max_iterations = 1000000\nmax_time = 1e-9"))
    _train(cfg)
    out = tmp_path / "out"
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "not_converged" and "time budget of 1e-09 s reached" in status["message"]


@pytest.mark.parametrize("on, stop", [("validation", 3), ("train", 1)])
def test_validation_criteria_are_tested_where_validation_runs(tmp_path, on, stop):
    """Criteria met from the first iteration: on the training set the run stops there; on the
    validation set (evaluated every 3 iterations) at the first validated iteration, 3."""
    cfg = Path(_cfg(tmp_path, "lbfgsb", 25))
    cfg.write_text(cfg.read_text().replace("energy_rmse = 0\n", f'energy_rmse = 10.0\non = "{on}"\n'))
    _train(str(cfg))
    out = tmp_path / "out"
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(1, stop + 1))
    assert [r["iteration"] for r in log if "val_loss" in r] == [3] * (stop == 3)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "converged" and status["stats"]["last_iteration"] == stop
