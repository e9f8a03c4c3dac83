"""Checkpoints survive SIGKILL at any moment, SIGUSR1 checkpoints and exits, damage is caught."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, ROOT, small_config, wait_for_lines, wait_until_gone

from hpcpot.training import checkpoint as ckpt


def _start(n, cfg, *args):
    if not MPIEXEC.exists():
        pytest.skip("mpiexec not available")
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "hpcpot.train", str(cfg), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)


def _no_nan(name):
    raise ValueError(f"status.json is not strict JSON: {name}")


def _final_loss(d):
    lines = (d / "out" / "log.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["loss"], json.loads(lines[-1])["iteration"]


def test_save_load_round_trip_and_damage(tmp_path):
    p = np.arange(5.0)
    c = ckpt.Checkpoint("optimize", 7, p, "cfg", "data", 1.5, {"a": 1}, {"best": p * 2})
    path = ckpt.save(str(tmp_path), c)
    back = ckpt.load(path)
    assert back.iteration == 7 and np.array_equal(back.params, p) and np.array_equal(back.arrays["best"], p * 2)
    # a newer but truncated file is reported and the older one is used
    c.iteration = 8
    newer = ckpt.save(str(tmp_path), c)
    newer = Path(newer)
    newer.write_bytes(newer.read_bytes()[: newer.stat().st_size // 2])
    msgs = []
    got = ckpt.latest(str(tmp_path), log=msgs.append)
    assert got.iteration == 7 and any("unreadable checkpoint" in m for m in msgs)
    # a bit flip inside the parameters fails the zip CRC
    data = bytearray(Path(path).read_bytes())
    i = data.find(np.arange(5.0).tobytes())
    data[i + 9] ^= 0x40
    Path(path).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path)
    assert ckpt.latest(str(tmp_path), log=msgs.append) is None


def test_checkpoint_from_other_config_is_refused(tmp_path):
    cfg = small_config(tmp_path, 5)
    r = subprocess.run([sys.executable, "-m", "hpcpot.train", str(cfg)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg.write_text(cfg.read_text().replace("hidden = [6]", "hidden = [7]"))
    r = subprocess.run([sys.executable, "-m", "hpcpot.train", str(cfg), "--restart"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "different config" in r.stderr


def test_existing_run_is_never_overwritten(tmp_path):
    cfg = small_config(tmp_path, 3)
    subprocess.run([sys.executable, "-m", "hpcpot.train", str(cfg)], check=True, capture_output=True, cwd=ROOT)
    model = (tmp_path / "out" / "model.json").read_bytes()
    r = subprocess.run([sys.executable, "-m", "hpcpot.train", str(cfg)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "already holds a run" in r.stderr
    assert (tmp_path / "out" / "model.json").read_bytes() == model
    r = subprocess.run([sys.executable, "-m", "hpcpot.train", str(cfg), "--overwrite"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    (prev,) = list((tmp_path / "out").glob("previous-*"))
    assert (prev / "model.json").read_bytes() == model  # moved aside, not lost


@pytest.mark.slow
@pytest.mark.mpi
def test_sigusr1_writes_checkpoint_and_exits_cleanly(tmp_path):
    cfg = small_config(tmp_path, 100000, every=0)
    p = _start(2, cfg)
    log = tmp_path / "out" / "log.jsonl"
    wait_for_lines(p, log, 5)
    os.kill(p.pid, signal.SIGUSR1)  # mpiexec forwards it to every rank
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "checkpoint written" in out
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["state"] == "interrupted"
    ck = ckpt.latest(str(tmp_path / "out" / "checkpoints"))
    assert ck is not None and ck.stage == "optimize" and ck.iteration >= 5


def _iterations(d) -> list[int]:
    return [json.loads(x)["iteration"] for x in (d / "out" / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.mpi
def test_sigkill_at_random_moments_then_restart(tmp_path):
    """SIGKILL the whole job after the k-th logged iteration (k random, read from the run's own
    log), while it checkpoints every iteration; the newest checkpoint always loads and a
    restart finishes the run with every iteration logged once.

    The killed run cannot finish by itself (its criteria are unreachable and its iteration
    budget is huge), so every kill lands on a run with work left, whatever the machine's speed;
    the restart is given a budget of 60 iterations past the checkpoint it resumes from."""
    rng = np.random.default_rng(0)
    trials = 10
    for k in range(trials):
        d = tmp_path / f"t{k}"
        d.mkdir()
        cfg = small_config(d, 10**6)
        p = _start(2, cfg)
        wait_for_lines(p, d / "out" / "log.jsonl", int(rng.integers(2, 40)))
        os.killpg(p.pid, signal.SIGKILL)  # mpiexec, proxy and both ranks at once
        p.communicate()
        wait_until_gone(str(cfg))  # a rank outside the process group may write one more checkpoint
        ck = ckpt.latest(str(d / "out" / "checkpoints"), log=lambda m: pytest.fail(m))
        assert ck is not None and ck.stage == "optimize" and ck.iteration >= 1
        loss_at_ck = {json.loads(x)["iteration"]: json.loads(x)["loss"]
                      for x in (d / "out" / "log.jsonl").read_text().splitlines()}[ck.iteration]  # fmt: skip
        final = ck.iteration + 60
        cfg.write_text(cfg.read_text().replace("max_iterations = 1000000", f"max_iterations = {final}"))
        r = _start(1, cfg, "--restart")
        out, err = r.communicate(timeout=600)
        assert r.returncode == 0, err
        assert f"resuming stage 'optimize' at iteration {ck.iteration}" in out
        status = json.loads((d / "out" / "status.json").read_text(), parse_constant=_no_nan)
        assert status["state"] == "not_converged" and f"after {final} iterations" in status["message"], status
        assert _iterations(d) == list(range(1, final + 1))  # redone iterations are logged once
        loss, it = _final_loss(d)
        assert it == final and loss < loss_at_ck  # it went on from the checkpoint's parameters
        assert ckpt.latest(str(d / "out" / "checkpoints")).stage == "done"


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Files hpcpot writes (models, plots, checkpoints) are readable as any file the user
    creates (umask applies), not 0600 as a temp file would be."""
    import os

    from hpcpot.files import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(str(tmp_path / "f"), lambda fh: fh.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("min_interval", [0.0, 1e6])
def test_periodic_checkpoints_wait_for_min_interval(tmp_path, min_interval):
    """[checkpoint] every = 1: with min_interval = 0 a checkpoint per iteration; with a
    min_interval longer than any run none until the final one (the sequence number in the
    newest file's name counts every checkpoint written)."""
    cfg = small_config(tmp_path, 6, every=1, min_interval=min_interval)
    r = subprocess.run([sys.executable, "-m", "hpcpot.train", str(cfg)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    files = sorted((tmp_path / "out" / "checkpoints").glob("checkpoint-*.npz"))
    written = int(files[-1].name[11:17])
    assert ckpt.load(str(files[-1])).stage == "done"
    assert written == (7 if min_interval == 0 else 1)
