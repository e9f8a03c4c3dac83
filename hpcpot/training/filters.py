"""Data filters applied before the train/validation split (aenet's MAXENERGY and the like).

* ``max_energy_above_min`` (eV/atom): drop images whose energy per atom lies more than this
  above the lowest energy per atom of the training files.  The comparison is on
  (E − Σ_atoms E_ref(element)) / N, so that compositions compare: E_ref from
  ``reference_energies`` (eV per atom of each element) when given, else fitted by least
  squares to all images (for one element this is E / N up to a constant).  On the TiO2 set,
  E / N alone spans 66 eV/atom by composition; with fitted references, 6885 of 7815 images
  lie within 2 eV/atom of the lowest.
* ``max_force`` (eV/Å): drop images whose largest atomic force |F_i| exceeds this.

Every rank reads an equal share of the images once to summarise them (N floats gathered),
so every rank derives the same kept list; each then reads its own shard as before.  For
``.traj`` input that is a second read of the images; extxyz/db input is already in memory
and HDF5 reads only the arrays it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..parallel import SerialComm
from ..potential.structures import Structures
from .data import ImageSet


class GlobalDataError(DataError):
    """A filter outcome that every rank reaches alike (report it once)."""


@dataclass
class FilterResult:
    """What the filters kept and dropped, the same on every rank."""

    kept: np.ndarray  # global image indices kept (sorted)
    dropped: list[tuple[str, str, float]]  # (file: image k, reason, value)
    lowest: float  # lowest energy per atom of the training images (eV/atom, after references)
    references: dict[str, float]  # the per-element energies used (given or fitted), eV/atom

    def per_file(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, _, _ in self.dropped:
            f = name.rsplit(": image ", 1)[0]
            out[f] = out.get(f, 0) + 1
        return out


def composition(st: Structures, n_elements: int | None = None) -> np.ndarray:
    """Atoms of each element per image, (n_images, n_elements) in ``st.elements`` order."""
    A = np.zeros((st.n_images, len(st.elements) if n_elements is None else n_elements))
    np.add.at(A, (np.repeat(np.arange(st.n_images), st.n_atoms), st.species), 1.0)
    return A


def largest_force(st: Structures) -> np.ndarray:
    """max_i |F_i| per image, eV/Å (0 for an image without forces loaded)."""
    if st.forces is None or len(st.forces) == 0:
        return np.zeros(st.n_images)
    return np.maximum.reduceat(np.linalg.norm(st.forces, axis=1), st.atom_ptr[:-1])


def summarise(comm: SerialComm, images: ImageSet, need_forces: bool):
    """Per image of all ranks, the same on every rank: energy (eV), composition
    (n_images, n_elements) over ``elements`` (sorted), largest force (eV/Å) and label."""
    eq = np.linspace(0, images.n, comm.size + 1).astype(np.int64)
    st = images.read(np.arange(eq[comm.rank], eq[comm.rank + 1]), need_forces)
    parts = comm.allgather((st.elements, composition(st), st.energy, largest_force(st), list(st.sources)))
    elements = tuple(sorted(set().union(*(p[0] for p in parts))))
    A = np.zeros((sum(len(p[2]) for p in parts), len(elements)))
    row = 0
    for els, comp, energy, _, _ in parts:
        for j, el in enumerate(els):
            A[row : row + len(energy), elements.index(el)] = comp[:, j]
        row += len(energy)
    energy = np.concatenate([p[2] for p in parts])
    fmax = np.concatenate([p[3] for p in parts])
    names = [n for p in parts for n in p[4]]
    return elements, A, energy, fmax, names


def energy_per_atom(elements: tuple[str, ...], A: np.ndarray, energy: np.ndarray,
                    references: dict[str, float]) -> tuple[np.ndarray, dict[str, float]]:  # fmt: skip
    """(E − Σ_atoms E_ref) / N per image (eV/atom) and the E_ref used: ``references`` when
    given (elements without one count 0), else least squares over these images."""
    if references:
        ref = np.array([references.get(el, 0.0) for el in elements])
    else:
        ref = np.linalg.lstsq(A, energy, rcond=None)[0]
    return (energy - A @ ref) / np.maximum(A.sum(axis=1), 1), dict(zip(elements, ref.tolist(), strict=True))


def apply_filters(
    comm: SerialComm, images: ImageSet, max_energy_above_min: float, max_force: float,
    references: dict[str, float], need_forces: bool, lowest: float | None = None,
) -> FilterResult:  # fmt: skip
    """Images of ``images`` that pass both filters (a limit <= 0 is off).  ``lowest``: the
    energy-per-atom floor to measure from (default: this set's own lowest); a separate
    validation set passes the training set's ``lowest`` and ``references``."""
    elements, A, energy, fmax, names = summarise(comm, images, need_forces and max_force > 0)
    epa, used = energy_per_atom(elements, A, energy, references)
    low = float(epa.min()) if lowest is None else lowest
    drop_e = (epa - low > max_energy_above_min) if max_energy_above_min > 0 else np.zeros(len(epa), bool)
    drop_f = (fmax > max_force) & ~drop_e if max_force > 0 else np.zeros(len(epa), bool)
    dropped = [
        (names[k], "energy_above_min", float(epa[k] - low)) if drop_e[k] else (names[k], "max_force", float(fmax[k]))
        for k in np.nonzero(drop_e | drop_f)[0]
    ]
    kept = np.nonzero(~(drop_e | drop_f))[0].astype(np.int64)
    if len(kept) == 0:
        raise GlobalDataError(
            f"the data filters drop every image of {', '.join(s.path for s in images.sources)} "
            f"(max_energy_above_min = {max_energy_above_min} eV/atom, max_force = {max_force} eV/Å)"
        )
    return FilterResult(kept, dropped, low, used)


def report(result: FilterResult, n_total: int, what: str, max_energy_above_min: float, max_force: float) -> list[str]:
    """Log lines for a filter result."""
    n_e = sum(1 for d in result.dropped if d[1] == "energy_above_min")
    n_f = len(result.dropped) - n_e
    parts = []
    if max_energy_above_min > 0:
        refs = ", ".join(f"{el} {e:.4f}" for el, e in result.references.items())
        parts.append(f"{n_e} more than {max_energy_above_min:g} eV/atom above the lowest "
                     f"({result.lowest:.4f} eV/atom after per-element references {refs} eV)")  # fmt: skip
    if max_force > 0:
        parts.append(f"{n_f} with a force above {max_force:g} eV/Å")
    lines = [f"filters: kept {len(result.kept)} of {n_total} {what} images; dropped " + " and ".join(parts)]
    lines += [f"  {f}: {n} dropped" for f, n in result.per_file().items()]
    return lines


def write_list(path: str, result: FilterResult) -> None:
    """The dropped images as a tab-separated file: source, reason, value (eV/atom or eV/Å)."""
    from ..files import atomic_write_bytes

    rows = ["# image\treason\tvalue (energy_above_min: eV/atom above the lowest; max_force: eV/Å)"]
    rows += [f"{name}\t{reason}\t{value:.6g}" for name, reason, value in result.dropped]
    data = ("\n".join(rows) + "\n").encode()
    atomic_write_bytes(path, lambda fh: fh.write(data))
