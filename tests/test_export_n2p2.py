"""python -m hpcpot.export MODEL --format n2p2 OUTDIR: a small n2p2 reader written here, from
n2p2's file formats and conventions alone (input.nn, scaling.data, weights.NNN.data), gives
hpcpot's energies (1e-8 eV) and forces (1e-7 eV/Å; central differences of its energy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_lammps import CUTOFF, ELEMENTS, lammps_frame, make_model, structures

# ----------------------------------------------------------------------------- the reader


class N2p2Reader:
    """Energy of a structure from n2p2 files: COS cutoff (type 1, alpha 0), radial type 2 and
    narrow angular type 3 functions, min-max or sigma scaling, per-element feed-forward networks."""

    def __init__(self, folder: Path):
        from ase.data import atomic_numbers

        self.fns: dict[str, list[tuple]] = {}
        self.sigma_scaling = False
        for raw in (folder / "input.nn").read_text().splitlines():
            w = raw.split("#")[0].split()
            if not w:
                continue
            k = w[0]
            if k == "elements":
                els = w[1:]
            elif k == "cutoff_type":
                assert int(w[1]) == 1 and (len(w) < 3 or float(w[2]) == 0.0)
            elif k == "scale_symmetry_functions_sigma":
                self.sigma_scaling = True
            elif k == "scale_min_short":
                self.smin = float(w[1])
            elif k == "scale_max_short":
                self.smax = float(w[1])
            elif k == "global_activation_short":
                self.acts = w[1:]
            elif k == "global_nodes_short":
                self.nodes = [int(x) for x in w[1:]]
            elif k == "symfunction_short":
                self.fns.setdefault(w[1], []).append(tuple(w[2:]))
        # n2p2's element order: atomic number
        self.elements = sorted(els, key=lambda s: atomic_numbers[s])
        eidx = {e: i for i, e in enumerate(self.elements)}
        self.sf: dict[str, list[tuple]] = {}
        for el in self.elements:
            parsed = []
            for f in self.fns[el]:
                if f[0] == "2":  # e1 eta rs rc
                    parsed.append((2, float(f[4]), float(f[2]), float(f[3]), 0.0, 0.0, eidx[f[1]], 0))
                else:  # e1 e2 eta lambda zeta rc [rs]
                    rs = float(f[7]) if len(f) > 7 else 0.0
                    a, b = sorted((eidx[f[1]], eidx[f[2]]))
                    parsed.append((3, float(f[6]), float(f[3]), rs, float(f[5]), float(f[4]), a, b))
            # n2p2 sorts: type, rc, eta, rs, zeta, lambda, e1, e2
            self.sf[el] = sorted(parsed)
        lines = [ln.split() for ln in (folder / "scaling.data").read_text().splitlines() if not ln.startswith("#")]
        self.scal = {}
        for ei, el in enumerate(self.elements, start=1):
            rows = [r for r in lines if int(r[0]) == ei]
            self.scal[el] = tuple(np.array([float(r[c]) for r in rows]) for c in (2, 3, 4, 5))
        self.nets = {}
        for el in self.elements:
            vals = [
                float(ln.split()[0])
                for ln in (folder / f"weights.{atomic_numbers[el]:03d}.data").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")
            ]
            sizes = [len(self.sf[el]), *self.nodes, 1]
            layers, k = [], 0
            for n_in, n_out in zip(sizes[:-1], sizes[1:]):
                W = np.array(vals[k : k + n_in * n_out]).reshape(n_in, n_out).T  # previous neuron outer
                k += n_in * n_out
                layers.append((W, np.array(vals[k : k + n_out])))
                k += n_out
            assert k == len(vals)
            self.nets[el] = layers

    @staticmethod
    def _fc(r, rc):
        return np.where(r < rc, 0.5 * (np.cos(np.pi * r / rc) + 1.0), 0.0)

    def energy(self, atoms) -> float:
        from ase.neighborlist import neighbor_list

        rc = max(f[1] for fs in self.sf.values() for f in fs)
        i_, j_, D_ = neighbor_list("ijD", atoms, rc)
        sym = atoms.get_chemical_symbols()
        eidx = {e: k for k, e in enumerate(self.elements)}
        spec = np.array([eidx[s] for s in sym])
        E = 0.0
        for i in range(len(atoms)):
            m = i_ == i
            D, ej = D_[m], spec[j_[m]]
            r = np.linalg.norm(D, axis=1)
            el = sym[i]
            G = []
            q, s = np.triu_indices(len(r), 1)
            Djk = D[s] - D[q]
            rjk = np.linalg.norm(Djk, axis=1)
            cos = np.einsum("ij,ij->i", D[q], D[s]) / (r[q] * r[s])
            for f in self.sf[el]:
                if f[0] == 2:
                    _, frc, eta, rs, _, _, e1, _ = f
                    sel = ej == e1
                    G.append(np.sum(np.exp(-eta * (r[sel] - rs) ** 2) * self._fc(r[sel], frc)))
                else:
                    _, frc, eta, rs, zeta, lam, e1, e2 = f
                    a, b = ej[q], ej[s]
                    sel = ((a == e1) & (b == e2)) | ((a == e2) & (b == e1))
                    base = 1.0 + lam * cos[sel]
                    t = np.where(base > 0, np.abs(base) ** zeta, 0.0)
                    ex = np.exp(-eta * ((r[q][sel] - rs) ** 2 + (r[s][sel] - rs) ** 2 + (rjk[sel] - rs) ** 2))
                    fc = self._fc(r[q][sel], frc) * self._fc(r[s][sel], frc) * self._fc(rjk[sel], frc)
                    G.append(2.0 ** (1.0 - zeta) * np.sum(t * ex * fc))
            gmin, gmax, gmean, sigma = self.scal[el]
            if self.sigma_scaling:  # n2p2's ST_SCALESIGMA
                x = self.smin + (self.smax - self.smin) * (np.array(G) - gmean) / sigma
            else:
                x = self.smin + (self.smax - self.smin) * (np.array(G) - gmin) / (gmax - gmin)
            for (W, b), act in zip(self.nets[el], self.acts):
                z = W @ x + b
                x = {"t": np.tanh, "s": lambda v: 1.0 / (1.0 + np.exp(-v)), "l": lambda v: v}[act](z)
            E += float(x[0])
        return E

    def forces(self, atoms, h: float = 1e-5) -> np.ndarray:
        F = np.zeros((len(atoms), 3))
        for m in range(len(atoms)):
            for k in range(3):
                e = []
                for sgn in (1, -1):
                    a = atoms.copy()
                    a.positions[m, k] += sgn * h
                    e.append(self.energy(a))
                F[m, k] = -(e[0] - e[1]) / (2 * h)
        return F


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def frames():
    return {n: lammps_frame(a) for n, (a, _) in structures().items()}


@pytest.mark.parametrize("activation,scaling", [("tanh", "minmax"), ("sigmoid", "minmax"), ("linear", "minmax"), ("tanh", "standard")])
def test_export_reproduces_hpcpot(tmp_path, frames, activation, scaling):
    from hpcpot import Calculator

    model = tmp_path / "model.json"
    make_model(model, activation, list(frames.values()), widen=0.25, scaling=scaling)
    out = tmp_path / "n2p2"
    res = subprocess.run(
        [sys.executable, "-m", "hpcpot.export", str(model), "--format", "n2p2", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["input.nn", "scaling.data", "weights.008.data", "weights.078.data"]
    reader = N2p2Reader(out)
    for name in ("molecule", "small_cell", "slab"):
        atoms = frames[name]
        a = atoms.copy()
        a.calc = Calculator(str(model))
        assert abs(reader.energy(atoms) - a.get_potential_energy()) <= 1e-8, name
        if name != "slab" or activation == "tanh":  # forces by differences: keep the test short
            assert np.abs(reader.forces(atoms) - a.get_forces()).max() <= 1e-7, name


@pytest.mark.filterwarnings("ignore::hpcpot.potential.calculator.ExtrapolationWarning")  # a zero range, by design
def test_zero_range_function_contributes_nothing(tmp_path, frames):
    """A function with min == max (hpcpot: scaled value 0) exports as zero weights."""
    from hpcpot import Calculator
    from hpcpot.export import export_n2p2
    from hpcpot.potential.modelfile import Model

    path = tmp_path / "model.json"
    make_model(path, "tanh", list(frames.values()), widen=0.25)
    m = Model.load(str(path))
    m.gmax[0, 3] = m.gmin[0, 3]  # O's function 3: zero range
    export_n2p2(m, tmp_path / "n2p2")
    atoms = frames["molecule"]
    a = atoms.copy()
    a.calc = Calculator(m)
    assert abs(N2p2Reader(tmp_path / "n2p2").energy(atoms) - a.get_potential_energy()) <= 1e-8
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        export_n2p2(m, tmp_path / "n2p2")


def test_refuses_what_n2p2_cannot_express(tmp_path, frames):
    from hpcpot.export import ExportError, export_n2p2
    from hpcpot.potential.modelfile import Model
    from hpcpot.potential.network import Layout

    path = tmp_path / "model.json"
    make_model(path, "tanh", list(frames.values()))
    m = Model.load(str(path))
    m.layout = Layout(m.layout.elements, m.layout.n_inputs, m.layout.hidden, "softsign")
    with pytest.raises(ExportError, match="softsign"):
        export_n2p2(m, tmp_path / "a")
    m = Model.load(str(path))
    m.sf.g4[0, 0, 1] = 0.0  # zeta 0
    with pytest.raises(ExportError, match="zeta"):
        export_n2p2(m, tmp_path / "b")
    assert CUTOFF > 0 and ELEMENTS == ["O", "Pt"]
