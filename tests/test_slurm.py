"""The SLURM job scripts on a real (private, one-node) SLURM cluster.

Needs root and apt-get (Debian 12): slurmctld/slurmd/munge are installed if missing and started
by ``tests/slurm/cluster.sh`` with their config in a scratch dir; every daemon is stopped again
at the end.  Otherwise the tests are skipped.  Both job scripts are submitted with 2 tasks:

* ``train_debug.sbatch`` (mpiexec from the venv) and ``train_multinode.sbatch`` (srun --mpi=pmi2)
  train 30 iterations on 200 images and must leave a model that loads in ``hpcpot.Calculator``;
* the multinode script gets the ``--signal=B:USR1`` signal by hand (``scancel --signal=USR1
  --batch``): hpcpot must checkpoint and report "interrupted", the script must requeue the job,
  and the requeued job (held for the credential lifetime, ``AuthInfo=cred_expire=10`` on the
  test cluster) must start again, resume by itself at the checkpoint's iteration and finish.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLUSTER_SH = HERE / "slurm" / "cluster.sh"
JOBSCRIPTS = REPO / "jobscripts"
# /work/main/tests/test_slurm.py -> /work/shared/data
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAJ = DATA / "o_pt111_emt_3000.traj"
PYTHON = sys.executable


def _skip(reason: str):
    print(f"\nSKIP test_slurm: {reason}", flush=True)
    pytest.skip(reason)


def _config(path: Path, max_iterations: int) -> Path:
    """Write the config atomically: a job may start and read it at any moment."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        f"""\
[data]
train = ["{TRAJ}"]
index = ":200"
validation_fraction = 0.1
seed = 0

[model]
hidden = [10, 10]

[optimizer]
max_iterations = {max_iterations}

[convergence]
energy_rmse = 1e-9   # unreachable: the run goes on to max_iterations
force_rmse = 1e-9

[checkpoint]
every = 5
min_interval = 0

[output]
dir = "run"
validate_every = 5
"""
    )
    os.replace(tmp, path)
    return path


class Slurm:
    """Client side of the private cluster: runs sbatch/squeue/... with its SLURM_CONF."""

    def __init__(self, test_dir: Path):
        self.dir = test_dir
        self.env = dict(os.environ, SLURM_CONF=str(test_dir / "etc" / "slurm.conf"), SLURM_TEST_DIR=str(test_dir))
        for v in [k for k in self.env if k.startswith(("PMI_", "PMIX_", "HYDRA_", "OMPI_", "MPI_LOCAL"))]:
            del self.env[v]  # the job must not think it is already under an MPI launcher

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}\n{self.logs()}")
        return p

    def sbatch(self, script: Path, workdir: Path, *opts: str, args: tuple[str, ...] = (), wait: bool = False,
               export: str = "") -> subprocess.CompletedProcess:  # fmt: skip
        cmd = ["sbatch", "--parsable", "-p", "debug", "-t", "10", f"--chdir={workdir}",
               f"--output={workdir}/job-%j.out", f"--export=ALL,HPCPOT_PYTHON={PYTHON}{export}", *opts]  # fmt: skip
        if wait:
            cmd.append("--wait")
        return self.run(*cmd, str(script), *args, timeout=300, check=False)

    def job_field(self, jobid: str, field: str) -> str | None:
        p = self.run("scontrol", "show", "job", jobid, check=False)
        m = re.search(rf"\b{field}=(\S*)", p.stdout)
        return m.group(1) if m else None

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            f = self.dir / "log" / name
            if f.exists():
                out.append(f"--- {f} (tail)\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        _skip("needs root (installs and starts slurmctld/slurmd/munged)")
    if shutil.which("apt-get") is None:
        _skip("needs apt-get (Debian/Ubuntu) to install SLURM")
    if not TRAJ.is_file():
        _skip(f"training data not found: {TRAJ}")
    p = subprocess.run(["bash", str(CLUSTER_SH), "install"], capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        _skip(f"installing SLURM failed: {(p.stdout + p.stderr)[-1500:]}")
    test_dir = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_TEST_DIR=str(test_dir))
    started = False
    shm_before = set(Path("/dev/shm").glob("mpich_shm_*"))
    try:
        p = subprocess.run(["bash", str(CLUSTER_SH), "start"], env=env, capture_output=True, text=True, timeout=120)
        print(p.stderr, end="", flush=True)
        assert p.returncode == 0, f"cluster.sh start failed:\n{p.stdout}\n{p.stderr}"
        started = True
        yield Slurm(test_dir)
    finally:
        pids = {f.stem: (f.read_text().strip()) for f in (test_dir / "run").glob("*.pid") if "daemon" not in f.name}
        p = subprocess.run(["bash", str(CLUSTER_SH), "stop"], env=env, capture_output=True, text=True, timeout=120)
        print(p.stderr, end="", flush=True)
        # MPICH shared-memory segments the test jobs left behind (their ranks are killed by
        # design here): a later run's job that attached to a stale one died in MPI_Init
        for f in set(Path("/dev/shm").glob("mpich_shm_*")) - shm_before:
            f.unlink(missing_ok=True)
        left = [f"{name} ({pid})" for name, pid in pids.items() if pid and Path(f"/proc/{pid}").exists()]
        assert not left, f"daemons still running after cluster.sh stop: {left}"
        if started:
            assert p.returncode == 0, f"cluster.sh stop failed:\n{p.stdout}\n{p.stderr}"


def _check_model(run: Path) -> None:
    from ase.io import read

    import hpcpot

    calc = hpcpot.Calculator(str(run / "model.json"))
    atoms = read(str(TRAJ), index=0)
    atoms.calc = calc
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    assert np.isfinite(e), e
    assert f.shape == (len(atoms), 3) and np.all(np.isfinite(f))


def _state(run: Path) -> str | None:
    try:
        return json.loads((run / "status.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return None


def _log_lines(run: Path) -> list[dict]:
    try:
        text = (run / "log.jsonl").read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip().endswith("}")]


def _job_output(workdir: Path) -> str:
    return "\n".join(f.read_text(errors="replace") for f in sorted(workdir.glob("job-*.out")))


@pytest.mark.parametrize("script", ["train_debug.sbatch", "train_multinode.sbatch"])
def test_jobscript_trains(slurm: Slurm, tmp_path: Path, script: str):
    cfg = _config(tmp_path / "cfg.toml", max_iterations=30)
    if script == "train_debug.sbatch":  # config through the environment, mpiexec -n $SLURM_NTASKS
        p = slurm.sbatch(JOBSCRIPTS / script, tmp_path, "-n", "2", wait=True, export=f",HPCPOT_CONFIG={cfg}")
    else:  # config as the script's argument, srun --mpi=pmi2
        p = slurm.sbatch(JOBSCRIPTS / script, tmp_path, "-N", "1", "-n", "2", "--ntasks-per-node=2",
                         args=(str(cfg),), wait=True)  # fmt: skip
    out = _job_output(tmp_path)
    print(f"--- {script}: sbatch rc {p.returncode}\n{p.stderr}{out[-1500:]}", flush=True)
    assert p.returncode == 0, (
        f"sbatch --wait {script}: rc {p.returncode}\n{p.stdout}\n{p.stderr}\n{out}\n{slurm.logs()}"
    )
    run = tmp_path / "run"
    assert (run / "status.json").is_file(), out
    assert _state(run) in ("converged", "not_converged"), (run / "status.json").read_text()
    assert "2 rank(s)" in out, f"not a real 2-rank MPI run:\n{out}"  # not two serial singletons
    assert [r["iteration"] for r in _log_lines(run)] == list(range(1, 31))
    assert sorted((run / "checkpoints").glob("checkpoint-*.npz"))
    _check_model(run)


def test_usr1_checkpoint_requeue_and_restart(slurm: Slurm, tmp_path: Path):
    from hpcpot.training import checkpoint as ckpt

    cfg = _config(tmp_path / "cfg.toml", max_iterations=100000)
    run = tmp_path / "run"
    p = slurm.sbatch(JOBSCRIPTS / "train_multinode.sbatch", tmp_path, "-N", "1", "-n", "2", "--ntasks-per-node=2",
                     args=(str(cfg),))  # fmt: skip
    assert p.returncode == 0, p.stderr
    jobid = p.stdout.strip().split(";")[0]
    try:
        # wait until training is under way
        t0 = time.monotonic()
        while len(_log_lines(run)) < 5:
            state = slurm.job_field(jobid, "JobState")
            assert state in ("PENDING", "CONFIGURING", "RUNNING"), f"job {jobid} is {state}:\n{_job_output(tmp_path)}"
            assert time.monotonic() - t0 < 120, f"no training progress:\n{_job_output(tmp_path)}"
            time.sleep(0.2)
        n_before = len(_log_lines(run))
        # the requeued run reads the config when it starts, which SLURM may do at once: it
        # stops a good way past the checkpoint the signal below will produce
        stop_at = n_before + 1500  # iterations take ~5 ms here
        _config(cfg, max_iterations=stop_at)
        # what --signal=B:USR1@300 does before the time limit: SIGUSR1 to the batch shell only
        slurm.run("scancel", "--signal=USR1", "--batch", jobid)

        t0 = time.monotonic()
        while _state(run) != "interrupted":
            assert time.monotonic() - t0 < 60, f"no 'interrupted' status:\n{_job_output(tmp_path)}"
            time.sleep(0.2)
        ck = ckpt.latest(str(run / "checkpoints"), log=print)
        assert ck is not None and ck.stage == "optimize"
        lines = _log_lines(run)
        assert ck.iteration >= n_before and ck.iteration == lines[-1]["iteration"], (ck.iteration, n_before)

        # the script requeues the job: it goes back to PENDING with Restarts=1
        t0 = time.monotonic()
        while slurm.job_field(jobid, "Restarts") != "1":
            assert time.monotonic() - t0 < 60, f"job {jobid} was not requeued:\n{_job_output(tmp_path)}"
            time.sleep(0.2)
        out = _job_output(tmp_path)
        print(f"--- signal test, job {jobid}:\n" + "\n".join(line for line in out.splitlines() if not line.startswith(("iter ", "  ["))), flush=True)  # fmt: skip
        assert "SIGUSR1" in out and "requeueing job" in out, out
        bad = [ln for ln in out.splitlines() if re.search("error|traceback", ln, re.I) and "JOB REQUEUE" not in ln]
        assert not bad, out
        state = slurm.job_field(jobid, "JobState")
        assert state in ("PENDING", "REQUEUED", "COMPLETING"), slurm.run("scontrol", "show", "job", jobid).stdout

        # the requeued job resumes by itself (the script adds --restart) once SLURM lets it
        # start again: after the credential lifetime, 10 s on the test cluster (120 s by default;
        # lifting that hold earlier makes slurmd refuse the job: "Job credential revoked")
        assert ck.iteration < stop_at, (ck.iteration, stop_at)
        t0 = time.monotonic()
        while slurm.run("squeue", "-h", "-j", jobid, check=False).stdout.strip():
            assert time.monotonic() - t0 < 240, f"requeued job did not finish:\n{_job_output(tmp_path)}"
            time.sleep(0.5)
        final = slurm.run("scontrol", "show", "job", jobid, check=False).stdout
        assert slurm.job_field(jobid, "JobState") in (None, "COMPLETED"), f"{final}\n{_job_output(tmp_path)}\n{slurm.logs()}"
    finally:
        slurm.run("scancel", jobid, check=False)
        t0 = time.monotonic()
        while slurm.run("squeue", "-h", "-j", jobid, check=False).stdout.strip() and time.monotonic() - t0 < 30:
            time.sleep(0.2)
    out = _job_output(tmp_path)
    print(f"--- requeued run, job {jobid}:\n" + "\n".join(line for line in out.splitlines()[-12:]), flush=True)
    assert f"resuming stage 'optimize' at iteration {ck.iteration}" in out, out
    its = [r["iteration"] for r in _log_lines(run)]
    assert its == list(range(1, stop_at + 1)), its  # every iteration once, across the requeue
    assert _state(run) == "not_converged"
    _check_model(run)
