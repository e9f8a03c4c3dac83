"""NVE molecular dynamics with the calculator (examples/md_nve.py's run_nve) conserves the
total energy: no hidden discontinuity, and forces consistent with the energy."""

from __future__ import annotations

import sys

import numpy as np
from conftest import ROOT

sys.path.insert(0, str(ROOT / "examples"))


def test_nve_conserves_energy(fitted_model):
    from md_nve import reference_structure, run_nve

    from hpcpot import Calculator

    atoms = reference_structure()  # 14 atoms, 2 O on Pt(111), bottom layer fixed
    r = run_nve(atoms, Calculator(fitted_model[0], extrapolation="ignore"), steps=300, dt_fs=1.0,
                temperature=300.0, every=0)  # fmt: skip
    e = r["etot_per_atom"]
    assert len(e) == 301 and np.isfinite(e).all()
    # bound: over 0.3 ps at 1 fs steps the total energy stays within 0.8 meV/atom of its start
    # and its fitted drift is under 0.6 meV/atom/ps.  Measured: 0.49 meV/atom and -0.19
    # meV/atom/ps; forces 1% too large (the same run) give 1.04 and -1.29: both bounds catch that
    assert r["max_dev_mev_per_atom"] < 0.8, r["max_dev_mev_per_atom"]
    assert abs(r["drift_mev_per_atom_per_ps"]) < 0.6, r["drift_mev_per_atom_per_ps"]
    # the atoms did move: kinetic energy went into the potential and back
    assert np.ptp(atoms.get_positions()[-1]) > 0


def test_npt_runs_on_the_stress(fitted_model):
    """Berendsen NPT (in-plane barostat on the slab) is driven by the calculator's stress: the
    in-plane cell shrinks towards the relaxed cell (5.47 Å, see test_stress), z stays."""
    from ase import units
    from ase.md.nptberendsen import Inhomogeneous_NPTBerendsen
    from md_nve import reference_structure

    from hpcpot import Calculator

    a = reference_structure()
    a.calc = Calculator(fitted_model[0], extrapolation="ignore")
    rng = np.random.default_rng(0)
    a.set_momenta(rng.normal(size=(len(a), 3)) * np.sqrt(a.get_masses()[:, None] * units.kB * 300))
    c0 = a.cell.lengths().copy()
    dyn = Inhomogeneous_NPTBerendsen(a, 1 * units.fs, temperature_K=300, pressure_au=0.0, taut=50 * units.fs,
                                     taup=200 * units.fs, compressibility_au=4.6e-5 / units.bar, mask=(1, 1, 0))  # fmt: skip
    dyn.run(200)
    c = a.cell.lengths()
    assert c[2] == c0[2]
    assert (c[:2] < c0[:2] - 0.02).all() and (c[:2] > 0.95 * c0[:2]).all(), (c0, c)
    assert np.isfinite(a.get_potential_energy())
