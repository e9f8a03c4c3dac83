"""Writing the user's files safely: atomically, and never over a file that exists.

Used by both halves (the model file, checkpoints, reports).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from typing import BinaryIO


def refuse_existing(paths: Iterable[str], overwrite: bool) -> None:
    """FileExistsError naming the first of ``paths`` that exists, unless ``overwrite``:
    output files of the user's are never replaced silently."""
    for path in paths:
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; refusing to overwrite it (use --overwrite)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename over it.

    A kill or an I/O error (disk full) at any instant leaves the old file or the new one,
    never a half-written one; the error propagates with the path in its message."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=d)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a model or plot is for the group too
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise OSError(exc.errno, f"writing {path} failed: {exc.strerror or exc}") from exc
        raise
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
