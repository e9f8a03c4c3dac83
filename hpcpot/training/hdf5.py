"""HDF5 data sets made by ``python -m hpcpot.prepare``: every MPI rank can slice one.

Layout (units eV, Å):

    /numbers (n_atoms,) int   /positions (n_atoms, 3)   /forces (n_atoms, 3) [optional]
    /cells (n_images, 3, 3)   /pbc (n_images, 3) bool   /energy (n_images,)
    /atom_ptr (n_images + 1,) /sources (n_images,) str  /tags (n_images,) str [optional]
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DataError
from ..potential.structures import Structures, species_indices

MAGIC = "hpcpot-dataset-1"


def is_hdf5(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def write_hdf5(path: str, st: Structures, tags: list | None = None) -> None:
    """Write Structures to ``path`` atomically (temporary file + rename)."""
    import h5py
    from ase.data import atomic_numbers

    tmp = f"{path}.tmp{os.getpid()}"
    with h5py.File(tmp, "w") as h:
        h.attrs["format"] = MAGIC
        h["numbers"] = np.array([atomic_numbers[e] for e in st.elements])[st.species]
        h["positions"] = st.positions
        h["cells"] = st.cells
        h["pbc"] = st.pbc
        h["atom_ptr"] = st.atom_ptr
        h["energy"] = st.energy
        if st.forces is not None:
            h["forces"] = st.forces
        h["sources"] = np.array(st.sources, dtype=h5py.string_dtype())
        if tags is not None and any(t is not None for t in tags):
            h["tags"] = np.array(["" if t is None else str(t) for t in tags], dtype=h5py.string_dtype())
    os.replace(tmp, path)


def hdf5_n_images(path: str) -> int:
    import h5py

    with h5py.File(path, "r") as h:
        return len(h["energy"])


def read_hdf5(
    path: str,
    need_forces: bool,
    elements: tuple[str, ...] | None = None,
    info_key: str = "",
    images: slice | np.ndarray | None = None,
) -> tuple[Structures, list]:
    """Read (a slice of) a prepared file; validates like the ASE path."""
    import h5py
    from ase.data import chemical_symbols

    with h5py.File(path, "r") as h:
        if h.attrs.get("format") != MAGIC:
            raise DataError(f"{path}: not an hpcpot data file (make one with python -m hpcpot.prepare)")
        ptr_all = h["atom_ptr"][:]
        n = len(ptr_all) - 1
        idx = np.arange(n)[images] if images is not None else np.arange(n)
        if need_forces and "forces" not in h:
            raise DataError(f"{path}: forces missing (needed because force_coefficient > 0)")
        lo, hi = (int(ptr_all[idx[0]]), int(ptr_all[idx[-1] + 1])) if len(idx) else (0, 0)
        # one contiguous read, then select: ranks own contiguous image ranges
        numbers = h["numbers"][lo:hi]
        positions = h["positions"][lo:hi]
        forces = h["forces"][lo:hi] if need_forces else None
        cells = h["cells"][:][idx]
        pbc = h["pbc"][:][idx]
        energy = h["energy"][:][idx]
        sources = [s.decode() if isinstance(s, bytes) else s for s in h["sources"][:][idx]]
        tags = [s.decode() if isinstance(s, bytes) else s for s in h["tags"][:][idx]] if "tags" in h else [None] * len(idx)
    rows = np.concatenate([np.arange(ptr_all[k], ptr_all[k + 1]) for k in idx]) - lo if len(idx) else np.zeros(0, int)
    nat = np.diff(ptr_all)[idx]
    ptr = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(nat, out=ptr[1:])
    numbers, positions = numbers[rows], positions[rows]
    forces = forces[rows] if forces is not None else None
    syms = np.array(chemical_symbols)[numbers]
    els = tuple(sorted(set(syms.tolist()))) if elements is None else tuple(elements)
    bad = sorted(set(syms.tolist()) - set(els))
    if bad:
        k = int(np.searchsorted(ptr, np.nonzero(np.isin(syms, bad))[0][0], side="right") - 1)
        raise DataError(f"{path}: image {idx[k]}: element(s) {', '.join(bad)} not covered by the model")
    for name, arr, per_atom in (("energy", energy, False), ("forces", forces, True), ("positions", positions, True)):
        if arr is None:
            continue
        finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if not finite.all():
            k = int(np.nonzero(~finite)[0][0])
            img = int(np.searchsorted(ptr, k, side="right") - 1) if per_atom else k
            raise DataError(f"{path}: image {idx[img]}: {name} contain NaN or inf")
    species = species_indices(syms, els)
    return Structures(els, species, positions, cells, pbc, ptr, energy, forces, sources), tags
