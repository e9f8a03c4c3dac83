"""Test a trained model on reference data: ``python -m hpcpot.evaluate MODEL DATA... [options]``.

Reports, against the reference energies (eV) and forces (eV/Å) of every image:

* energy per atom: RMSE, MAE and the largest residual (meV/atom), with the image it is in;
* forces: RMSE, MAE per component and the largest one (eV/Å), with image and atom, overall
  and per element;
* stress, where the reference data carries it (ASE's convention): RMSE and MAE per
  component (GPa), over the periodic images that have one;
* extrapolation: the share of atoms with a fingerprint outside the training range (the
  model was not fitted there, so large errors are likely).

Images go through in chunks (fingerprints, derivatives and the networks of one chunk at a
time), so memory stays bounded on big sets.  ``--parity PREFIX`` writes
``PREFIX-energies.csv`` (one row per image) and, with forces, ``PREFIX-forces.csv`` (one row
per atom) for parity plots; ``--plot PREFIX`` draws them (energy and force parity plots,
error histograms; needs matplotlib: ``pip install 'hpcpot[plot]'``).  Existing files are
never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

from . import _process  # noqa: F401  (before numpy: one BLAS thread, heap thresholds)

import numpy as np  # noqa: E402


@dataclass
class Report:
    """Errors of a model on a data set (units in the field names)."""

    images: int
    atoms: int
    energy_rmse_mev_per_atom: float
    energy_mae_mev_per_atom: float
    energy_max_mev_per_atom: float
    energy_max_image: str
    force_rmse_ev_per_a: float | None
    force_mae_ev_per_a: float | None
    force_max_ev_per_a: float | None
    force_max_where: str | None
    extrapolated_atoms_percent: float
    # per element symbol: {"atoms", "rmse_ev_per_a", "mae_ev_per_a", "max_ev_per_a"} (forces)
    force_per_element: dict | None = None
    stress_images: int = 0  # images with a reference stress (periodic ones only)
    stress_rmse_gpa: float | None = None
    stress_mae_gpa: float | None = None


def evaluate(model, st, chunk: int = 500, log=None, with_forces: bool = True):
    """Predict every image of ``st`` (Structures) with ``model`` (hpcpot.potential.modelfile.Model).

    Returns (Report, E_pred (n_images,) eV, F_pred (n_atoms, 3) eV/Å or None).
    """
    from .potential.fingerprints import compute_fingerprints
    from .potential.predict import Batch

    with_forces = with_forces and st.forces is not None
    # stress comes from the same derivatives as the forces, for images with a reference one
    has_stress = np.zeros(st.n_images, bool)
    vol = np.abs(np.linalg.det(st.cells)) if len(st.cells) else np.zeros(0)
    if with_forces and st.stress is not None:
        has_stress = np.isfinite(st.stress).all(axis=1) & st.pbc.any(axis=1) & (vol > 1e-12)
    S = np.full((st.n_images, 6), np.nan)
    m = model
    tables = m.sf.block_tables()
    E = np.empty(st.n_images)
    F = np.empty((len(st.species), 3)) if with_forces else None
    outside = np.zeros(len(st.species), bool)
    t0 = time.perf_counter()
    for lo in range(0, st.n_images, chunk):
        hi = min(st.n_images, lo + chunk)
        sub = st.slice(lo, hi)
        a0, a1 = st.atom_ptr[lo], st.atom_ptr[hi]
        want_s = bool(has_stress[lo:hi].any())
        fp, blocks = compute_fingerprints(sub, m.sf, with_derivs=with_forces, with_virial=want_s)
        prob = Batch(sub, fp, blocks, m.layout, *m.input_bounds(), tables, with_forces)
        e, f = prob.predict(m.params)
        E[lo:hi] = e
        if want_s:
            S[lo:hi] = prob.virials() / np.where(vol[lo:hi] > 1e-12, vol[lo:hi], 1.0)[:, None]  # has_stress rows used
        if with_forces:
            F[a0:a1] = f
        # scaled inputs outside [-1, 1]: extrapolation (the calculator's test, too)
        outside[a0:a1] = m.outside_range(fp, sub.species).any(axis=1)
        if log is not None and st.n_images > chunk:
            el = time.perf_counter() - t0
            log(f"  evaluated {hi}/{st.n_images} images, {el:.1f} s elapsed, ~{el / hi * (st.n_images - hi):.1f} s left")
    nat = st.n_atoms.astype(float)
    rE = (E - st.energy) / nat
    k = int(np.argmax(np.abs(rE)))
    fields = dict(
        images=int(st.n_images), atoms=int(len(st.species)),
        energy_rmse_mev_per_atom=1000 * float(np.sqrt(np.mean(rE**2))),
        energy_mae_mev_per_atom=1000 * float(np.mean(np.abs(rE))),
        energy_max_mev_per_atom=1000 * float(abs(rE[k])), energy_max_image=st.sources[k],
        force_rmse_ev_per_a=None, force_mae_ev_per_a=None, force_max_ev_per_a=None, force_max_where=None,
        extrapolated_atoms_percent=100 * float(outside.mean()),
    )  # fmt: skip
    if with_forces:
        dF = F - st.forces
        a, x = np.unravel_index(int(np.argmax(np.abs(dF))), dF.shape)
        img = int(np.searchsorted(st.atom_ptr, a, side="right") - 1)
        fields.update(
            force_rmse_ev_per_a=float(np.sqrt(np.mean(dF**2))), force_mae_ev_per_a=float(np.mean(np.abs(dF))),
            force_max_ev_per_a=float(abs(dF[a, x])),
            force_max_where=f"{st.sources[img]}, atom {a - st.atom_ptr[img]}, {'xyz'[x]}",
            force_per_element=per_element_force_errors(dF, st.species, st.elements),
        )  # fmt: skip
    if has_stress.any():
        from ase.units import GPa

        dS = (S[has_stress] - st.stress[has_stress]) / GPa
        fields.update(stress_images=int(has_stress.sum()), stress_rmse_gpa=float(np.sqrt(np.mean(dS**2))),
                      stress_mae_gpa=float(np.mean(np.abs(dS))))  # fmt: skip
    return Report(**fields), E, F


def per_element_force_errors(dF: np.ndarray, species: np.ndarray, elements) -> dict:
    """Force errors by element of the atom: ``{symbol: {atoms, rmse_ev_per_a, mae_ev_per_a,
    max_ev_per_a}}`` over the components of ``dF`` (n_atoms, 3) in eV/Å; elements absent
    from the data are left out."""
    out = {}
    for e, el in enumerate(elements):
        d = dF[species == e]
        if len(d):
            out[el] = {"atoms": len(d), "rmse_ev_per_a": float(np.sqrt(np.mean(d**2))),
                       "mae_ev_per_a": float(np.mean(np.abs(d))), "max_ev_per_a": float(np.abs(d).max())}  # fmt: skip
    return out


def _parity_paths(prefix: str, with_forces: bool) -> list[str]:
    return [f"{prefix}-energies.csv"] + ([f"{prefix}-forces.csv"] if with_forces else [])


def _write_parity(prefix: str, st, E: np.ndarray, F: np.ndarray | None) -> list[str]:
    from .files import atomic_write_bytes

    nat = st.n_atoms
    rows = ["image,source,n_atoms,energy_ref_eV,energy_pred_eV,energy_ref_eV_per_atom,energy_pred_eV_per_atom"]
    # repr(float(x)): the shortest text that reads back exactly (a numpy scalar's repr is
    # "np.float64(...)" since numpy 2, which no CSV reader parses)
    rows += [f"{j},\"{st.sources[j]}\",{nat[j]},{float(st.energy[j])!r},{float(E[j])!r},"
             f"{float(st.energy[j] / nat[j])!r},{float(E[j] / nat[j])!r}" for j in range(st.n_images)]  # fmt: skip
    blob = ("\n".join(rows) + "\n").encode()
    atomic_write_bytes(f"{prefix}-energies.csv", lambda fh: fh.write(blob))
    if F is not None:
        img = np.repeat(np.arange(st.n_images), nat)
        local = np.arange(len(st.species)) - st.atom_ptr[img]
        sym = np.asarray(st.elements)[st.species]
        data = np.column_stack([st.forces, F])
        rows = ["image,atom,element,fx_ref,fy_ref,fz_ref,fx_pred,fy_pred,fz_pred"]
        rows += [f"{img[a]},{local[a]},{sym[a]}," + ",".join(repr(float(v)) for v in data[a]) for a in range(len(sym))]
        blob = ("\n".join(rows) + "\n").encode()
        atomic_write_bytes(f"{prefix}-forces.csv", lambda fh: fh.write(blob))
    return _parity_paths(prefix, F is not None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcpot.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model.json written by hpcpot.train")
    ap.add_argument("data", nargs="+", help="files or globs ASE can read, or hpcpot HDF5 files")
    ap.add_argument("--index", default=":", help="ASE index applied to each file (default ':')")
    ap.add_argument("--no-forces", action="store_true", help="energies only (data without forces)")
    ap.add_argument("--chunk", type=int, default=500, help="images per chunk (memory bound; default 500)")
    ap.add_argument("--parity", metavar="PREFIX", help="write PREFIX-energies.csv and PREFIX-forces.csv")
    ap.add_argument("--plot", metavar="PREFIX",
                    help="draw PREFIX-energy-parity.png, PREFIX-force-parity.png, PREFIX-errors.png (needs matplotlib)")
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ap.add_argument("--overwrite", action="store_true", help="replace existing --parity/--plot/--json files")
    a = ap.parse_args(argv)
    from .errors import DataError
    from .files import refuse_existing
    from .potential.modelfile import Model
    from .training.data import read_structures

    try:
        model = Model.load(a.model)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {a.model}: cannot load the model: {exc}", file=sys.stderr)
        return 2
    outputs = ([a.json] if a.json else []) + (_parity_paths(a.parity, not a.no_forces) if a.parity else [])
    if a.plot:
        from .plot import PlotUnavailable, parity_paths, require_matplotlib

        try:  # before any work, like the refusal below
            require_matplotlib()
        except PlotUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        outputs += parity_paths(a.plot, not a.no_forces)
    try:  # before any work: a refusal after minutes of evaluation would waste them
        refuse_existing(outputs, a.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        st, _ = read_structures(a.data, need_forces=not a.no_forces, elements=model.layout.elements, index=a.index)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"model {a.model}: elements {', '.join(model.layout.elements)}; data: {st.n_images} images, "
          f"{len(st.species)} atoms", flush=True)  # fmt: skip
    rep, E, F = evaluate(model, st, max(1, a.chunk), log=lambda s: print(s, flush=True), with_forces=not a.no_forces)
    print(f"energy: RMSE {rep.energy_rmse_mev_per_atom:.3f} meV/atom, MAE {rep.energy_mae_mev_per_atom:.3f} meV/atom, "
          f"max {rep.energy_max_mev_per_atom:.3f} meV/atom ({rep.energy_max_image})")  # fmt: skip
    if rep.force_rmse_ev_per_a is not None:
        print(f"forces: RMSE {rep.force_rmse_ev_per_a:.4f} eV/Å, MAE {rep.force_mae_ev_per_a:.4f} eV/Å, "
              f"max {rep.force_max_ev_per_a:.4f} eV/Å ({rep.force_max_where})")  # fmt: skip
        for el, d in (rep.force_per_element or {}).items():
            print(f"  {el:>2} ({d['atoms']} atoms): RMSE {d['rmse_ev_per_a']:.4f} eV/Å, MAE {d['mae_ev_per_a']:.4f} eV/Å, "
                  f"max {d['max_ev_per_a']:.4f} eV/Å")  # fmt: skip
    if rep.stress_images:
        print(f"stress ({rep.stress_images} images with a reference stress): RMSE {rep.stress_rmse_gpa:.4f} GPa, "
              f"MAE {rep.stress_mae_gpa:.4f} GPa")  # fmt: skip
    print(f"extrapolation: {rep.extrapolated_atoms_percent:.2f}% of atoms have a fingerprint outside the training range")
    if a.parity:
        for path in _write_parity(a.parity, st, E, F):
            print(f"wrote {path}")
    if a.plot:
        from .plot import parity_plots

        for path in parity_plots(a.plot, st, E, F):
            print(f"wrote {path}")
    if a.json:
        from .files import atomic_write_bytes

        blob = json.dumps(asdict(rep), indent=1).encode()
        atomic_write_bytes(a.json, lambda fh: fh.write(blob))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
