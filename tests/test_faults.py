"""Fault injection: the failures clusters produce end every rank, lose no work, and leave
nothing half-written that a later run would trust.

Faults are injected at points the test controls (tests/mpi/helper.py ``inject``, or after
the k-th line of the run's own log), never after a sleep that assumes a speed.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, REF, ROOT, need, pids_with, small_config, wait_for_lines, wait_until_gone

from hpcpot.potential.modelfile import Model
from hpcpot.training import checkpoint as ckpt

pytestmark = pytest.mark.slow
HELPER = str(ROOT / "tests" / "mpi" / "helper.py")


def _launch(n: int, args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, *args] if n == 1 else [str(MPIEXEC), "-n", str(n), sys.executable, *args]
    if n > 1 and not MPIEXEC.exists():
        pytest.skip("mpiexec not available")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)


def _run(n: int, args: list[str], timeout: float = 600) -> tuple[int, str, str]:
    p = _launch(n, args)
    out, err = p.communicate(timeout=timeout)  # a hang detector, not a speed assumption
    return p.returncode, out, err


def _status(d: Path) -> dict:
    return json.loads((d / "out" / "status.json").read_text())


def _iterations(d: Path) -> list[int]:
    return [json.loads(x)["iteration"] for x in (d / "out" / "log.jsonl").read_text().splitlines()]


def _restart_and_finish(d: Path, cfg: Path, extra_iters: int = 20) -> None:
    """--restart with a budget of extra_iters past the newest checkpoint: it must finish."""
    ck = ckpt.latest(str(d / "out" / "checkpoints"), log=lambda m: pytest.fail(m))
    assert ck is not None
    final = ck.iteration + extra_iters
    text = cfg.read_text()
    cfg.write_text(text[: text.index("max_iterations")] + f"max_iterations = {final}" + text[text.index("\n", text.index("max_iterations")) :])
    rc, out, err = _run(1, ["-m", "hpcpot.train", str(cfg), "--restart"])
    assert rc == 0, err[-3000:]
    assert _status(d)["state"] == "not_converged"
    assert _iterations(d) == list(range(1, final + 1))
    assert np.all(np.isfinite(Model.load(str(d / "out" / "model.json")).params))


@pytest.mark.mpi
def test_one_rank_killed_ends_every_rank_then_restart(tmp_path):
    """SIGKILL to rank 1's process alone, mid-training: every rank ends, the launcher exits
    non-zero, the newest checkpoint loads and --restart finishes the training."""
    cfg = small_config(tmp_path)
    p = _launch(2, ["-m", "hpcpot.train", str(cfg)])
    wait_for_lines(p, tmp_path / "out" / "log.jsonl", 15)
    ranks = {int(env.get("PMI_RANK", -1)): pid for pid, env in pids_with(str(cfg)).items()}
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)
    p.communicate(timeout=300)  # a hang would hit this
    assert p.returncode != 0
    wait_until_gone(str(cfg))  # rank 0 is gone with the launcher
    _restart_and_finish(tmp_path, cfg)


@pytest.mark.mpi
def test_disk_full_keeps_the_previous_checkpoint(tmp_path):
    """The output folder's file system fills up mid-training (a small tmpfs): the error names
    the file, every rank ends, the newest checkpoint is valid, no temporary file is left to be
    trusted, and after space is freed --restart finishes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cfg = small_config(mnt)
        st = os.statvfs(mnt)
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 48 * 1024))  # ~48 KiB left for the run
        rc, out, err = _run(2, ["-m", "hpcpot.train", str(cfg)])
        assert rc != 0
        assert "No space left on device" in err and str(mnt / "out") in err, err[-3000:]
        assert "Traceback" not in err  # a complete message, not a crash dump
        assert not list((mnt / "out").rglob(".tmp-*")), list((mnt / "out").rglob("*"))
        ck = ckpt.latest(str(mnt / "out" / "checkpoints"), log=lambda m: pytest.fail(m))
        assert ck is not None and ck.iteration >= 1
        filler.unlink()
        _restart_and_finish(mnt, cfg)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_nonfinite_loss_keeps_last_finite_parameters(tmp_path):
    cfg = small_config(tmp_path, iters=500, every=0)
    rc, out, err = _run(1, [HELPER, "inject", "nan@eval:15", str(cfg)])
    assert rc == 3, (out[-2000:], err[-2000:])
    st = _status(tmp_path)
    assert st["state"] == "nonfinite_loss"
    it = st["stats"]["model_iteration"]
    assert it >= 1 and f"iteration {it + 1}" in st["message"] and f"iteration {it}" in out
    model = Model.load(str(tmp_path / "out" / "model.json"))
    assert np.all(np.isfinite(model.params))
    ck = ckpt.latest(str(tmp_path / "out" / "checkpoints"))
    assert ck.iteration == it and np.array_equal(ck.params, model.params)
    assert _iterations(tmp_path) == list(range(1, it + 1))
    assert all(np.isfinite(json.loads(x)["loss"]) for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines())


def test_nonfinite_loss_at_start_writes_no_model(tmp_path):
    cfg = small_config(tmp_path, iters=500, every=0)
    rc, out, err = _run(1, [HELPER, "inject", "nan@eval:1", str(cfg)])
    assert rc == 3 and _status(tmp_path)["state"] == "nonfinite_loss"
    assert not (tmp_path / "out" / "model.json").exists()


@pytest.mark.parametrize(
    "point, n, stage",
    [("read", 1, "optimize"), ("fingerprints", 1, "optimize"), ("anneal", 30, "anneal"), ("eval", 12, "optimize")],
)
def test_sigterm_at_every_stage_leaves_a_usable_state(tmp_path, point, n, stage):
    extra = "[anneal]\nenabled = true\nsteps = 200\nupdates = 10\n" if point == "anneal" else ""
    cfg = small_config(tmp_path, iters=500, every=0, extra=extra)  # bounded: a missed injection fails, not hangs
    nranks = 2 if point in ("read", "eval") and MPIEXEC.exists() else 1
    rc, out, err = _run(nranks, [HELPER, "inject", f"sigterm@{point}:{n}", str(cfg)])
    assert rc == 0, err[-3000:]
    st = _status(tmp_path)
    assert st["state"] == "interrupted" and "checkpoint written" in st["message"], st
    ck = ckpt.latest(str(tmp_path / "out" / "checkpoints"), log=lambda m: pytest.fail(m))
    assert ck.stage == stage
    assert not (tmp_path / "out" / "model.json").exists()
    rc, out, err = _run(1, ["-m", "hpcpot.train", str(cfg), "--restart"])
    assert rc == 0, err[-3000:]
    assert f"resuming stage '{stage}'" in out


@pytest.mark.mpi
def test_sigterm_on_one_rank_stops_every_optimiser_copy(tmp_path):
    """With a copy of the optimiser on every rank, a signal that reaches rank 1 alone still
    stops all copies at one iteration, with a checkpoint that --restart resumes."""
    if not MPIEXEC.exists():
        pytest.skip("mpiexec not available")
    cfg = small_config(tmp_path, iters=500, every=0)
    rc, out, err = _run(2, [HELPER, "inject", "sigterm1@eval:12", str(cfg)])
    assert rc == 0, err[-3000:]
    st = _status(tmp_path)
    assert st["state"] == "interrupted" and "reached 1 rank(s)" in st["message"], st
    ck = ckpt.latest(str(tmp_path / "out" / "checkpoints"), log=lambda m: pytest.fail(m))
    assert ck.stage == "optimize" and ck.iteration == len(_iterations(tmp_path))
    _restart_and_finish(tmp_path, cfg)


def test_sigterm_while_writing_the_model_finishes_the_run(tmp_path):
    cfg = small_config(tmp_path, iters=5, every=0)
    rc, out, err = _run(1, [HELPER, "inject", "sigterm@model", str(cfg)])
    assert rc == 0, err[-3000:]
    assert _status(tmp_path)["state"] == "not_converged"
    assert np.all(np.isfinite(Model.load(str(tmp_path / "out" / "model.json")).params))
    assert ckpt.latest(str(tmp_path / "out" / "checkpoints")).stage == "done"


def test_checkpoint_truncated_at_any_offset_is_never_trusted(tmp_path):
    """Property over every byte offset: a truncated checkpoint never loads, and latest()
    falls back to the older complete one."""
    rng = np.random.default_rng(1)
    old = ckpt.Checkpoint("optimize", 3, rng.normal(size=50), "c", "d", 1.0)
    ckpt.save(str(tmp_path), old)
    new = ckpt.Checkpoint("anneal", 4, rng.normal(size=50), "c", "d", 2.0, {"rng": {"x": 1}}, {"best": rng.normal(size=50)})
    path = Path(ckpt.save(str(tmp_path), new))
    blob = path.read_bytes()
    for cut in range(len(blob)):
        path.write_bytes(blob[:cut])
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load(str(path))
        assert ckpt.latest(str(tmp_path), log=lambda m: None).iteration == 3
    path.write_bytes(blob)
    assert ckpt.latest(str(tmp_path)).iteration == 4


def test_checkpoint_of_another_version_is_refused(tmp_path):
    cfg = small_config(tmp_path, iters=3, every=1)
    assert _run(1, ["-m", "hpcpot.train", str(cfg)])[0] == 0
    folder = tmp_path / "out" / "checkpoints"
    ck = ckpt.latest(str(folder))
    ck.version, ck.stage = "0.0.1", "optimize"
    ckpt.save(str(folder), ck)
    rc, out, err = _run(1, ["-m", "hpcpot.train", str(cfg), "--restart"])
    assert rc != 0 and "written by hpcpot 0.0.1" in err, err


def test_fingerprint_cache_truncated_or_foreign_is_never_trusted(tmp_path, monkeypatch, ref_structures):
    """A cache file cut at any offset of its last KiB (and at coarse offsets before) is
    ignored with a warning; entries written by another hpcpot version are not reused."""
    import hpcpot.training.cache as cache_mod
    from hpcpot.potential.fingerprints import compute_fingerprints
    from hpcpot.training.config import FingerprintConfig
    from hpcpot.training.descriptors import symmetry_functions

    st = ref_structures.slice(0, 4)
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    G_ref, _ = compute_fingerprints(st, sf, True)
    monkeypatch.setattr(cache_mod, "__version__", "0.0.1")
    cache_mod.FingerprintCache(str(tmp_path), sf, True, np.float64, log=lambda m: None).compute(st)
    monkeypatch.undo()
    c = cache_mod.FingerprintCache(str(tmp_path), sf, True, np.float64, log=lambda m: None)
    G, _ = c.compute(st)
    assert c.hits == 0 and c.misses == 4 and np.array_equal(G, G_ref)  # the foreign entry was not used
    (path,) = [p for p in tmp_path.glob("fp-*.h5") if c.defkey in p.name]
    blob = path.read_bytes()
    cuts = sorted(set(range(max(0, len(blob) - 1024), len(blob))) | set(range(0, len(blob), 509)))
    for cut in cuts:
        path.write_bytes(blob[:cut])
        msgs: list[str] = []
        c = cache_mod.FingerprintCache(str(tmp_path), sf, True, np.float64, log=msgs.append)
        found = c._index(set(cache_mod.image_keys(st)))
        assert not found and any("damaged" in m for m in msgs), cut
    path.write_bytes(blob)
    c = cache_mod.FingerprintCache(str(tmp_path), sf, True, np.float64, log=lambda m: None)
    assert len(c._index(set(cache_mod.image_keys(st)))) == 4


@pytest.fixture(scope="module")
def bad_data_files(tmp_path_factory):
    """1000 reference images, image 777 with a NaN force, in every supported format."""
    import ase.io
    from ase.db import connect

    from hpcpot.training.data import read_structures
    from hpcpot.training.hdf5 import write_hdf5

    d = tmp_path_factory.mktemp("bad")
    images = ase.io.read(str(need(REF)), ":1000")
    f = images[777].calc.results["forces"].copy()
    f[3, 1] = np.nan
    images[777].calc.results["forces"] = f
    for a in images:
        a.constraints = []
        a.info.pop("adsorbate_info", None)  # a dict extxyz cannot store
    files = {"traj": d / "bad.traj", "extxyz": d / "bad.extxyz", "db": d / "bad.db", "extxyz.gz": d / "bad.extxyz.gz"}
    ase.io.write(str(files["traj"]), images)
    ase.io.write(str(files["extxyz"]), images)
    with open(files["extxyz"], "rb") as src, gzip.open(files["extxyz.gz"], "wb") as dst:
        shutil.copyfileobj(src, dst)
    with connect(str(files["db"])) as db:
        for a in images:
            db.write(a)
    good, _ = read_structures([str(files["traj"])], need_forces=False)
    good.forces = np.concatenate([a.calc.results["forces"] for a in images])
    files["h5"] = d / "bad.h5"
    write_hdf5(str(files["h5"]), good)
    return files


@pytest.mark.parametrize("fmt", ["traj", "extxyz", "extxyz.gz", "db", "h5"])
@pytest.mark.parametrize("nranks", [1, 3])
def test_one_bad_image_among_many_reported_once(tmp_path, bad_data_files, fmt, nranks):
    if nranks > 1 and not MPIEXEC.exists():
        pytest.skip("mpiexec not available")
    cfg = small_config(tmp_path, iters=1)
    cfg.write_text(cfg.read_text().replace(f'train = ["{need(REF)}"]\nindex = ":24"', f'train = ["{bad_data_files[fmt]}"]'))
    rc, out, err = _run(nranks, ["-m", "hpcpot.train", str(cfg)])
    assert rc != 0
    lines = [x for x in err.splitlines() if "error" in x]
    assert len(lines) == 1, err[-3000:]
    assert str(bad_data_files[fmt]) in lines[0] and "image 777" in lines[0] and "forces" in lines[0], lines


@pytest.mark.parametrize("nranks", [1, 3])
def test_duplicates_and_unit_outliers_are_reported(tmp_path, nranks):
    """A repeated structure with another energy and three images in Hartree among 200."""
    import ase.io

    if nranks > 1 and not MPIEXEC.exists():
        pytest.skip("mpiexec not available")
    images = ase.io.read(str(need(REF)), ":200")
    for a in images:
        a.info.pop("adsorbate_info", None)  # a dict extxyz cannot store
    dup = images[10].copy()
    dup.calc = type(images[10].calc)(dup, energy=images[10].calc.results["energy"] + 0.5,
                                     forces=images[10].calc.results["forces"])  # fmt: skip
    images.append(dup)
    for a in images:  # EMT energies are near 0; DFT total energies are some eV/atom below
        a.calc.results["energy"] -= 5.0 * len(a)
    for j in (50, 120, 199):
        images[j].calc.results["energy"] /= 27.211386
    path = tmp_path / "data.extxyz"
    ase.io.write(str(path), images)
    cfg = small_config(tmp_path, iters=1)
    cfg.write_text(cfg.read_text().replace(f'train = ["{need(REF)}"]\nindex = ":24"', f'train = ["{path}"]'))
    rc, out, err = _run(nranks, ["-m", "hpcpot.train", str(cfg)])
    assert rc == 0, err[-3000:]
    dups = [x for x in out.splitlines() if "different energy" in x]
    assert len(dups) == 1 and dups[0].startswith("warning: 1 image(s)") and "image 200 = " in dups[0], out[-3000:]
    outl = [x for x in out.splitlines() if "from the median" in x]
    assert len(outl) == 1 and outl[0].startswith("warning: 3 image(s)"), out[-3000:]
    assert all(f"image {j} (" in outl[0] for j in (50, 120, 199))
