"""The trained model as one self-describing JSON file.

Contents: hpcpot version, units, elements, the full fingerprint definition (every function
with its parameters), the fingerprint ranges and input scaling, the network layout, the
activation and the flat parameter vector (layout in :mod:`hpcpot.potential.network`; every field in docs/model-format.md).  JSON keeps it readable and
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
# format 2 = format 1 plus "input_scaling" (and per element "mean" and "std"); written only
# by models that need it, so that a min-max model stays readable by every older reader and
# a reader that knows only format 1 refuses a standardised model instead of misscaling it
FORMAT_2 = "hpcpot-model-2"
INPUT_SCALINGS = ("minmax", "standard")

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
    scaling: str = "minmax"  # network inputs: "minmax" (range to [-1, 1]) or "standard"
    gmean: np.ndarray | None = None  # (n_elements, n_max) with "standard": training mean
    gstd: np.ndarray | None = None  # and standard deviation (0 for a function constant in training)

    def input_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), each (n_elements, n_max): the network input is x = 2 (G − lo)/(hi − lo) − 1
        (0 where hi = lo), as :class:`hpcpot.potential.predict.Batch` takes it.  Min-max takes
        the training range to [-1, 1]; standardising takes mean ∓ one standard deviation there,
        x = (G − mean)/std."""
        if self.scaling == "standard":
            return self.gmean - self.gstd, self.gmean + self.gstd
        return self.gmin, self.gmax

    def to_dict(self) -> dict:
        ne = len(self.layout.elements)
        standard = self.scaling == "standard"
        scaling = {}
        for e, el in enumerate(self.layout.elements):
            n = self.layout.n_inputs[e]
            scaling[el] = {"min": self.gmin[e, :n].tolist(), "max": self.gmax[e, :n].tolist()}
            if standard:
                scaling[el].update(mean=self.gmean[e, :n].tolist(), std=self.gstd[e, :n].tolist())
        d = {
            "format": FORMAT_2 if standard else FORMAT,
            "hpcpot_version": __version__,
            "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"},
            "elements": list(self.layout.elements),
            "fingerprints": self.sf.to_dict(),
            "scaling": scaling,
            "network": {"hidden": list(self.layout.hidden), "activation": self.layout.activation},
            "parameter_layout": "per element: (W row-major, b) per layer; then (slope, intercept) per element",
            "n_parameters": int(self.layout.n_params),
            "parameters": self.params.tolist(),
            "n_elements": ne,
        }
        if standard:
            d["input_scaling"] = "standard"
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "<model>") -> Model:
        if d.get("format") not in (FORMAT, FORMAT_2):
            raise ValueError(f"{source}: not an hpcpot model file (format {d.get('format')!r})")
        scaling = d.get("input_scaling", "minmax") if d["format"] == FORMAT_2 else "minmax"
        if scaling not in INPUT_SCALINGS:
            raise ValueError(f"{source}: input_scaling {scaling!r} is not one of {', '.join(INPUT_SCALINGS)}")
        sf = SymmetryFunctions.from_dict(d["fingerprints"])
        els = tuple(d["elements"])
        layout = Layout(els, tuple(int(n) for n in sf.n_functions), tuple(d["network"]["hidden"]), d["network"]["activation"])
        params = np.array(d["parameters"], float)
        if len(params) != layout.n_params:
            raise ValueError(f"{source}: {len(params)} parameters, the layout needs {layout.n_params}")
        keys = ("min", "max", "mean", "std") if scaling == "standard" else ("min", "max")
        arrays = {k: np.zeros((len(els), sf.n_max)) for k in keys}
        for e, el in enumerate(els):
            n = layout.n_inputs[e]
            for k in keys:
                arrays[k][e, :n] = d["scaling"][el][k]
        return cls(sf, layout, params, arrays["min"], arrays["max"], scaling, arrays.get("mean"), arrays.get("std"))

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

