"""Shared fixtures: reference data from ../shared/data (tests skip when it is missing)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# one BLAS thread, as the command-line tools: on the shared 2-core machines a threaded 3x3
# solve spins, and ASE's cell filter does many (5x slower measured)
import hpcpot._process  # noqa: F401
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
REF = DATA / "o_pt111_emt_3000.traj"
BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data {path} not found")
    return path


@pytest.fixture(scope="session")
def ref_structures():
    """The first 40 reference images (Structures, with forces)."""
    from hpcpot.training.data import read_structures

    st, _ = read_structures([str(need(REF))], need_forces=True, index=":40")
    return st


def small_problem(st, alpha=0.04, hidden=(7, 5), activation="tanh", dtype=np.float64, precision=np.float64):
    """(ShardProblem, params, layout) on Structures st with scaling from st itself
    (``dtype``: of the stored derivatives; ``precision``: of the network passes)."""
    from hpcpot.potential.fingerprints import compute_fingerprints
    from hpcpot.potential.network import Layout, initial_parameters
    from hpcpot.training.config import FingerprintConfig
    from hpcpot.training.descriptors import symmetry_functions
    from hpcpot.training.loss import ShardProblem

    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    G, b = compute_fingerprints(st, sf, with_derivs=alpha > 0, dtype=dtype)
    ne = len(st.elements)
    gmin = np.stack([G[st.species == e].min(0) for e in range(ne)])
    gmax = np.stack([G[st.species == e].max(0) for e in range(ne)])
    lay = Layout(st.elements, tuple(int(n) for n in sf.n_functions), hidden, activation)
    p = initial_parameters(lay, np.full(ne, 0.5), np.full(ne, st.energy.mean() / st.n_atoms.mean()), 3)
    p += np.random.default_rng(0).normal(0, 0.1, p.size)
    return ShardProblem(st, G, b, lay, gmin, gmax, sf.block_tables(), alpha, dtype=precision), p, lay


def fresh_python(code: str) -> list[str]:
    """What ``code`` prints in a fresh interpreter (nothing this test process has imported
    counts there), split into words; a failure raises with its output."""
    import subprocess

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def read_in_fresh_python(statements: str) -> list[str]:
    """Run ``statements``, which leave what they read in ``st`` (a Structures), in a fresh
    interpreter: [its image count, whether ase.io was imported, whether scipy was]."""
    code = "import sys\nimport numpy as np\n" + statements + "\nprint(st.n_images, 'ase.io' in sys.modules, 'scipy' in sys.modules)\n"
    return fresh_python(code)


def run_mpi(n: int, args: list[str], timeout: float = 240, env: dict | None = None):
    """Run `mpiexec -n n python args...`; returns CompletedProcess (text)."""
    import subprocess

    if not MPIEXEC.exists():
        pytest.skip("mpiexec not found beside the python executable (pip install mpich)")
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [str(MPIEXEC), "-n", str(n), sys.executable, *args],
        capture_output=True, text=True, timeout=timeout, env=e, cwd=str(ROOT),
    )  # fmt: skip


def pids_with(text: str) -> dict[int, dict[str, str]]:
    """Processes whose command line contains ``text``, with their environment."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if text in cmd and "python" in cmd and "mpiexec" not in cmd:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                out[int(pid)] = dict(e.decode(errors="replace").split("=", 1) for e in env if b"=" in e)
        except OSError:
            continue
    return out


def wait_until_gone(text: str, limit: float = 120) -> None:
    """Block until no python process with ``text`` in its command line is left (ranks of a
    killed job may outlive their launcher briefly); the limit is a hang detector."""
    t = time.time()
    while pids_with(text):
        assert time.time() - t < limit, f"processes of {text} still alive after {limit} s"
        time.sleep(0.05)


def wait_for_lines(p, path: Path, n: int, what: str = "log lines") -> None:
    """Block until ``path`` has ``n`` lines (the run's own progress), or fail if the run ends.

    The bound is a hang detector only; nothing here assumes how fast the machine is."""
    t = time.time()
    while not (path.exists() and len(path.read_text().splitlines()) >= n):
        if p.poll() is not None:
            pytest.fail(f"the run ended before writing {n} {what}: {p.communicate()}")
        assert time.time() - t < 600, f"no progress to {n} {what} in 600 s"
        time.sleep(0.01)


@pytest.fixture(scope="session")
def fitted_model():
    """(Model, Structures): a small model fitted in-process (L-BFGS-B, ~1 s) to every 15th
    reference image, with the fingerprint ranges of those images: smooth and physical enough
    for MD, cell relaxation and extrapolation tests."""
    from scipy.optimize import minimize

    from hpcpot.potential.fingerprints import compute_fingerprints
    from hpcpot.potential.modelfile import Model
    from hpcpot.training.config import FingerprintConfig
    from hpcpot.training.data import read_structures
    from hpcpot.training.descriptors import symmetry_functions

    st, _ = read_structures([str(need(REF))], need_forces=True, index="::15")
    prob, p, lay = small_problem(st, alpha=0.04, hidden=(10, 10))
    res = minimize(lambda x: (lambda b: (b[0], b[5:].copy()))(prob.evaluate(x)), p, jac=True,
                   method="L-BFGS-B", options={"maxiter": 400})  # fmt: skip
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    G, _ = compute_fingerprints(st, sf, with_derivs=False)
    ne = len(st.elements)
    gmin = np.stack([G[st.species == e].min(0) for e in range(ne)])
    gmax = np.stack([G[st.species == e].max(0) for e in range(ne)])
    return Model(sf, lay, res.x, gmin, gmax), st


def small_config(d: Path, iters: int = 10**6, every: int = 1, extra: str = "", hidden: str = "[6]",
                 e_rmse: float = 1e-12, f_rmse: float = 1e-12, images: int = 24, validation: float = 0.0,
                 min_interval: float = 0.0) -> Path:  # fmt: skip
    """d/c.toml: the first ``images`` reference images (24), ``validation`` of them held out
    (none), checkpoints every ``every`` iterations however young the last one (``min_interval``
    seconds; keep 3), criteria that a short run never meets; ``extra`` is appended (more
    tables)."""
    cfg = d / "c.toml"
    cfg.write_text(f"""
[data]
train = ["{need(REF)}"]
index = ":{images}"
validation_fraction = {validation}
[model]
hidden = {hidden}
[optimizer]
max_iterations = {iters}
[convergence]
energy_rmse = {e_rmse}
force_rmse = {f_rmse}
[checkpoint]
every = {every}
min_interval = {min_interval}
keep = 3
[output]
dir = "out"
{extra}
""")
    return cfg
