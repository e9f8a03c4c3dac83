"""Convert a data set once into an HDF5 file that every MPI rank can slice.

    python -m hpcpot.prepare OUT.h5 FILE_OR_GLOB [...] [--no-forces] [--info-key split]

Formats such as extxyz cannot be read by image index without parsing the whole file; the
HDF5 file can, so 64 ranks each read only their own images.  Layout (units eV, Å):

    /numbers (n_atoms,) int   /positions (n_atoms, 3)   /forces (n_atoms, 3) [optional]
    /cells (n_images, 3, 3)   /pbc (n_images, 3) bool   /energy (n_images,)
    /atom_ptr (n_images + 1,) /sources (n_images,) str  /tags (n_images,) str [optional]
"""

from __future__ import annotations

import argparse
import sys

from .errors import DataError
from .training.data import read_structures
from .training.hdf5 import write_hdf5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcpot.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("output", help="HDF5 file to write (refuses to overwrite without --overwrite)")
    ap.add_argument("inputs", nargs="+", help="files or globs ASE can read")
    ap.add_argument("--no-forces", action="store_true", help="energies only")
    ap.add_argument("--info-key", default="", help="atoms.info key to keep as a tag (e.g. split)")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    from .files import refuse_existing

    try:
        refuse_existing([a.output], a.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        st, tags = read_structures(a.inputs, need_forces=not a.no_forces, info_key=a.info_key)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_hdf5(a.output, st, tags if a.info_key else None)
    print(f"wrote {a.output}: {st.n_images} images, {len(st.species)} atoms, elements {', '.join(st.elements)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
