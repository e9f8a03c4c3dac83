"""The trained model as one self-describing JSON file.

Contents: hpcpot version, units, elements, the full fingerprint definition (every function
with its parameters), the fingerprint scaling ranges, the network layout, the activation
and the flat parameter vector (layout in :mod:`hpcpot.potential.network`; every field in docs/model-format.md).  JSON keeps it readable and
diffable; float64 values round-trip exactly through Python's repr.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..files import atomic_write_bytes, refuse_existing
from .network import Layout
from .symmetry import SymmetryFunctions

FORMAT = "hpcpot-model-1"

# a fingerprint counts as outside the training range when it leaves [min, max] by more than
# this share of the range (absolute, for a function constant in training): rounding is not
# extrapolation
EXTRAPOLATION_MARGIN = 1e-6


@dataclass
class Model:
    sf: SymmetryFunctions
    layout: Layout
    params: np.ndarray
    gmin: np.ndarray  # (n_elements, n_max) fingerprint ranges of the training set
    gmax: np.ndarray

    def to_dict(self) -> dict:
        ne = len(self.layout.elements)
        return {
            "format": FORMAT,
            "hpcpot_version": __version__,
            "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"},
            "elements": list(self.layout.elements),
            "fingerprints": self.sf.to_dict(),
            "scaling": {
                el: {"min": self.gmin[e, : self.layout.n_inputs[e]].tolist(),
                     "max": self.gmax[e, : self.layout.n_inputs[e]].tolist()}
                for e, el in enumerate(self.layout.elements)
            },  # fmt: skip
            "network": {"hidden": list(self.layout.hidden), "activation": self.layout.activation},
            "parameter_layout": "per element: (W row-major, b) per layer; then (slope, intercept) per element",
            "n_parameters": int(self.layout.n_params),
            "parameters": self.params.tolist(),
            "n_elements": ne,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "<model>") -> Model:
        if d.get("format") != FORMAT:
            raise ValueError(f"{source}: not an hpcpot model file (format {d.get('format')!r})")
        sf = SymmetryFunctions.from_dict(d["fingerprints"])
        els = tuple(d["elements"])
        layout = Layout(els, tuple(int(n) for n in sf.n_functions), tuple(d["network"]["hidden"]), d["network"]["activation"])
        params = np.array(d["parameters"], float)
        if len(params) != layout.n_params:
            raise ValueError(f"{source}: {len(params)} parameters, the layout needs {layout.n_params}")
        gmin = np.zeros((len(els), sf.n_max))
        gmax = np.zeros((len(els), sf.n_max))
        for e, el in enumerate(els):
            n = layout.n_inputs[e]
            gmin[e, :n] = d["scaling"][el]["min"]
            gmax[e, :n] = d["scaling"][el]["max"]
        return cls(sf, layout, params, gmin, gmax)

    def outside_range(self, fp: np.ndarray, species: np.ndarray) -> np.ndarray:
        """Which fingerprint components lie outside the training range: bool (n_atoms, n_max)
        for unscaled fingerprints ``fp`` (n_atoms, n_max) of atoms of element indices ``species``
        (their scaled inputs leave [-1, 1]: the networks extrapolate)."""
        lo, hi = self.gmin[species], self.gmax[species]
        rng = hi - lo
        tol = EXTRAPOLATION_MARGIN * np.where(rng > 0, rng, 1.0)
        return (fp < lo - tol) | (fp > hi + tol)

    def save(self, path: str, overwrite: bool = False) -> None:
        refuse_existing([path], overwrite)
        blob = json.dumps(self.to_dict(), indent=1).encode()
        atomic_write_bytes(path, lambda fh: fh.write(blob))

    @classmethod
    def load(cls, path: str) -> Model:
        with open(path) as fh:
            return cls.from_dict(json.load(fh), path)
