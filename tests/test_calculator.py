"""The ASE calculator: forces are -dE/dr, model files round-trip, unknown elements fail."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from conftest import REF, need, small_problem

# the fixture's scaling range [0, 5] is artificial: these structures lie outside it by design
pytestmark = pytest.mark.filterwarnings("ignore::hpcpot.potential.calculator.ExtrapolationWarning")


@pytest.fixture(scope="module")
def model(ref_structures):
    from hpcpot.potential.modelfile import Model
    from hpcpot.training.config import FingerprintConfig
    from hpcpot.training.descriptors import symmetry_functions

    prob, p, lay = small_problem(ref_structures.subset(np.arange(8)))
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(lay.elements))
    gmin = np.zeros((2, 20))
    gmax = np.ones((2, 20)) * 5
    return Model(sf, lay, p, gmin, gmax)


def test_forces_are_minus_energy_gradient(model):
    import ase.io

    from hpcpot import Calculator

    atoms = ase.io.read(need(REF), 7)
    atoms.set_constraint()  # the file's FixAtoms would zero the fixed atoms' forces
    atoms.calc = Calculator(model)
    F = atoms.get_forces()
    h = 1e-5
    for m, x in [(0, 0), (5, 2), (12, 1), (13, 2), (9, 0)]:
        a = atoms.copy()
        a.calc = Calculator(model)
        a.positions[m, x] += h
        ep = a.get_potential_energy()
        a.positions[m, x] -= 2 * h
        em = a.get_potential_energy()
        assert -(ep - em) / (2 * h) == pytest.approx(F[m, x], rel=1e-6, abs=1e-8)


def test_model_file_round_trip_and_no_overwrite(model, tmp_path):
    import ase.io

    from hpcpot import Calculator
    from hpcpot.potential.modelfile import Model

    path = tmp_path / "model.json"
    model.save(str(path))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        model.save(str(path))
    atoms = ase.io.read(need(REF), 3)
    e1 = Calculator(model).get_potential_energy(atoms)
    e2 = Calculator(str(path)).get_potential_energy(atoms)
    assert e1 == e2
    loaded = Model.load(str(path))
    assert np.array_equal(loaded.params, model.params)


def test_unknown_element_is_a_clear_error(model):
    from hpcpot import Calculator

    a = Atoms("PtH", positions=[[0, 0, 0], [1.5, 0, 0]])
    a.calc = Calculator(model)
    with pytest.raises(ValueError, match="H"):
        a.get_potential_energy()


def test_molecule_and_bulk_work(model):
    from ase.build import bulk

    from hpcpot import Calculator

    mol = Atoms("PtO", positions=[[0, 0, 0], [1.9, 0, 0]])
    mol.calc = Calculator(model)
    assert np.isfinite(mol.get_potential_energy())
    assert np.allclose(mol.get_forces().sum(axis=0), 0, atol=1e-10)  # Newton's third law
    b = bulk("Pt", "fcc", a=3.92)  # one atom, cell far smaller than the cutoff
    b.calc = Calculator(model)
    assert np.allclose(b.get_forces(), 0, atol=1e-10)  # symmetry: no net force
