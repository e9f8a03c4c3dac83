"""Stress: the analytic virial against finite differences of the energy under strain, on the
cells where a folded derivative would go wrong; cell relaxation; one pass per structure."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atom
from ase.build import bulk
from conftest import REF, need

VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


def fd_stress(atoms, calc_factory, d: float = 1e-5) -> np.ndarray:
    """ASE's definition, stress = (1/V) ∂E/∂ε (Voigt), by central differences of symmetric
    strains cell -> cell (1 + ε), atoms scaled with the cell (as ase's numerical stress)."""
    cell = atoms.cell.array.copy()
    out = np.zeros(6)
    for v, (i, j) in enumerate(VOIGT):
        e = []
        for s in (1, -1):
            a = atoms.copy()
            a.calc = calc_factory()
            x = np.eye(3)
            x[i, j] += s * d
            x[j, i] = x[i, j]
            a.set_cell(cell @ x, scale_atoms=True)
            e.append(a.get_potential_energy())
        out[v] = (e[0] - e[1]) / (2 * d * atoms.get_volume()) / (1 if i == j else 2)
    return out


def _slab():
    import ase.io

    a = ase.io.read(need(REF), 5)
    a.set_constraint()
    assert list(a.pbc) == [True, True, False]
    return a


def _triclinic():
    """8 atoms, Pt and O, in a sheared, rattled cell (periodic in all directions)."""
    a = bulk("Pt", "fcc", a=3.95, cubic=True) * (2, 1, 1)
    a[1].symbol = "O"
    a.set_cell(a.cell.array @ np.array([[1, 0.1, 0.05], [0.02, 1.03, 0.1], [0.07, 0.0, 0.97]]), scale_atoms=True)
    a.rattle(0.05, seed=1)
    return a


def _small_cell():
    """2 atoms in a cell far smaller than the 6.5 Å cutoff: every atom sees many of its own
    images, whose displacement vectors the folded derivatives lose."""
    a = bulk("Pt", "fcc", a=3.95)
    a += Atom("O", (1.0, 1.1, 0.9))
    a.set_cell(a.cell.array @ np.array([[1, 0.05, 0], [0.02, 1.0, 0.03], [0.0, 0.04, 1.05]]) * 1.15, scale_atoms=True)
    return a


@pytest.mark.parametrize("make", [_triclinic, _slab, _small_cell], ids=["triclinic", "slab", "small-cell"])
def test_stress_is_strain_derivative_of_energy(fitted_model, make):
    from hpcpot import Calculator

    model, _ = fitted_model
    atoms = make()
    atoms.calc = Calculator(model, extrapolation="ignore")
    s = atoms.get_stress()
    fd = fd_stress(atoms, lambda: Calculator(model, extrapolation="ignore"))
    assert np.abs(s).max() > 1e-4  # eV/Å³: a real test, not 0 = 0
    assert np.abs(s - fd).max() <= 1e-6 * np.abs(s).max(), (s, fd)


def test_no_stress_without_a_periodic_cell(fitted_model):
    from ase.calculators.calculator import PropertyNotImplementedError

    from hpcpot import Calculator

    a = _slab()
    a.pbc = False
    a.calc = Calculator(fitted_model[0], extrapolation="ignore")
    with pytest.raises(PropertyNotImplementedError):
        a.get_stress()


def test_one_pass_per_structure(fitted_model, monkeypatch):
    """Energy, forces and stress of one structure cost one fingerprint pass (after the first
    request for stress switches it on)."""
    import hpcpot.potential.calculator as calc_mod
    from hpcpot import Calculator

    calls = []
    real = calc_mod.compute_fingerprints
    monkeypatch.setattr(calc_mod, "compute_fingerprints", lambda *a, **k: calls.append(k) or real(*a, **k))
    atoms = _slab()
    atoms.calc = Calculator(fitted_model[0])
    atoms.get_stress()
    atoms.get_potential_energy()
    atoms.get_forces()
    assert len(calls) == 1 and calls[0]["with_virial"]
    atoms.positions[3, 0] += 0.01
    atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_stress()
    assert len(calls) == 2


def test_cell_relaxation(fitted_model):
    """In-plane cell and positions of the slab relax with FrechetCellFilter + BFGS: the
    forces and in-plane stresses go to zero and the energy goes down."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    from hpcpot import Calculator

    atoms = _slab()
    atoms.calc = Calculator(fitted_model[0], extrapolation="ignore")
    atoms.set_cell(atoms.cell.array * [[1.01], [1.01], [1]], scale_atoms=True)  # strain it in-plane
    e0 = atoms.get_potential_energy()
    s0 = atoms.get_stress()
    filt = FrechetCellFilter(atoms, mask=[True, True, False, False, False, True])
    assert BFGS(filt, logfile=None).run(fmax=0.005, steps=300)
    s = atoms.get_stress()
    assert np.abs(s[[0, 1, 5]]).max() < 0.1 * np.abs(s0[[0, 1, 5]]).max()
    assert np.abs(atoms.get_forces()).max() < 0.005
    assert atoms.get_potential_energy() < e0


def test_evaluate_reports_stress_errors(fitted_model, tmp_path):
    """Reference data with stress (here EMT's, written to extxyz) gets stress RMSE/MAE in
    GPa, equal to a direct computation with the calculator; images without stress are skipped."""
    import ase.io
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.units import GPa

    from hpcpot import Calculator
    from hpcpot.evaluate import evaluate
    from hpcpot.training.data import read_structures

    images = []
    for k, make in enumerate([_triclinic, _slab, _small_cell]):
        a = make()
        a.calc = EMT()
        res = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
        if k < 2:
            res["stress"] = a.get_stress()  # the small cell goes in without a reference stress
        a.calc = SinglePointCalculator(a, **res)
        a.info.pop("adsorbate_info", None)  # a dict extxyz cannot store
        images.append(a)
    path = tmp_path / "with-stress.extxyz"
    ase.io.write(path, images)
    st, _ = read_structures([str(path)], need_forces=True, elements=fitted_model[0].layout.elements)
    assert np.isfinite(st.stress[:2]).all() and np.isnan(st.stress[2]).all()
    rep = evaluate(fitted_model[0], st)[0]
    d = []
    for a in ase.io.read(path, ":2"):  # as written: extxyz rounds the positions
        ref = a.get_stress()
        a.calc = Calculator(fitted_model[0], extrapolation="ignore")
        d.append((a.get_stress() - ref) / GPa)
    d = np.concatenate(d)
    assert rep.stress_images == 2
    assert rep.stress_rmse_gpa == pytest.approx(np.sqrt(np.mean(d**2)), rel=1e-9)
    assert rep.stress_mae_gpa == pytest.approx(np.mean(np.abs(d)), rel=1e-9)
