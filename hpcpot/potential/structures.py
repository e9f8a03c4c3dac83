"""Structures: a set of atomic configurations (images) as flat arrays, the input of every
kernel of the potential.  Positions and cells in Å, energies in eV, forces in eV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

MIN_DISTANCE = 0.3  # Å; closer atoms are almost surely a unit or parsing error (checked in fingerprints)


@dataclass
class Structures:
    """A set of images (a shard) as flat arrays.

    Atoms of image ``j`` are ``atom_ptr[j]:atom_ptr[j+1]``.  ``species`` indexes
    ``elements``.  Energies are total energies in eV, forces in eV/Å (``None`` when not
    loaded), positions and cells in Å.
    """

    elements: tuple[str, ...]
    species: np.ndarray  # int64 (n_atoms,)
    positions: np.ndarray  # float64 (n_atoms, 3)
    cells: np.ndarray  # float64 (n_images, 3, 3)
    pbc: np.ndarray  # bool (n_images, 3)
    atom_ptr: np.ndarray  # int64 (n_images + 1,)
    energy: np.ndarray  # float64 (n_images,)
    forces: np.ndarray | None  # float64 (n_atoms, 3)
    sources: list[str] = field(default_factory=list)  # "file:index" per image
    # reference stress (n_images, 6) in eV/Å³, ASE's Voigt order and sign, NaN rows for images
    # without one; None when no image has one (only hpcpot.evaluate reads it)
    stress: np.ndarray | None = None

    @property
    def n_images(self) -> int:
        return len(self.energy)

    @property
    def n_atoms(self) -> np.ndarray:
        return np.diff(self.atom_ptr)

    def slice(self, lo: int, hi: int) -> Structures:
        """Images lo..hi-1 as views (no copy)."""
        a0, a1 = self.atom_ptr[lo], self.atom_ptr[hi]
        return Structures(
            self.elements, self.species[a0:a1], self.positions[a0:a1], self.cells[lo:hi], self.pbc[lo:hi],
            self.atom_ptr[lo : hi + 1] - a0, self.energy[lo:hi],
            None if self.forces is None else self.forces[a0:a1], self.sources[lo:hi],
            None if self.stress is None else self.stress[lo:hi],
        )  # fmt: skip

    def subset(self, idx: np.ndarray) -> Structures:
        """The images ``idx`` (in that order) as a new Structures."""
        idx = np.asarray(idx, np.int64)
        n = self.n_atoms[idx]
        ptr = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(n, out=ptr[1:])
        rows = (
            np.concatenate([np.arange(self.atom_ptr[k], self.atom_ptr[k + 1]) for k in idx])
            if len(idx)
            else np.zeros(0, np.int64)
        )
        return Structures(
            self.elements,
            self.species[rows],
            self.positions[rows],
            self.cells[idx],
            self.pbc[idx],
            ptr,
            self.energy[idx],
            None if self.forces is None else self.forces[rows],
            [self.sources[k] for k in idx],
            None if self.stress is None else self.stress[idx],
        )


def species_indices(symbols: np.ndarray, elements: tuple[str, ...]) -> np.ndarray:
    """Index of each symbol in ``elements`` (int64, one lookup per distinct symbol)."""
    uniq, inv = np.unique(np.asarray(symbols), return_inverse=True)
    return np.array([elements.index(u) for u in uniq], np.int64)[inv].reshape(-1)


def structure_arrays(atoms, elements: tuple[str, ...]):
    """One ASE Atoms as a one-image Structures (no energy needed)."""
    syms = atoms.get_chemical_symbols()
    unknown = sorted(set(syms) - set(elements))
    if unknown:
        raise ValueError(f"element(s) {', '.join(unknown)} not in the model's elements {', '.join(elements)}")
    species = species_indices(np.array(syms), tuple(elements))
    return Structures(
        tuple(elements), species, atoms.get_positions(), atoms.cell.array[None].copy(),
        atoms.pbc[None].copy(), np.array([0, len(atoms)]), np.zeros(1), None, ["<atoms>"],
    )  # fmt: skip


def concat_structures(parts: list[Structures], elements: tuple[str, ...]) -> Structures:
    """Join Structures (possibly with different element tuples) under ``elements``."""
    sp, pos, cells, pbc, nat, en, fr, src = [], [], [], [], [], [], [], []
    with_f = all(p.forces is not None for p in parts)
    with_s = any(p.stress is not None for p in parts)
    for p in parts:
        missing = sorted(set(p.elements) - set(elements))
        if missing:
            used = set(np.asarray(p.elements)[np.unique(p.species)].tolist()) if len(p.species) else set()
            if used & set(missing):
                raise DataError(f"element(s) {', '.join(missing)} in the data are not among the model's elements")
        lut = np.array([elements.index(e) if e in elements else -1 for e in p.elements], np.int64)
        sp.append(lut[p.species] if len(p.species) else p.species)
        pos.append(p.positions)
        cells.append(p.cells)
        pbc.append(p.pbc)
        nat.append(p.n_atoms)
        en.append(p.energy)
        if with_f:
            fr.append(p.forces)
        src.extend(p.sources)
    stress = [p.stress if p.stress is not None else np.full((p.n_images, 6), np.nan) for p in parts]
    cat = np.concatenate
    n = cat(nat) if nat else np.zeros(0, np.int64)
    ptr = np.zeros(len(n) + 1, np.int64)
    np.cumsum(n, out=ptr[1:])
    return Structures(
        tuple(elements),
        cat(sp) if sp else np.zeros(0, np.int64),
        cat(pos) if pos else np.zeros((0, 3)),
        cat(cells) if cells else np.zeros((0, 3, 3)),
        cat(pbc) if pbc else np.zeros((0, 3), bool),
        ptr,
        cat(en) if en else np.zeros(0),
        (cat(fr) if fr else np.zeros((0, 3))) if with_f else None,
        src,
        cat(stress) if with_s else None,
    )
