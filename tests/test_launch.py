"""Launches that would run N serial copies of one training are refused, with the reason."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

CODE = "from hpcpot.parallel import world; c = world(); print('size', c.size)"
LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "PMI_FD", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "HYDRA_CONTROL_FD",
               "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "HPCPOT_SERIAL")  # fmt: skip


def _run(env_extra: dict, block_mpi4py: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(env_extra)
    code = ("import sys; sys.modules['mpi4py'] = None\n" if block_mpi4py else "") + CODE
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_plain_run_is_serial_without_mpi4py():
    r = _run({}, block_mpi4py=True)
    assert r.returncode == 0 and "size 1" in r.stdout, r.stderr


@pytest.mark.parametrize("procid, prints", [("0", True), ("1", False)])
def test_srun_without_mpi_plugin_is_refused(procid, prints):
    r = _run({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": procid})
    assert r.returncode == 2
    assert ("--mpi=pmi2" in r.stderr) == prints, r.stderr  # one message, not one per task


def test_ranks_without_mpi4py_are_refused():
    r = _run({"PMI_SIZE": "4", "PMI_RANK": "0"}, block_mpi4py=True)
    assert r.returncode == 2 and "mpi4py cannot be imported" in r.stderr, r.stderr


def test_launcher_of_another_mpi_is_refused():
    lib = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    if "MPICH" not in lib.stdout:
        pytest.skip("needs mpi4py built with MPICH (PyPI's mpich wheel)")
    # Open MPI's mpirun announcing 3 ranks to an mpi4py built with MPICH: each process is a singleton
    r = _run({"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "0"})
    assert r.returncode == 2 and "sees a world of 1" in r.stderr, r.stderr


class _TwoRanks:
    """Two ranks seen from rank 0: the other rank's identity, and whether the other rank's
    copy of a reduction's result has other bits (its hash is one more)."""

    size, rank = 2, 0

    def __init__(self, other_id=None, other_bits=False):
        self.other_id, self.other_bits = other_id, other_bits

    def allgather(self, obj):
        return [obj, self.other_id or obj]

    def allreduce_sum(self, arr, overlap=None):
        if arr.size == 4 and self.other_bits:  # the agreement check: [h1, h1², h2, h2²]
            h1, h2 = arr[0] + 1, arr[2]
            arr += np.array([h1, h1 * h1, h2, h2 * h2])
        else:
            arr *= 2
        return arr


def test_replicated_optimiser_only_where_every_rank_computes_alike():
    """The optimiser runs as a copy on every rank only when the ranks share CPU model and
    builds and an Allreduce gives every rank the same bits; otherwise the reason is given."""
    from hpcpot.parallel import SerialComm, why_not_replicated

    assert why_not_replicated(SerialComm(), 10) is None
    assert why_not_replicated(_TwoRanks(), 3011) is None
    assert "CPU model" in why_not_replicated(_TwoRanks(other_id=("another CPU", "", "", "")), 3011)
    assert "same bits" in why_not_replicated(_TwoRanks(other_bits=True), 3011)
