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
