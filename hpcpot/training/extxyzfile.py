"""Reading extended XYZ files for training without importing ``ase.io``: the common layout only.

Real DFT sets come as extended XYZ (``.extxyz``/``.xyz``, often gzip-compressed): per image
an atom count, a comment line of ``key=value`` pairs (``Lattice``, ``Properties``, ``pbc``,
``energy``, tags such as ``split``) and one line per atom.  Training needs the species,
positions, forces, cell, pbc and energy.  This reader handles files whose comment lines use
plain or double-quoted values and whose ``Properties`` are ``species:S:1:pos:R:3`` with
optionally ``forces:R:3`` (what ASE writes for a structure with energy and forces).  Anything
else, in any image (another column, a ``stress`` or other per-configuration result, escapes,
braces, single quotes), raises :class:`NotPlainExtxyz` and the caller reads the whole file
through ASE, whose conventions this follows: the cell's rows are ``Lattice``'s three vectors,
``pbc`` defaults to periodic when a ``Lattice`` is given, ``energy`` and the ``forces``
column are the stored results.

Why: rank 0 parses such a file and broadcasts it; through ASE that imported ``ase.io``
(scipy with it: +39 MiB on rank 0) and took 3.4 s for TiO2's 7815 images.
"""

from __future__ import annotations

import re

import numpy as np

# key=value, key="quoted value" or a bare key; no escapes (those go to ASE)
_TOKEN = re.compile(r'\s*([A-Za-z_][\w.-]*)(?:\s*=\s*(?:"([^"\\]*)"|([^\s"\'{}\\]+)))?')
# per-configuration results other than energy (the only one this reader takes)
_OTHER_RESULTS = {"free_energy", "stress", "virial", "dipole", "magmom", "charges", "magmoms", "forces", "energies",
                  "stresses", "dielectric_tensor", "born_effective_charges", "polarization"}  # fmt: skip
_BOOLS = {"T": True, "True": True, "true": True, "F": False, "False": False, "false": False}


class NotPlainExtxyz(Exception):
    """The file uses extended-XYZ features this reader leaves to ASE."""


def _fields(line: str) -> dict:
    out = {}
    pos = 0
    line = line.rstrip("\n")
    while pos < len(line):
        if line[pos:].strip() == "":
            break
        m = _TOKEN.match(line, pos)
        if m is None or m.end() == pos:
            raise NotPlainExtxyz(f"comment line not understood near {line[pos:pos + 20]!r}")
        key, quoted, bare = m.group(1), m.group(2), m.group(3)
        if key in out:
            raise NotPlainExtxyz(f"key {key} twice")
        out[key] = quoted if quoted is not None else (bare if bare is not None else True)
        pos = m.end()
    return out


def _bools(text: str) -> np.ndarray:
    words = text.split()
    if len(words) != 3 or any(w not in _BOOLS for w in words):
        raise NotPlainExtxyz(f"pbc {text!r}")
    return np.array([_BOOLS[w] for w in words])


def _scalar(text):
    """A tag's value as ASE gives it for a plain scalar (int, float, bool or str)."""
    if text is True:
        return True
    if any(ch.isspace() for ch in text):
        raise NotPlainExtxyz("a tag with spaces (ASE would make it an array)")
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return _BOOLS.get(text, text)


def read_frames(text, tags_key: str = ""):
    """Yield per image (species (n,) str, positions (n, 3) Å, cell (3, 3) Å, pbc (3,),
    energy eV or None, forces (n, 3) eV/Å or None, tag) from the lines of ``text``."""
    lines = iter(text)
    for first in lines:
        if not first.strip():
            continue  # blank lines between or after frames, as ASE allows
        try:
            n = int(first)
        except ValueError:
            raise NotPlainExtxyz(f"atom count line {first.strip()[:20]!r}") from None
        info = _fields(next(lines, ""))
        props = info.pop("Properties", None)
        if props not in ("species:S:1:pos:R:3", "species:S:1:pos:R:3:forces:R:3"):
            raise NotPlainExtxyz(f"Properties={props}")
        if (set(info) & _OTHER_RESULTS) or "Lattice" not in info and "pbc" in info:
            raise NotPlainExtxyz("other per-configuration results, or pbc without a Lattice")
        if "Lattice" in info:
            lat = np.array(info.pop("Lattice").split(), float)
            if lat.shape != (9,):
                raise NotPlainExtxyz("Lattice")
            cell = lat.reshape(3, 3)
            pbc = _bools(info.pop("pbc")) if "pbc" in info else np.ones(3, bool)
        else:
            cell, pbc = np.zeros((3, 3)), np.zeros(3, bool)
        energy = float(info.pop("energy")) if "energy" in info else None
        tag = _scalar(info[tags_key]) if tags_key and tags_key in info else None
        ncol = 7 if props.endswith("forces:R:3") else 4
        block = [next(lines, "") for _ in range(n)]
        words = " ".join(block).split()
        if len(words) != n * ncol:
            raise NotPlainExtxyz("atom lines do not match Properties")
        cols = np.array(words).reshape(n, ncol)
        species = cols[:, 0]
        num = cols[:, 1:].astype(float)
        yield species, num[:, :3], cell, pbc, energy, (num[:, 3:6] if ncol == 7 else None), tag
