"""Reading and validating training data (energies in eV, forces in eV/Å, positions in Å).

Any file ASE reads (``.traj``, extxyz, ASE db, gzip-compressed too) or an HDF5 file made by
``python -m hpcpot.prepare``.  Every image is checked up front; a problem raises
:class:`DataError` naming the file, the image index and the field.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import numpy as np

MIN_DISTANCE = 0.3  # Å; closer atoms are almost surely a unit or parsing error (checked in fingerprints)


class DataError(ValueError):
    """Bad input data; the message names file, image and field."""


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
        )


def expand_paths(patterns: list[str]) -> list[str]:
    """Expand globs; a pattern that matches nothing or a missing file is an error."""
    out: list[str] = []
    for pat in patterns:
        if any(ch in pat for ch in "*?["):
            hits = sorted(glob.glob(pat))
            if not hits:
                raise DataError(f"{pat}: no file matches this pattern")
            out.extend(hits)
        else:
            if not os.path.isfile(pat):
                raise DataError(f"{pat}: file not found")
            out.append(pat)
    return out


def _read_file(path: str, index: str) -> list:
    import ase.io

    try:
        # parallel=False: under MPI, ASE's default reads on its rank 0 and broadcasts in a
        # collective of its own, which would pair with ours (hpcpot does the MPI itself)
        images = ase.io.read(path, index, parallel=False)
    except StopIteration:
        images = []
    except Exception as exc:  # ASE raises many types for unreadable files
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty") from None
        raise DataError(f"{path}: ASE cannot read it: {type(exc).__name__}: {exc}") from None
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise DataError(f"{path}: the file is empty (no images)")
    return images


def check_image(atoms, source: str, need_forces: bool, elements: tuple[str, ...] | None) -> tuple[float, np.ndarray | None]:
    """Validate one ASE Atoms; returns (energy, forces or None). Raises DataError."""
    n = len(atoms)
    if n == 0:
        raise DataError(f"{source}: image has no atoms")
    pos = atoms.get_positions()
    if not np.all(np.isfinite(pos)):
        raise DataError(f"{source}: positions contain NaN or inf")
    if elements is not None:
        bad = sorted(set(atoms.get_chemical_symbols()) - set(elements))
        if bad:
            raise DataError(
                f"{source}: element(s) {', '.join(bad)} not covered by the model (elements: {', '.join(elements)})"
            )
    if atoms.calc is None:
        raise DataError(f"{source}: energy missing (the image has no energy or forces attached)")
    from ase.calculators.singlepoint import SinglePointCalculator

    # Stored results are read directly: going through get_potential_energy()/get_forces()
    # re-compares the atoms with the calculator's copy, ~0.5 ms per image (1.5 s of the 2.9 s
    # it took to read and check the 3000 reference images).  Forces straight from the
    # results are the unconstrained ones, as apply_constraint=False gives.
    stored = atoms.calc.results if isinstance(atoms.calc, SinglePointCalculator) else None
    try:
        energy = stored["energy"] if stored is not None and "energy" in stored else atoms.get_potential_energy()
    except Exception:
        raise DataError(f"{source}: energy missing") from None
    if energy is None or not np.isfinite(energy):
        raise DataError(f"{source}: energy is {energy} (must be a finite number in eV)")
    forces = None
    if need_forces:
        try:
            # apply_constraint=False: FixAtoms would otherwise zero the fixed atoms' forces
            f = stored["forces"] if stored is not None and "forces" in stored else atoms.get_forces(apply_constraint=False)
            forces = np.asarray(f, dtype=float)
        except Exception:
            raise DataError(f"{source}: forces missing (needed because force_coefficient > 0)") from None
        if forces.shape != (n, 3):
            raise DataError(f"{source}: forces have shape {forces.shape}, expected ({n}, 3)")
        if not np.all(np.isfinite(forces)):
            bad_atom = int(np.argwhere(~np.isfinite(forces))[0, 0])
            raise DataError(f"{source}: forces contain NaN or inf (atom {bad_atom})")
    return float(energy), forces


def species_indices(symbols: np.ndarray, elements: tuple[str, ...]) -> np.ndarray:
    """Index of each symbol in ``elements`` (int64, one lookup per distinct symbol)."""
    uniq, inv = np.unique(np.asarray(symbols), return_inverse=True)
    return np.array([elements.index(u) for u in uniq], np.int64)[inv].reshape(-1)


def atoms_to_structures(
    items: list, need_forces: bool, elements: tuple[str, ...] | None = None
) -> Structures:
    """Validate ``[(atoms, source_label), ...]`` and pack them as Structures.

    ``elements``: the model's elements (others are an error); None: those present, sorted.
    """
    symbols_l, pos_l, cells, pbcs, nat, energies, forces_l, sources = [], [], [], [], [], [], [], []
    for atoms, src in items:
        e, f = check_image(atoms, src, need_forces, elements)
        symbols_l.append(np.asarray(atoms.get_chemical_symbols()))
        pos_l.append(atoms.get_positions())
        cells.append(atoms.cell.array.copy())
        pbcs.append(atoms.pbc.copy())
        nat.append(len(atoms))
        energies.append(e)
        if need_forces:
            forces_l.append(f)
        sources.append(src)
    symbols = np.concatenate(symbols_l) if symbols_l else np.zeros(0, "<U2")
    els = tuple(sorted(set(symbols.tolist()))) if elements is None else tuple(elements)
    species = species_indices(symbols, els)
    ptr = np.zeros(len(nat) + 1, np.int64)
    np.cumsum(nat, out=ptr[1:])
    return Structures(
        els,
        species,
        np.concatenate(pos_l) if pos_l else np.zeros((0, 3)),
        np.array(cells, float).reshape(-1, 3, 3),
        np.array(pbcs, bool).reshape(-1, 3),
        ptr,
        np.array(energies, float),
        (np.concatenate(forces_l) if forces_l else np.zeros((0, 3))) if need_forces else None,
        sources,
    )


def concat_structures(parts: list[Structures], elements: tuple[str, ...]) -> Structures:
    """Join Structures (possibly with different element tuples) under ``elements``."""
    sp, pos, cells, pbc, nat, en, fr, src = [], [], [], [], [], [], [], []
    with_f = all(p.forces is not None for p in parts)
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
    )


def read_structures(
    patterns: list[str],
    need_forces: bool,
    elements: tuple[str, ...] | None = None,
    index: str = ":",
    info_key: str = "",
) -> tuple[Structures, list]:
    """Read and validate every image of the files (globs allowed), in one process.

    Returns the Structures (elements sorted by symbol, or the given ``elements``) and, per
    image, ``atoms.info[info_key]`` (None where absent) when ``info_key`` is set.
    """
    from .prepare import is_hdf5, read_hdf5

    parts, tags = [], []
    for path in expand_paths(patterns):
        if is_hdf5(path):
            s, t = read_hdf5(path, need_forces=need_forces, elements=elements, info_key=info_key)
        else:
            images = _read_file(path, index)
            s = atoms_to_structures([(a, f"{path}: image {k}") for k, a in enumerate(images)], need_forces, elements)
            t = [a.info.get(info_key) if info_key else None for a in images]
        parts.append(s)
        tags.extend(t)
    els = elements or tuple(sorted(set().union(*(p.elements for p in parts))))
    return concat_structures(parts, els), tags


TRAIN_TAGS = {"train", "training"}
VALIDATION_TAGS = {"validation", "valid", "val", "test"}


def split_indices(
    n: int, fraction: float, seed: int, tags: list | None = None, key: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation image indices: from ``tags`` (values of ``atoms.info[key]``) when
    given, else a random ``fraction`` for validation drawn with ``seed``."""
    if key:
        assert tags is not None
        train, val = [], []
        for k, t in enumerate(tags):
            tl = str(t).lower()
            if tl in TRAIN_TAGS:
                train.append(k)
            elif tl in VALIDATION_TAGS:
                val.append(k)
            else:
                raise DataError(
                    f"image {k}: atoms.info['{key}'] is {t!r}; expected one of "
                    f"{sorted(TRAIN_TAGS | VALIDATION_TAGS)}"
                )
        return np.array(train, np.int64), np.array(val, np.int64)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
