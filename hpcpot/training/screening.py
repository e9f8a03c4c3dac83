"""Warnings about data that validates but is probably wrong, over all ranks' images.

* duplicates: the same structure (species, positions to 1e-6 Å, cell, pbc) more than once;
  with different energies (> 1 meV/atom apart) the labels contradict each other;
* energy outliers: images whose energy per atom, after a least-squares per-element
  reference, lies far from the rest (a unit mistake such as Hartree for eV, a failed SCF).

Both are warnings with counts and the first few file:image names, not errors: real sets
hold a few of each, and the user decides.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..parallel import SerialComm
from ..potential.structures import Structures
from .filters import composition

DUPLICATE_ENERGY_TOL = 1e-3  # eV/atom: duplicates closer than this agree
OUTLIER_MAD_FACTOR = 20.0  # robust z-score (MAD-based sigma) above which an image is an outlier
OUTLIER_MIN = 1.0  # eV/atom: never flag closer than this (tight sets have tiny MADs)
SHOW = 5


def structure_keys(st: Structures) -> list[bytes]:
    """One SHA-1 per image of species, positions rounded to 1e-6 Å, cell and pbc."""
    keys = []
    for k in range(st.n_images):
        a0, a1 = st.atom_ptr[k], st.atom_ptr[k + 1]
        h = hashlib.sha1()
        for arr in (st.species[a0:a1].astype(np.int64), np.round(st.positions[a0:a1], 6) + 0.0,
                    np.round(st.cells[k], 6) + 0.0, st.pbc[k]):  # fmt: skip
            h.update(np.ascontiguousarray(arr).tobytes())
        keys.append(h.digest())
    return keys


def _examples(names: list[str]) -> str:
    more = f" and {len(names) - SHOW} more" if len(names) > SHOW else ""
    return "; ".join(names[:SHOW]) + more


def screen(comm: SerialComm, parts: list[Structures], reference: np.ndarray, log) -> dict:
    """Warn (through ``log``, rank 0) about duplicates and energy outliers among all images of
    ``parts`` on all ranks.  ``reference`` (n_elements,) eV/atom per element.  Returns the
    counts (the same on every rank)."""
    keys, epa, names = [], [], []
    for st in parts:
        keys += structure_keys(st)
        comp = composition(st, len(reference))
        epa.append((st.energy - comp @ reference) / np.maximum(st.n_atoms, 1))
        names += list(st.sources)
    epa = np.concatenate(epa) if epa else np.zeros(0)
    gathered = comm.allgather((keys, epa, names))
    keys = [k for g in gathered for k in g[0]]
    epa = np.concatenate([g[1] for g in gathered])
    names = [n for g in gathered for n in g[2]]
    out = {"duplicates": 0, "conflicting_duplicates": 0, "energy_outliers": 0}
    first: dict[bytes, int] = {}
    same, conflict = [], []
    for j, k in enumerate(keys):
        if k in first:
            i = first[k]
            if abs(epa[j] - epa[i]) > DUPLICATE_ENERGY_TOL:
                conflict.append(f"{names[j]} = {names[i]} ({1000 * (epa[j] - epa[i]):+.1f} meV/atom)")
            else:
                same.append(f"{names[j]} = {names[i]}")
        else:
            first[k] = j
    out["duplicates"], out["conflicting_duplicates"] = len(same), len(conflict)
    if conflict:
        log(f"warning: {len(conflict)} image(s) repeat an earlier structure with a different energy "
            f"(contradicting labels): {_examples(conflict)}")  # fmt: skip
    if same:
        log(f"note: {len(same)} image(s) repeat an earlier structure with the same energy: {_examples(same)}")
    if len(epa) >= 3:
        med = float(np.median(epa))
        sigma = 1.4826 * float(np.median(np.abs(epa - med)))
        limit = max(OUTLIER_MAD_FACTOR * sigma, OUTLIER_MIN)
        bad = np.nonzero(np.abs(epa - med) > limit)[0]
        out["energy_outliers"] = len(bad)
        if len(bad):
            desc = [f"{names[j]} ({epa[j] - med:+.2f} eV/atom)" for j in bad[np.argsort(-np.abs(epa[bad] - med))]]
            log(f"warning: {len(bad)} image(s) have an energy per atom more than {limit:.2f} eV/atom from the "
                f"median (after per-element references; a unit mistake such as Hartree for eV, or a failed "
                f"calculation?): {_examples(desc)}")  # fmt: skip
    return out
