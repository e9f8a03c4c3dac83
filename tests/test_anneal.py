"""Simulated annealing: never worse than the start, correct rates, reproducible across ranks."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import REF, need, run_mpi

from hpcpot.training.anneal import anneal
from hpcpot.training.config import AnnealConfig


def _lines(buf):
    return [m.groups() for m in (re.search(r"([\d.]+)% +([\d.]+)%", line) for line in buf) if m]


def test_never_returns_worse_than_start():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 30))

    def loss(x):
        return float(x @ A.T @ A @ x) + float(np.sin(5 * x).sum())

    x0 = rng.normal(size=30) * 0.1
    for tmax, seed in [(100.0, 1), (1e-3, 2), (10.0, 3)]:
        cfg = AnnealConfig(enabled=True, tmax=tmax, tmin=tmax / 1000, steps=300, step_size=0.05, seed=seed)
        best = anneal(loss, x0, cfg, log=lambda *a: None)
        assert loss(best) <= loss(x0)


def test_printed_rates_when_they_are_known():
    out = []
    cfg = AnnealConfig(enabled=True, tmax=10.0, tmin=1.0, steps=100, updates=4, seed=0)
    anneal(lambda x: 1.0, np.zeros(3), cfg, log=out.append)  # flat: all accepted, none improves
    rates = _lines(out)
    assert len(rates) == 4 and all(r == ("100.00", "0.00") for r in rates)

    calls = {"n": 0}

    def always_better(x):
        calls["n"] += 1
        return -float(calls["n"])  # every trial is lower than the current state

    out = []
    anneal(always_better, np.zeros(3), cfg, log=out.append)
    assert all(r == ("100.00", "100.00") for r in _lines(out))

    out = []
    cfg_cold = AnnealConfig(enabled=True, tmax=1e-12, tmin=1e-13, steps=100, updates=4, seed=0)
    anneal(lambda x: float(np.abs(x).sum()), np.zeros(3), cfg_cold, log=out.append)  # every move is uphill
    assert all(r == ("0.00", "0.00") for r in _lines(out))


def test_auto_schedule_brackets_the_uphill_moves():
    from hpcpot.training.anneal import auto_schedule

    cfg = AnnealConfig(enabled=True, auto=True, step_size=0.1, seed=0)
    tmax, tmin = auto_schedule(lambda x: float(x @ x), np.ones(20), cfg, log=lambda *a: None)
    assert tmax > tmin > 0


@pytest.mark.slow
@pytest.mark.mpi
def test_same_seed_same_result_on_1_and_2_ranks(tmp_path):
    losses = {}
    for n in (1, 2):
        d = tmp_path / f"r{n}"
        d.mkdir()
        cfg = d / "c.toml"
        cfg.write_text(f"""
[data]
train = ["{need(REF)}"]
index = ":30"
[loss]
force_coefficient = 0.0
[model]
hidden = [6]
[anneal]
enabled = true
tmax = 1e-3
tmin = 1e-6
steps = 200
updates = 10
step_size = 0.02
seed = 7
[optimizer]
max_iterations = 2
[output]
dir = "out"
""")
        r = run_mpi(n, ["-m", "hpcpot.train", str(cfg)])
        assert r.returncode == 0, r.stderr[-2000:]
        rows = [line.split() for line in r.stdout.splitlines() if re.match(r"^ +[\d.e+-]+ +[\d.e+-]+ +[\d.e+-]+ +[\d.]+%", line)]
        assert len(rows) == 10
        losses[n] = np.array([[float(x) for x in row[:3]] for row in rows])
    assert np.allclose(losses[1], losses[2], rtol=1e-9)
