"""Extrapolation warnings: silent inside the training range, loud (or an error) outside it,
rate-limited in MD, and counted in results["extrapolated_atoms"]."""

from __future__ import annotations

import warnings

import pytest
from conftest import REF, need


def _training_images(n=5):
    import ase.io

    images = ase.io.read(need(REF), "::15")[:n]  # the images the fitted model saw
    for a in images:
        a.set_constraint()
    return images


def test_silent_on_training_structures(fitted_model):
    from hpcpot import Calculator

    calc = Calculator(fitted_model[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a in _training_images():
            a.calc = calc
            a.get_forces()
            assert calc.results["extrapolated_atoms"] == 0


def test_stretched_structure_warns_with_count_and_functions(fitted_model):
    from hpcpot import Calculator
    from hpcpot.potential.calculator import ExtrapolationWarning

    a = _training_images(1)[0]
    a.set_cell(a.cell.array * 1.15, scale_atoms=True)
    a.calc = Calculator(fitted_model[0])
    with pytest.warns(ExtrapolationWarning, match=r"of 14 atoms .* outside the training range") as rec:
        a.get_potential_energy()
    n = a.calc.results["extrapolated_atoms"]
    assert 0 < n <= 14
    msg = str(rec[0].message)
    assert msg.startswith(f"{n} of 14 atoms") and ("G2[" in msg or "G4[" in msg)


def test_error_mode_raises_and_ignore_mode_counts(fitted_model):
    from hpcpot import Calculator
    from hpcpot.potential.calculator import ExtrapolationError

    a = _training_images(1)[0]
    a.set_cell(a.cell.array * 0.9, scale_atoms=True)
    a.calc = Calculator(fitted_model[0], extrapolation="error")
    with pytest.raises(ExtrapolationError, match="outside the training range"):
        a.get_potential_energy()
    a.calc = Calculator(fitted_model[0], extrapolation="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a.get_potential_energy()
    assert a.calc.results["extrapolated_atoms"] > 0
    with pytest.raises(ValueError, match="extrapolation must be"):
        Calculator(fitted_model[0], extrapolation="loud")


def test_warnings_are_rate_limited(fitted_model):
    """MD calls the calculator thousands of times: one warning per warn_interval seconds,
    and the next one says how many extrapolating calls were not reported."""
    from hpcpot import Calculator
    from hpcpot.potential.calculator import ExtrapolationWarning

    a = _training_images(1)[0]
    a.set_cell(a.cell.array * 1.15, scale_atoms=True)
    a.calc = calc = Calculator(fitted_model[0], warn_interval=3600)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for k in range(6):
            a.positions[0, 0] += 0.001 * k
            a.get_forces()
        assert len([w for w in rec if w.category is ExtrapolationWarning]) == 1
        calc.warn_interval = 0.0
        a.positions[0, 0] += 0.001
        a.get_forces()
        assert len(rec) == 2 and "5 more extrapolating calls" in str(rec[1].message)


def test_evaluate_counts_the_same_atoms(fitted_model):
    from hpcpot import Calculator
    from hpcpot.evaluate import evaluate
    from hpcpot.training.data import atoms_to_structures

    a = _training_images(1)[0]
    a.set_cell(a.cell.array * 1.1, scale_atoms=True)
    a.calc = Calculator(fitted_model[0], extrapolation="ignore")
    a.get_potential_energy()
    n = a.calc.results["extrapolated_atoms"]
    from ase.calculators.singlepoint import SinglePointCalculator

    b = a.copy()
    b.calc = SinglePointCalculator(b, energy=0.0)
    st = atoms_to_structures([(b, "stretched")], need_forces=False, elements=fitted_model[0].layout.elements)
    rep = evaluate(fitted_model[0], st, with_forces=False)[0]
    assert rep.extrapolated_atoms_percent == pytest.approx(100 * n / 14)
