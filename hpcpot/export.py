"""Export a model file to another code's format: ``python -m hpcpot.export MODEL --format n2p2 OUTDIR``.

n2p2 (and LAMMPS's ``pair_style hdnnp``) reads ``input.nn``, ``scaling.data`` and
``weights.NNN.data`` (NNN: atomic number).  The translation, exact up to rounding:

* cutoff: hpcpot's ½(cos(πr/Rc) + 1) is n2p2's ``cutoff_type 1`` (COS) with alpha 0;
* G2: n2p2's radial type 2 with η_n2p2 = η / Rc² (Å⁻²) and r_s = Rs (Å);
* G4: n2p2's narrow angular type 3 with λ = γ, ζ = ζ, η_n2p2 = η / Rc² (Å⁻²), r_s = 0;
* scaling: ``scale_symmetry_functions`` with Smin = −1, Smax = 1 is hpcpot's min–max
  scaling.  A function with zero range (hpcpot: scaled value 0) gets max = min + 1 and
  zero weights out of it, so it contributes nothing, as in hpcpot;
* n2p2 sorts each element's functions (by type, cutoff, η, r_s, ζ, λ, neighbour elements
  by atomic number): scaling lines and first-layer weights follow that order;
* activations: tanh ``t``, sigmoid ``s`` (logistic), linear ``l``; output layer ``l``;
* the atomic energy slope·N(x) + intercept is folded into the output layer (n2p2 has no
  per-element energy scale); no ``atom_energy``, no normalisation: energies in eV, lengths in Å.

Anything n2p2 cannot express is refused with a message naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .potential.modelfile import Model

N2P2_ACTIVATION = {"tanh": "t", "sigmoid": "s", "linear": "l"}


def _f(x: float) -> str:
    """The shortest text that reads back as the same float64 (also for numpy scalars)."""
    return repr(float(x))


class ExportError(ValueError):
    """The model uses something the target format cannot express (named in the message)."""


def _atomic_number(symbol: str) -> int:
    from ase.data import atomic_numbers

    z = atomic_numbers.get(symbol, 0)
    if z <= 0:
        raise ExportError(f"element {symbol!r} is not a chemical element n2p2 knows")
    return z


def n2p2_function_order(model: Model, e: int) -> tuple[list[int], list[str]]:
    """n2p2's order of element e's functions (hpcpot component indices) and their
    ``symfunction_short`` lines, in that order."""
    sf = model.sf
    els = sf.elements
    rc = sf.cutoff
    z = {el: _atomic_number(el) for el in els}
    # n2p2's element index: position in the list sorted by atomic number
    nidx = {el: k for k, el in enumerate(sorted(els, key=lambda s: z[s]))}
    keys, lines = [], []
    centre = els[e]
    for f, fn in enumerate(sf.to_dict()["functions"][centre]):
        eta = float(fn["eta"]) / rc**2
        if fn["type"] == "G2":
            nb = fn["element"]
            rs = float(fn["Rs"])
            keys.append((2, eta, rs, 0.0, 0.0, nidx[nb], 0, f))
            lines.append(f"symfunction_short {centre} 2 {nb} {_f(eta)} {_f(rs)} {_f(rc)}")
        elif fn["type"] == "G4":
            a, b = sorted(fn["elements"], key=lambda s: nidx[s])
            zeta, lam = float(fn["zeta"]), float(fn["gamma"])
            if zeta < 1.0 and zeta == round(zeta):
                raise ExportError(f"G4 of {centre} with zeta {zeta}: n2p2's integer power needs zeta >= 1")
            keys.append((3, eta, 0.0, zeta, lam, nidx[a], nidx[b], f))
            lines.append(f"symfunction_short {centre} 3 {a} {b} {_f(eta)} {_f(lam)} {_f(zeta)} {_f(rc)} 0.0")
        else:
            raise ExportError(f"symmetry function type {fn['type']!r} of {centre} has no n2p2 equivalent")
    # n2p2's operator<: type, (cutoff type, alpha, rc: equal here), eta, rs, zeta, lambda, e1, e2
    order = sorted(range(len(keys)), key=lambda k: keys[k][:7])
    return [keys[k][7] for k in order], [lines[k] for k in order]


def export_n2p2(model: Model, outdir: str | Path, source: str = "<model>") -> list[Path]:
    """Write input.nn, scaling.data and weights.NNN.data into ``outdir`` (created; existing
    files are refused).  Returns the written paths."""
    lay = model.layout
    if lay.activation not in N2P2_ACTIVATION:
        raise ExportError(f"activation {lay.activation!r} has no n2p2 equivalent")
    if len(lay.hidden) == 0:
        raise ExportError("a network without hidden layers: n2p2 needs at least one")
    standard = model.scaling == "standard"
    els = list(model.sf.elements)
    z = {el: _atomic_number(el) for el in els}
    n2p2_els = sorted(els, key=lambda s: z[s])
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    names = ["input.nn", "scaling.data", *(f"weights.{z[el]:03d}.data" for el in n2p2_els)]
    clash = [n for n in names if (out / n).exists()]
    if clash:
        raise FileExistsError(f"refusing to overwrite {', '.join(str(out / n) for n in clash)}")

    act = N2P2_ACTIVATION[lay.activation]
    head = [
        f"# n2p2 input written by python -m hpcpot.export from {source}",
        "# units: energies eV, lengths Angstrom (no normalisation); see hpcpot/export.py for the translation",
        f"number_of_elements {len(els)}",
        f"elements {' '.join(n2p2_els)}",
        "cutoff_type 1 0.0",
        # n2p2: Smin + (Smax - Smin)(G - min)/(max - min), or with "_sigma" (G - mean)/sigma scaled
        # the same way: hpcpot's min-max and standardised inputs exactly
        *(["scale_symmetry_functions_sigma", "scale_min_short 0.0", "scale_max_short 1.0"] if standard
          else ["scale_symmetry_functions", "scale_min_short -1.0", "scale_max_short 1.0"]),
        f"global_hidden_layers_short {len(lay.hidden)}",
        f"global_nodes_short {' '.join(str(h) for h in lay.hidden)}",
        f"global_activation_short {' '.join([act] * len(lay.hidden) + ['l'])}",
        "",
    ]
    sf_lines, scaling_lines = [], [
        "# symmetry function scaling data for n2p2 (hpcpot export)",
        "# e_index sf_index sf_min sf_max sf_mean sf_sigma"
        + ("" if standard else "  (mean: midpoint; sigma unused by scale_symmetry_functions)"),
    ]
    weights: dict[str, list[str]] = {}
    for ne_, el in enumerate(n2p2_els, start=1):
        e = els.index(el)
        perm, lines = n2p2_function_order(model, e)
        sf_lines += lines
        nf = lay.n_inputs[e]
        gmin, gmax = model.gmin[e, :nf][perm], model.gmax[e, :nf][perm]
        if standard:
            mean, sigma = model.gmean[e, :nf][perm], model.gstd[e, :nf][perm]
            dead = ~(sigma > 0)
            sigma = np.where(dead, 1.0, sigma)
        else:
            dead = ~(gmax > gmin)
            gmax = np.where(dead, gmin + 1.0, gmax)
            mean, sigma = 0.5 * (gmin + gmax), np.zeros(nf)
        for p in range(nf):
            scaling_lines.append(f"{ne_} {p + 1} {_f(gmin[p])} {_f(gmax[p])} {_f(mean[p])} {_f(sigma[p])}")
        layers = [(W.copy(), b.copy()) for W, b in lay.unpack(model.params, e)]
        W0 = layers[0][0][:, perm]
        W0[:, dead] = 0.0
        layers[0] = (W0, layers[0][1])
        slope, intercept = lay.slope_intercept(model.params, e)
        Wl, bl = layers[-1]
        layers[-1] = (Wl * slope, bl * slope + intercept)
        wl = [
            f"# n2p2 weights of element {el} (hpcpot export): per layer, weights from each neuron of the",
            "# previous layer to each neuron of this one (previous-layer neuron outer), then the biases",
        ]
        count = 0
        for li, (W, b) in enumerate(layers, start=1):
            for j in range(W.shape[1]):
                for k in range(W.shape[0]):
                    count += 1
                    wl.append(f"{_f(W[k, j])} a {count} {li - 1} {j + 1} {li} {k + 1}")
            for k in range(W.shape[0]):
                count += 1
                wl.append(f"{_f(b[k])} b {count} {li} {k + 1}")
        weights[el] = wl
    paths = []
    for name, text in [("input.nn", head + sf_lines), ("scaling.data", scaling_lines)] + [
        (f"weights.{z[el]:03d}.data", weights[el]) for el in n2p2_els
    ]:
        p = out / name
        p.write_text("\n".join(text) + "\n")
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcpot.export", description="Export an hpcpot model file to another code's format.")
    ap.add_argument("model", help="the hpcpot model file (JSON)")
    ap.add_argument("--format", required=True, choices=["n2p2"], help="target format")
    ap.add_argument("outdir", help="folder to write into (created)")
    a = ap.parse_args(argv)
    try:
        paths = export_n2p2(Model.load(a.model), a.outdir, a.model)
    except (ExportError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
