"""Fingerprint cache: HDF5 files keyed by image and fingerprint definition.

The cache is a folder.  Every run (every rank) that computes fingerprints of images the
cache lacks adds one new file ``fp-<definition hash>-<unique>.h5`` holding them; files are
written to a temporary name, fsynced and renamed, and carry a CRC of their contents, so a
crash mid-write never leaves an entry that a later run trusts.  Files are never modified
after they appear, so any number of ranks can read them at once (HDF5 file locking off),
and entries are reused whatever the rank count that made them.

Key of an image: SHA-1 of its atomic numbers (species within the definition's elements),
positions, cell and pbc (exact bytes).  Key of a definition: SHA-1 of the full
symmetry-function list, the cutoff, the derivative dtype and the hpcpot version.

Per file: ``keys`` (n, 20 bytes), ``atom_ptr`` (n+1), ``G`` (atoms, n_max), ``pair_ptr``
(n+1), ``centre``/``partner`` (image-local atom indices), ``kind``, ``len`` (values per
pair), ``values``; attributes ``definition``, ``crc``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import uuid
import zlib

import numpy as np

from .. import __version__
from ..potential.fingerprints import DERIVATIVE_LAYOUT, DerivativeBlocks, compute_fingerprints
from ..potential.symmetry import SymmetryFunctions


def definition_key(sf: SymmetryFunctions, with_derivs: bool, dtype) -> str:
    """Hash of what the entries depend on; the hpcpot version is part of it, so that entries
    from another version (whose kernels may differ) are never reused."""
    blob = json.dumps([sf.to_dict(), bool(with_derivs), np.dtype(dtype).str, __version__, DERIVATIVE_LAYOUT], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def image_keys(st) -> list[bytes]:
    keys = []
    for k in range(st.n_images):  # one hash per image (not per atom)
        a0, a1 = st.atom_ptr[k], st.atom_ptr[k + 1]
        h = hashlib.sha1()
        for arr in (st.species[a0:a1].astype(np.int64), st.positions[a0:a1], st.cells[k], st.pbc[k]):
            h.update(np.ascontiguousarray(arr).tobytes())
        keys.append(h.digest())
    return keys


def _crc(h) -> int:
    c = 0
    for name in ("keys", "atom_ptr", "G", "pair_ptr", "centre", "partner", "kind", "len", "values"):
        c = zlib.crc32(np.ascontiguousarray(h[name][()]).tobytes(), c)
    return c


def _open(path: str):
    import h5py

    return h5py.File(path, "r", locking=False)


class FingerprintCache:
    """Look up and add fingerprints of a shard; ``log`` gets warnings about bad files."""

    def __init__(self, folder: str, sf: SymmetryFunctions, with_derivs: bool, dtype, log=print):
        self.folder = folder
        self.sf = sf
        self.with_derivs = with_derivs
        self.dtype = np.dtype(dtype)
        self.defkey = definition_key(sf, with_derivs, dtype)
        self.log = log
        self.hits = 0
        self.misses = 0

    def _files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.folder, f"fp-{self.defkey}-*.h5")))

    def _index(self, wanted: set[bytes]) -> dict[bytes, tuple[str, int]]:
        """key -> (file, image index) for the wanted keys found in valid files."""
        found: dict[bytes, tuple[str, int]] = {}
        for path in self._files():
            try:
                with _open(path) as h:
                    if h.attrs.get("definition") != self.defkey or int(h.attrs["crc"]) != _crc(h):
                        raise ValueError("checksum mismatch")
                    keys = [bytes(k) for k in h["keys"][()]]
            except Exception as exc:  # truncated/corrupted: never trust it
                self.log(f"warning: fingerprint cache file {path} is damaged ({type(exc).__name__}: {exc}); ignoring it")
                continue
            for i, k in enumerate(keys):
                if k in wanted and k not in found:
                    found[k] = (path, i)
        return found

    def compute(self, st, progress=None) -> tuple[np.ndarray, DerivativeBlocks | None]:
        """Like :func:`compute_fingerprints` on ``st``, reusing cached images and adding
        the rest to the cache."""
        keys = image_keys(st)
        found = self._index(set(keys))
        hit = np.array([k in found for k in keys], bool)
        self.hits, self.misses = int(hit.sum()), int((~hit).sum())
        parts: dict[int, tuple] = {}
        # read cached images grouped by file, in contiguous runs
        by_file: dict[str, list[tuple[int, int]]] = {}
        for j in np.nonzero(hit)[0]:
            f, i = found[keys[j]]
            by_file.setdefault(f, []).append((i, int(j)))
        for f, lst in by_file.items():
            idx = np.array([i for i, _ in lst])
            lo, hi = int(idx.min()), int(idx.max()) + 1
            with _open(f) as h:  # one contiguous read per file: the span of images needed
                ap, pp = h["atom_ptr"][()], h["pair_ptr"][()]
                Gs = h["G"][ap[lo] : ap[hi]]
                if self.with_derivs:
                    lens_all = h["len"][pp[lo] : pp[hi]]
                    vp = np.zeros(len(lens_all) + 1, np.int64)
                    np.cumsum(lens_all, out=vp[1:])
                    cs, ps, ks = (h[n][pp[lo] : pp[hi]] for n in ("centre", "partner", "kind"))
                    v0 = int(h["len"][: pp[lo]].sum()) if pp[lo] else 0
                    vs = h["values"][v0 : v0 + vp[-1]]
            for i, j in lst:
                G = Gs[ap[i] - ap[lo] : ap[i + 1] - ap[lo]]
                if self.with_derivs:
                    p0, p1 = pp[i] - pp[lo], pp[i + 1] - pp[lo]
                    parts[j] = (G, cs[p0:p1], ps[p0:p1], ks[p0:p1], lens_all[p0:p1], vs[vp[p0] : vp[p1]])
                else:
                    parts[j] = (G,)
        miss = np.nonzero(~hit)[0]
        if len(miss):
            sub = st.subset(miss)
            G, b = compute_fingerprints(sub, self.sf, self.with_derivs, self.dtype, progress=progress)
            self._write(sub, [keys[j] for j in miss], G, b)
            for n, j in enumerate(miss):
                a0, a1 = sub.atom_ptr[n], sub.atom_ptr[n + 1]
                if self.with_derivs:
                    p0, p1 = b.image_ptr[n], b.image_ptr[n + 1]
                    parts[int(j)] = (G[a0:a1], b.centre[p0:p1] - a0, b.partner[p0:p1] - a0, b.kind[p0:p1],
                                     np.diff(b.ptr[p0 : p1 + 1]), b.values[b.ptr[p0] : b.ptr[p1]])  # fmt: skip
                else:
                    parts[int(j)] = (G[a0:a1],)
        return self._assemble(st, parts)

    def _assemble(self, st, parts) -> tuple[np.ndarray, DerivativeBlocks | None]:
        order = range(st.n_images)
        G = np.zeros((len(st.species), self.sf.n_max))
        for j in order:
            G[st.atom_ptr[j] : st.atom_ptr[j + 1]] = parts[j][0]
        if not self.with_derivs:
            return G, None
        off = st.atom_ptr[:-1]
        cen = np.concatenate([parts[j][1].astype(np.int64) + off[j] for j in order]).astype(np.int32)
        par = np.concatenate([parts[j][2].astype(np.int64) + off[j] for j in order]).astype(np.int32)
        kind = np.concatenate([parts[j][3] for j in order]).astype(np.int8)
        lens = np.concatenate([parts[j][4] for j in order]).astype(np.int64)
        vals = np.concatenate([parts[j][5] for j in order]).astype(self.dtype, copy=False)
        ptr = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=ptr[1:])
        npairs = np.array([len(parts[j][1]) for j in order], np.int64)
        iptr = np.zeros(st.n_images + 1, np.int64)
        np.cumsum(npairs, out=iptr[1:])
        return G, DerivativeBlocks(cen, par, kind, ptr, vals, iptr)

    def _write(self, sub, keys: list[bytes], G: np.ndarray, b: DerivativeBlocks | None) -> None:
        import h5py

        os.makedirs(self.folder, exist_ok=True)
        final = os.path.join(self.folder, f"fp-{self.defkey}-{uuid.uuid4().hex[:12]}.h5")
        tmp = final + ".tmp"
        img_of_atom = np.repeat(np.arange(sub.n_images), sub.n_atoms)
        with h5py.File(tmp, "w", locking=False) as h:
            h["keys"] = np.array(keys, dtype="S20").view(np.uint8).reshape(-1, 20) if keys else np.zeros((0, 20), np.uint8)
            h["atom_ptr"] = sub.atom_ptr
            h["G"] = G
            if b is not None:
                h["pair_ptr"] = b.image_ptr
                first = sub.atom_ptr[img_of_atom[b.centre]] if len(b.centre) else np.zeros(0, np.int64)
                h["centre"] = (b.centre - first).astype(np.int32)
                h["partner"] = (b.partner - first).astype(np.int32)
                h["kind"] = b.kind
                h["len"] = np.diff(b.ptr)
                h["values"] = b.values
            else:
                for name, dt in (("centre", np.int32), ("partner", np.int32), ("kind", np.int8), ("len", np.int64)):
                    h[name] = np.zeros(0, dt)
                h["pair_ptr"] = np.zeros(sub.n_images + 1, np.int64)
                h["values"] = np.zeros(0, self.dtype)
            h.attrs["definition"] = self.defkey
            h.attrs["crc"] = _crc(h)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
