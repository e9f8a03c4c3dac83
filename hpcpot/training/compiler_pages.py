"""Hand LLVM's code pages back once a training's numba kernels are loaded.

numba compiles and loads its kernels through llvmlite's copy of LLVM (libllvmlite.so, ~150
MiB mapped).  Loading even cached kernels touches much of it (creating the JIT, linking the
object code): after the warm-up a training process had ~67 MiB of that library resident
that nothing runs again unless something new is compiled.  Those pages are clean and
file-backed, so dropping them from the process (``madvise(MADV_DONTNEED)``) loses nothing:
they stay in the page cache, shared by every rank on the node, and a later compilation
faults back in what it needs.  What it changes is each rank's resident set, which is what
batch systems that sum RSS per job (SLURM's jobacct_gather/linux without UsePss) count 64
times on a 64-rank node: a 1-rank reference-set training peaked at 344 MiB instead of 411.

Only mappings that are not writable and hold no private (copy-on-write) page are dropped:
text and read-only data exactly as in the file.  Anything unexpected (no /proc, no glibc)
leaves the process as it is.
"""

from __future__ import annotations

import ctypes
import re

MADV_DONTNEED = 4  # Linux
LIBRARIES = ("libllvmlite",)  # used only to compile and load kernels

_HEAD = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def _mappings(smaps: str = "/proc/self/smaps") -> list[dict]:
    out: list[dict] = []
    with open(smaps) as fh:
        for line in fh:
            m = _HEAD.match(line)
            if m:
                out.append({"lo": int(m[1], 16), "hi": int(m[2], 16), "perm": m[3], "path": m[4]})
            elif out and line.startswith(("Rss:", "Anonymous:")):
                k, _, v = line.partition(":")
                out[-1][k] = int(v.split()[0]) * 1024
    return out


def release_compiler_pages() -> int:
    """Drop this process's resident pages of LLVM's library (clean, file-backed ones only);
    returns the bytes dropped (0 where it cannot tell or cannot drop)."""
    try:
        maps = _mappings()
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return 0
    dropped = 0
    for m in maps:
        name = m["path"].rsplit("/", 1)[-1]
        if not name.startswith(LIBRARIES) or "w" in m["perm"] or m.get("Anonymous", 1) != 0 or not m.get("Rss"):
            continue
        if madvise(m["lo"], m["hi"] - m["lo"], MADV_DONTNEED) == 0:
            dropped += m["Rss"]
    return dropped
