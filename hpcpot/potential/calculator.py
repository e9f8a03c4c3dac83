"""ASE calculator for a trained hpcpot model: energy (eV) and forces (eV/Å)."""

from __future__ import annotations

from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

from .fingerprints import compute_fingerprints
from .modelfile import Model
from .predict import Batch
from .structures import structure_arrays


class Calculator(_AseCalculator):
    """``Calculator("run/model.json")``: energy and forces of any structure made of the
    model's elements (any cell, pbc, or none).  An unknown element raises ValueError."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model: str | Model, **kwargs):
        super().__init__(**kwargs)
        self.model = model if isinstance(model, Model) else Model.load(model)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        m = self.model
        st = structure_arrays(self.atoms, m.layout.elements)
        # forces always come with the energy: MD asks for both at every step, and computing the
        # derivatives once beats a second fingerprint pass when forces are asked for next
        G, blocks = compute_fingerprints(st, m.sf, with_derivs=True)
        prob = Batch(st, G, blocks, m.layout, m.gmin, m.gmax, m.sf.block_tables())
        energy, forces = prob.predict(m.params)
        self.results["energy"] = float(energy[0])
        self.results["free_energy"] = float(energy[0])
        self.results["forces"] = forces
