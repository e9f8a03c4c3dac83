"""ASE calculator for a trained hpcpot model: energy (eV), forces (eV/Å) and, for periodic
cells, stress (eV/Å³); warns when a structure leaves the model's training range."""

from __future__ import annotations

import time
import warnings

import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

from .fingerprints import compute_fingerprints
from .modelfile import Model
from .predict import Batch
from .structures import structure_arrays


class ExtrapolationWarning(UserWarning):
    """Atoms have fingerprints outside the model's training range: predictions there are
    extrapolations and may be badly wrong."""


class ExtrapolationError(RuntimeError):
    """Raised instead of :class:`ExtrapolationWarning` with ``extrapolation="error"``."""


class Calculator(_AseCalculator):
    """``Calculator("run/model.json")``: energy and forces of any structure made of the
    model's elements (any cell, pbc, or none); stress (ASE's convention: eV/Å³, Voigt order
    xx yy zz yz xz xy, stress = (1/V) ∂E/∂ε) when some direction is periodic and the cell has
    a volume.  An unknown element raises ValueError.

    One pass computes energy, forces and stress together: ASE asks for them one at a time,
    and the later requests are answered from ``results``.  Stress costs ~9% more per call
    (1134 atoms: 107 against 98 ms), so it is computed from the first time it is asked for
    on (cell relaxation, NPT), and not in NVE MD that never asks.

    ``extrapolation``: what to do when atoms have fingerprints outside the training range
    stored in the model (``results["extrapolated_atoms"]`` holds their number either way):
    ``"warn"`` (an :class:`ExtrapolationWarning` naming how many atoms and which functions,
    at most one per ``warn_interval`` seconds so that MD logs stay readable; the next one
    says how many calls extrapolated in between), ``"error"`` (raise
    :class:`ExtrapolationError`) or ``"ignore"``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: str | Model, extrapolation: str = "warn", warn_interval: float = 10.0, **kwargs):
        if extrapolation not in ("warn", "error", "ignore"):
            raise ValueError(f"extrapolation must be 'warn', 'error' or 'ignore', not {extrapolation!r}")
        super().__init__(**kwargs)
        self.model = model if isinstance(model, Model) else Model.load(model)
        self.extrapolation = extrapolation
        self.warn_interval = float(warn_interval)
        self._last_warning = -np.inf  # time.monotonic() of the last warning
        self._suppressed = 0  # extrapolating calls since then
        self._stress_wanted = False  # set by the first request for stress, then kept

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        m = self.model
        st = structure_arrays(self.atoms, m.layout.elements)
        volume = abs(np.linalg.det(self.atoms.cell.array))
        self._stress_wanted = self._stress_wanted or "stress" in properties
        with_stress = self._stress_wanted and bool(self.atoms.pbc.any()) and volume > 1e-12
        # forces (and stress) always come with the energy: MD asks for both at every step, and
        # computing the derivatives once beats a second fingerprint pass when forces come next
        G, blocks = compute_fingerprints(st, m.sf, with_derivs=True, with_virial=with_stress)
        self._check_range(G, st.species)
        prob = Batch(st, G, blocks, m.layout, *m.input_bounds(), m.sf.block_tables())
        energy, forces = prob.predict(m.params)
        self.results["energy"] = float(energy[0])
        self.results["free_energy"] = float(energy[0])
        self.results["forces"] = forces
        if with_stress:
            self.results["stress"] = prob.virials()[0] / volume

    def _check_range(self, G: np.ndarray, species: np.ndarray) -> None:
        outside = self.model.outside_range(G, species)
        atoms_out = outside.any(axis=1)
        n = int(atoms_out.sum())
        self.results["extrapolated_atoms"] = n
        if n == 0 or self.extrapolation == "ignore":
            return
        msg = self._message(outside, atoms_out, species)
        if self.extrapolation == "error":
            raise ExtrapolationError(msg)
        now = time.monotonic()
        if now - self._last_warning < self.warn_interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += f" ({self._suppressed} more extrapolating calls since the last warning)"
        self._last_warning, self._suppressed = now, 0
        warnings.warn(msg, ExtrapolationWarning, stacklevel=2)

    def _message(self, outside: np.ndarray, atoms_out: np.ndarray, species: np.ndarray) -> str:
        sf = self.model.sf
        n = int(atoms_out.sum())
        # functions by the number of atoms that leave their range, most first
        c_idx, f_idx = np.nonzero(outside)
        pairs, counts = np.unique(np.stack([species[c_idx], f_idx], axis=1), axis=0, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        names = [f"{sf.label(int(c), int(f))} x{int(k)}" for (c, f), k in zip(pairs[order], counts[order])]
        more = f", and {len(names) - 5} more" if len(names) > 5 else ""
        idx = np.flatnonzero(atoms_out)
        shown = ", ".join(str(i) for i in idx[:10]) + (", ..." if n > 10 else "")
        return (
            f"{n} of {len(species)} atoms (indices {shown}) have fingerprints outside the training range; "
            f"the model extrapolates there. Functions (atoms outside): {'; '.join(names[:5])}{more}"
        )
