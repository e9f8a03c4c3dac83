"""Parallel runs give the serial answers; failures end every rank; empty shards work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REF, need, run_mpi

pytestmark = [pytest.mark.slow, pytest.mark.mpi]


def _config(tmp_path, name, n_images=40, iters=20, alpha=0.04, extra="", train=None, precision="float64"):
    """A short training of the reference set; float64 network passes unless asked (the tests
    compare ranks to 1e-12, which float32 passes cannot give: see the float32 test)."""
    d = tmp_path / name
    d.mkdir()
    cfg = d / "c.toml"
    cfg.write_text(f"""
[data]
train = ["{train or need(REF)}"]
index = ":{n_images}"
validation_fraction = 0.2
[model]
hidden = [8, 8]
[loss]
force_coefficient = {alpha}
precision = "{precision}"
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
{extra}
""")
    return cfg


def _serial_and_parallel_eval(tmp_path, n_images, ranks, train=None, precision="float64"):
    cfg = _config(tmp_path, f"eval{n_images}_{precision}", n_images=n_images, train=train, precision=precision)
    out = {}
    for n in [1, *ranks]:
        f = tmp_path / f"e{n_images}_{precision}_{n}.npy"
        r = run_mpi(n, ["tests/mpi/helper.py", "eval", str(cfg), str(f)])
        assert r.returncode == 0, r.stderr[-3000:]
        out[n] = np.load(f)
    return out


def test_loss_and_gradient_equal_serial(tmp_path):
    res = _serial_and_parallel_eval(tmp_path, 40, [2, 3, 4])
    ref = res[1]
    for n, v in res.items():
        scale = np.abs(ref).max()
        assert np.abs(v - ref).max() <= 1e-12 * scale, f"{n} ranks differ"
        assert v[0] == pytest.approx(ref[0], rel=1e-12)


def test_float32_passes_on_several_ranks_agree_with_one(tmp_path):
    """The default float32 network passes: each rank's blocks of atoms round differently, so
    ranks agree with one rank to float32 rounding (and with float64 passes to the same),
    not to 1e-12."""
    res = _serial_and_parallel_eval(tmp_path, 40, [2, 3], precision="float32")
    ref64 = _serial_and_parallel_eval(tmp_path, 40, [], precision="float64")[1]
    scale = np.abs(ref64).max()
    for n, v in res.items():
        assert np.abs(v - ref64).max() <= 2e-6 * scale, f"{n} ranks, float32 against float64"
        assert np.abs(v - res[1]).max() <= 2e-6 * scale, f"{n} ranks against 1"
    assert not np.array_equal(res[1], ref64)


def _extxyz(tmp_path, n, spoil=None):
    """The first n reference images as extxyz; ``spoil`` = image whose energy becomes NaN."""
    from ase.io import read, write

    images = read(str(need(REF)), index=f":{n}")
    for k, a in enumerate(images):
        e, f = a.get_potential_energy(), a.get_forces(apply_constraint=False)
        a.set_constraint()
        from ase.calculators.singlepoint import SinglePointCalculator

        a.calc = SinglePointCalculator(a, energy=float("nan") if k == spoil else e, forces=f)
        a.info.pop("adsorbate_info", None)  # a dict: extxyz cannot store it (warns)
    path = tmp_path / "set.extxyz"
    write(str(path), images, format="extxyz")
    return path


def test_extxyz_parsed_once_gives_the_serial_answer(tmp_path):
    # rank 0 parses the non-indexable file and broadcasts it; results equal the serial ones
    res = _serial_and_parallel_eval(tmp_path, 30, [2, 3], train=_extxyz(tmp_path, 30))
    for n in (2, 3):
        assert np.abs(res[n] - res[1]).max() <= 1e-12 * np.abs(res[1]).max(), f"{n} ranks differ"


def test_bad_image_in_extxyz_reported_once(tmp_path):
    path = _extxyz(tmp_path, 12, spoil=7)
    cfg = _config(tmp_path, "spoilt", n_images=12, train=path)
    r = run_mpi(2, ["-m", "hpcpot.train", str(cfg)], timeout=120)
    assert r.returncode != 0
    assert r.stderr.count(f"{path}: image 7: energy is nan") == 1, r.stderr


def test_empty_shard_when_more_ranks_than_images(tmp_path):
    # 3 training images (plus 1 validation) on 4 ranks: one rank owns no training image
    res = _serial_and_parallel_eval(tmp_path, 4, [4])
    assert np.abs(res[4] - res[1]).max() <= 1e-12 * np.abs(res[1]).max()


def _history(d):
    return [json.loads(line)["loss"] for line in (d / "out" / "log.jsonl").read_text().splitlines()]


def test_training_history_same_on_1_2_3_ranks(tmp_path):
    hist = {}
    for n in (1, 2, 3):
        cfg = _config(tmp_path, f"train{n}", n_images=40, iters=20)
        r = run_mpi(n, ["-m", "hpcpot.train", str(cfg)])
        assert r.returncode == 0, r.stderr[-3000:]
        hist[n] = np.array(_history(cfg.parent))
        # only rank 0 prints: one progress line per iteration, not one per rank
        assert r.stdout.count("\niter ") == 20, r.stdout
    assert len(hist[1]) == 20
    for n in (2, 3):
        assert np.allclose(hist[n], hist[1], rtol=1e-9, atol=0), (hist[1], hist[n])


def test_optimiser_copies_on_every_rank_match_rank_0_driving(tmp_path):
    """[parallel] optimizer = "replicated" (the default: every rank runs the optimiser on the
    allreduced gradient, no broadcast) and "rank0" train alike, with hpcpot's L-BFGS and with
    max-residual criteria (an extra MAX reduction) and validation on."""
    hist = {}
    for mode in ("replicated", "rank0"):
        cfg = _config(tmp_path, mode, n_images=40, iters=25,
                      extra=f"[parallel]\noptimizer = \"{mode}\"\n")  # fmt: skip
        text = cfg.read_text().replace("[optimizer]", "[optimizer]\nmethod = \"lbfgs\"")
        cfg.write_text(text.replace("force_rmse = 1e-9", "force_rmse = 1e-9\nforce_maxresid = 1e-9"))
        r = run_mpi(3, ["-m", "hpcpot.train", str(cfg)])
        assert r.returncode == 0, r.stderr[-3000:]
        assert ("a copy on every rank" in r.stdout) == (mode == "replicated"), r.stdout[:3000]
        hist[mode] = np.array(_history(cfg.parent))
        assert len(hist[mode]) == 25
        assert json.loads((cfg.parent / "out" / "status.json").read_text())["state"] == "not_converged"
    assert np.allclose(hist["replicated"], hist["rank0"], rtol=1e-9, atol=0)


@pytest.mark.parametrize("mode", ["replicated", "rank0"])
def test_float32_passes_fall_back_to_float64_on_every_rank(tmp_path, mode):
    """[loss] precision = "float32": when the optimiser stalls on the rounded loss, every rank
    switches to float64 passes at the same iteration (rank 0 tells the serving ranks; the
    optimiser copies each switch by themselves) and the run goes on below the float32 floor.
    A linear model fitted to 8 images' energies stalls within ~150 iterations."""
    cfg = _config(tmp_path, mode, n_images=10, iters=3000, alpha=0.0, extra=f"[parallel]\noptimizer = \"{mode}\"\n",
                  precision="float32")  # fmt: skip
    text = cfg.read_text().replace("hidden = [8, 8]", "hidden = [2]\nactivation = \"linear\"")
    cfg.write_text(text.replace("energy_rmse = 1e-9", "energy_rmse = 0").replace("force_rmse = 1e-9", "force_rmse = 0"))
    r = run_mpi(2, ["-m", "hpcpot.train", str(cfg)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("float64 passes from here on") == 1, r.stdout[-3000:]
    stall = int(r.stdout.split("float64 passes from here on")[0].rsplit("iteration ", 1)[1].split(":")[0])
    hist = _history(cfg.parent)
    assert len(hist) > stall  # went on after the switch
    status = json.loads((cfg.parent / "out" / "status.json").read_text())
    assert status["stats"]["train"]["energy_rmse"] < 1e-9  # eV/atom; at the stall ~3e-8
    assert status["stats"]["network_passes"] == "float32" and status["stats"]["float64_passes_from_iteration"] == stall
    assert "network passes in float32" in r.stdout


def test_optimiser_copies_that_disagree_stop_together(tmp_path):
    """One bit of difference in one parameter, or one rank leaving the optimiser while the
    other evaluates: every rank finds it in the same reduction (no hang)."""
    cfg = _config(tmp_path, "mismatch", n_images=12)
    r = run_mpi(2, ["tests/mpi/helper.py", "mismatch", str(cfg)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        for what in ("agreed", "parameters differ", "commands differ"):
            assert f"rank {rank}: {what}" in r.stdout, r.stdout


def test_work_registered_for_the_allreduce_runs_in_gradient_evaluations_only(tmp_path):
    """The optimiser's prefetch runs inside each loss+gradient evaluation's (nonblocking)
    Allreduce, its chunks in order (the first always, later ones until the sum has arrived:
    how many depends on the other rank's speed), on every rank that registered it, and not
    in loss-only ones; the sums are the bits a reduction without it gives."""
    cfg = _config(tmp_path, "overlap", n_images=12)
    r = run_mpi(2, ["tests/mpi/helper.py", "overlap", str(cfg)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for who in ("rank 0: everywhere", "rank 1: everywhere", "rank 0: evaluate"):
        assert f"{who} ran [1, 2], same sums True" in r.stdout or f"{who} ran [1], same sums True" in r.stdout, r.stdout


def test_time_budget_stops_every_copy_at_the_same_iteration(tmp_path):
    """max_time is judged on rank 0's clock, sent to every copy: all stop after iteration 1."""
    cfg = _config(tmp_path, "budget", iters=100000)
    cfg.write_text(cfg.read_text().replace("max_iterations = 100000", "max_iterations = 100000\nmax_time = 1e-9"))
    r = run_mpi(2, ["-m", "hpcpot.train", str(cfg)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _history(cfg.parent) and len(_history(cfg.parent)) == 1
    assert "time budget" in json.loads((cfg.parent / "out" / "status.json").read_text())["message"]


def test_error_on_one_rank_ends_every_rank(tmp_path):
    cfg = _config(tmp_path, "fail", iters=1000)
    # it ends (a hang would hit the timeout, a hang detector, not a speed assumption)
    r = run_mpi(3, ["tests/mpi/helper.py", "fail", str(cfg)], timeout=300)
    assert r.returncode != 0
    assert "[rank 1] error: RuntimeError: injected failure on rank 1" in r.stderr
    assert "[rank 0] error" not in r.stderr and "[rank 2] error" not in r.stderr


def test_missing_data_file_reported_once(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\ntrain = ["nowhere.traj"]\n')
    r = run_mpi(2, ["-m", "hpcpot.train", str(cfg)], timeout=120)
    assert r.returncode != 0
    assert r.stderr.count("nowhere.traj: file not found") == 1, r.stderr


def test_bad_config_reported_once(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[data]\ntrain = ["x.traj"]\n[model]\nhiden = [3]\n')
    r = run_mpi(2, ["-m", "hpcpot.train", str(cfg)], timeout=120)
    assert r.returncode != 0
    assert r.stderr.count("unknown key 'hiden'") == 1, r.stderr


def test_refusal_on_rank_0_ends_every_rank(tmp_path):
    cfg = _config(tmp_path, "again", n_images=10, iters=2)
    assert run_mpi(2, ["-m", "hpcpot.train", str(cfg)]).returncode == 0
    r = run_mpi(2, ["-m", "hpcpot.train", str(cfg)], timeout=120)  # the folder holds a run now
    assert r.returncode != 0
    assert r.stderr.count("already holds a run") == 1, r.stderr
