"""Energies and forces of a batch of structures through the per-element networks.

:class:`Batch` holds the scaled fingerprints and derivatives of any set of structures (one
for the ASE calculator, a chunk for ``hpcpot.evaluate``, a rank's shard for training) and
predicts Ê per structure (eV) and F̂ per atom (eV/Å).  The force kernel also contracts
weighted force residuals with the derivatives, which is what the training loss's gradient
needs; the loss (:mod:`hpcpot.training.loss`) builds on this class rather than copying it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .element_passes import element_forward
from .fingerprints import DerivativeBlocks, compute_fingerprints
from .intrinsics import prefetch
from .network import Layout, forward, input_gradient


@njit(cache=True)
def _scale_derivatives(centre, kind, ptr, values, species, sub_idx, sub_len, factor):
    """values *= factor[species[centre], f] (fingerprint scaling, applied once)."""
    for p in range(centre.shape[0]):
        c = species[centre[p]]
        k = kind[p]
        b = ptr[p]
        L = sub_len[c, k]
        for l in range(L):
            s = factor[c, sub_idx[c, k, l]]
            values[b + l] *= s
            values[b + L + l] *= s
            values[b + 2 * L + l] *= s


# The two index loops below stay out of the fastmath kernel on purpose: with fastmath, LLVM
# turns them into AVX-512/AVX2 gather/scatter instructions, which are slow on AMD Zen (the
# whole force kernel ran 2-3x slower, measured on an EPYC Zen 4).
@njit(cache=True)
def _gather_rows(gk, g, ri, sub_idx, sub_len, c):
    """gk[k, :L] = g[ri, sub_idx[c, k, :L]] for every partner kind k (L = sub_len[c, k]).

    The tables' last kind, the self pair, is never stored: skipping it saved 2.4 ms of 22
    per evaluation (reference set, with the same skip in _scatter_rows)."""
    for k in range(sub_len.shape[1] - 1):
        for l in range(sub_len[c, k]):
            gk[k, l] = g[ri, sub_idx[c, k, l]]


@njit(cache=True)
def _scatter_rows(v, vk, ri, sub_idx, sub_len, c):
    """v[ri, sub_idx[c, k, :L]] += vk[k, :L] for every partner kind k, and vk <- 0."""
    for k in range(sub_len.shape[1] - 1):
        for l in range(sub_len[c, k]):
            v[ri, sub_idx[c, k, l]] += vk[k, l]
            vk[k, l] = 0.0


PREFETCH_MAX = 1 << 17  # derivative values of one image that _force_kernel prefetches (512 KiB in float32)


@njit(cache=True, fastmath=True)
def _force_kernel(
    image_ptr, atom_ptr, centre, partner, kind, ptr, values, species, row,
    sub_idx, sub_len, g, F_ref, wF, Fhat, v, sq, maxabs,
):  # fmt: skip
    """Per image, while its derivatives are in cache: F̂ = −Σ dx/dr·g, residual ΔF, and
    v_i = Σ_m dx_i/dr_m · (wF ΔF_m).  sq[j] = Σ ΔF², maxabs[j] = max |ΔF|.

    No pair (i, i) is stored: with dx_i/dr_i = −Σ_{m≠i} dx_i/dr_m (translation invariance),
    the centre's own force term is the sum of its pairs' terms with the sign flipped, and
    its own residual enters v_i as Σ_m dx_i/dr_m · (r_m − r_i).

    ``v`` may be the same array as ``g`` (training does this: one n_atoms × n_max array
    fewer): an image's rows of g are read only in its first pass, and its rows of v are
    zeroed and written only in its second.

    Pairs of one centre are contiguous (the fingerprint kernel writes them so; were they not,
    the result would be the same, only slower): its rows of g are gathered once per kind into
    gk and its v contributions summed in vk, so the loops over a pair's functions read
    contiguous memory only.  Those loops index ``values`` with unsigned integers (numba
    then drops its negative-index wraparound, which LLVM cannot see through) and run with
    fastmath (vectorised reductions): on the reference set with the auto set (429 MiB of
    float64 derivatives) this kernel took 32 ms against 58 ms for a per-pair gathering
    one; with float32 storage 23 ms against 64 ms (medians of 9, one process).  Unsigned
    indices instead of slices per pair: 21.8 -> 20.4 ms (float32).

    The first pass over an image's derivatives reads them from DRAM and waits for them;
    the second, from cache, does the arithmetic.  So the second pass asks for the next
    image's derivatives (a prefetch per 64-byte cache line of values) while it
    works, and the next first pass finds them in cache: the kernel 40 -> 33 ms on the
    reference set with the auto set (float32, medians on a 2.1 GHz Xeon, the same bits).
    Images whose derivatives would not stay in L2 until then (> PREFETCH_MAX values) are
    left to the hardware prefetcher.
    """
    nk = sub_len.shape[1]
    step = np.uint64(64 // values.itemsize)  # values per cache line: one prefetch each
    # per-pair sums in g's precision: float32 with float32 network passes (values and g are
    # float32 already: twice the lanes and no conversions; the kernel 43 -> 37 ms on the
    # reference set with the auto set, medians on a 2.1 GHz Xeon), float64 otherwise (the
    # same bits as before); forces and their residuals stay float64 either way
    gk = np.empty((nk, g.shape[1]), g.dtype)
    vk = np.zeros((nk, g.shape[1]), g.dtype)
    zero = vk[0, 0]
    rr = np.empty(3, g.dtype)  # a pair's residual difference, rounded to g's precision
    for j in range(image_ptr.shape[0] - 1):
        a0 = atom_ptr[j]
        a1 = atom_ptr[j + 1]
        for m in range(a0, a1):
            Fhat[m, 0] = 0.0
            Fhat[m, 1] = 0.0
            Fhat[m, 2] = 0.0
        pe = image_ptr[j + 1]
        p = image_ptr[j]
        while p < pe:
            i = centre[p]
            c = species[i]
            _gather_rows(gk, g, row[i], sub_idx, sub_len, c)
            sx = 0.0
            sy = 0.0
            sz = 0.0
            while p < pe and centre[p] == i:
                k = kind[p]
                b = np.uint64(ptr[p])  # the pair's x row; y at b + L, z at b + 2L
                L = np.uint64(sub_len[c, k])
                gg = gk[k]
                fx = zero
                fy = zero
                fz = zero
                for l in range(L):
                    gv = gg[l]
                    fx += gv * values[b + l]
                    fy += gv * values[b + L + l]
                    fz += gv * values[b + L + L + l]
                m = partner[p]
                Fhat[m, 0] -= fx
                Fhat[m, 1] -= fy
                Fhat[m, 2] -= fz
                sx += fx
                sy += fy
                sz += fz
                p += 1
            Fhat[i, 0] += sx
            Fhat[i, 1] += sy
            Fhat[i, 2] += sz
        s = 0.0
        mx = 0.0
        for m in range(a0, a1):
            for x in range(3):
                d = Fhat[m, x] - F_ref[m, x]
                s += d * d
                mx = max(mx, abs(d))
                Fhat[m, x] = d * wF[j]  # reuse as the weighted residual
        sq[j] = s
        maxabs[j] = mx
        # this image's rows of g have been read: its rows of v start here (v may be g)
        for m in range(a0, a1):
            vr = v[row[m]]
            for f in range(vr.shape[0]):
                vr[f] = 0.0
        ahead = np.uint64(0)  # from a pair's values to the same place in the next image
        if j + 2 < image_ptr.shape[0] and image_ptr[j + 2] > pe:
            nxt = ptr[pe]
            if ptr[image_ptr[j + 2] - 1] - nxt < PREFETCH_MAX:
                ahead = np.uint64(nxt - ptr[image_ptr[j]])
        pf = ahead > np.uint64(0)
        p = image_ptr[j]
        while p < pe:
            i = centre[p]
            c = species[i]
            ix = Fhat[i, 0]
            iy = Fhat[i, 1]
            iz = Fhat[i, 2]
            while p < pe and centre[p] == i:
                k = kind[p]
                b = np.uint64(ptr[p])
                L = np.uint64(sub_len[c, k])
                vv = vk[k]
                if pf:
                    for t in range(np.uint64(0), L + L + L, step):
                        prefetch(values, b + ahead + t)
                m = partner[p]
                rr[0] = Fhat[m, 0] - ix
                rr[1] = Fhat[m, 1] - iy
                rr[2] = Fhat[m, 2] - iz
                rx = rr[0]
                ry = rr[1]
                rz = rr[2]
                for l in range(L):
                    vv[l] += values[b + l] * rx + values[b + L + l] * ry + values[b + L + L + l] * rz
                p += 1
            _scatter_rows(v, vk, row[i], sub_idx, sub_len, c)


@dataclass
class ElementPass:
    """One element's forward pass over its rows (:meth:`Batch._forward`)."""

    w: np.ndarray  # the element's network, flat (Layout order), in the passes' dtype
    slope: float  # eV
    intercept: float  # eV
    out: np.ndarray  # (n_e,) network outputs
    layers: list | None = None  # numpy passes: views (W, b) into w, and
    blocks: list | None = None  # [(b0, b1, Pass)]; both None when element_forward ran


class Batch:
    """A set of structures ready for the networks: scaled fingerprints grouped by element,
    sparse scaled derivatives, and (for training) reference energies (eV) and forces (eV/Å).

    ``G`` (n_atoms, n_max) and ``blocks`` come from :func:`hpcpot.potential.fingerprints.compute_fingerprints`
    on ``st``; ``gmin``/``gmax`` (n_elements, n_max) are the global training ranges.  The
    derivative values are scaled in place (they are not needed unscaled again).

    ``recompute=sf`` (a SymmetryFunctions, with ``blocks=None``): store no derivatives and
    recompute them chunk by chunk in every evaluation with forces (memory for time).

    Tanh networks (the default) run each element's passes in one numba call
    (:mod:`hpcpot.potential.element_passes`), keeping their activations in a workspace per
    element; other activations go through the numpy passes of :mod:`hpcpot.potential.network`.
    """

    def __init__(
        self, st, G: np.ndarray, blocks: DerivativeBlocks | None, layout: Layout,
        gmin: np.ndarray, gmax: np.ndarray, sub_tables: tuple[np.ndarray, np.ndarray],
        with_forces: bool = True, recompute=None, dtype=np.float64,
    ):  # fmt: skip
        self.layout = layout
        self.dtype = np.dtype(dtype)  # of the network passes (see _forward)
        self.with_forces = with_forces and (blocks is not None or recompute is not None)
        self.recompute = recompute
        self.st = st
        self.n_images = st.n_images
        self.natoms = st.n_atoms.astype(float)
        self.energy = st.energy
        self.atom_ptr = st.atom_ptr
        self.species = st.species
        self.forces = st.forces if st.forces is not None else np.zeros((len(st.species), 3))
        ne = len(layout.elements)
        rng = gmax - gmin
        factor = np.where(rng > 0, 2.0 / np.where(rng > 0, rng, 1.0), 0.0)
        img_of_atom = np.repeat(np.arange(st.n_images), st.n_atoms)
        order = np.argsort(st.species, kind="stable")  # element-major, image order within
        self.row = np.empty(len(order), np.int64)
        self.row[order] = np.arange(len(order))
        counts = np.bincount(st.species, minlength=ne)
        self.elem_ptr = np.zeros(ne + 1, np.int64)
        np.cumsum(counts, out=self.elem_ptr[1:])
        self.X, self.img = [], []
        for e in range(ne):
            idx = order[self.elem_ptr[e] : self.elem_ptr[e + 1]]
            nf = layout.n_inputs[e]
            x = np.empty((len(idx), nf), self.dtype)
            # scaled in float64 a chunk of rows at a time: no n_atoms-sized temporaries (a
            # whole-element float64 copy was the peak of a float32 training, +31 MiB)
            for c0 in range(0, len(idx), 8192):
                t = G[idx[c0 : c0 + 8192], :nf]  # a copy (fancy indexing), scaled in place
                t -= gmin[e, :nf]
                t *= factor[e, :nf]
                t -= 1.0
                t[:, rng[e, :nf] <= 0] = 0.0
                x[c0 : c0 + 8192] = t
            self.X.append(x)
            self.img.append(img_of_atom[idx])
        self.blocks = blocks
        self.sub_idx, self.sub_len = sub_tables
        nmax = G.shape[1]
        self.factor = factor
        if self.with_forces:
            b = blocks
            if b is not None:
                _scale_derivatives(b.centre, b.kind, b.ptr, b.values, st.species, self.sub_idx, self.sub_len, factor)
            # input gradients g and force-residual tangents v in the passes' precision: the
            # force kernel reads and writes them, summing in float64 (numpy's float32
            # products into a float64 out took 4x as long as into float32)
            self.g = np.zeros((len(order), nmax), self.dtype)
            self.v = np.zeros((len(order), nmax), self.dtype)
            self.Fhat = np.zeros((len(order), 3))
        self.last_max = (0.0, 0.0)
        # an instance setting from the class default: the element kernels implement tanh only
        self.element_kernels = self.element_kernels and layout.activation == "tanh"
        self.sizes = [np.array([layout.n_inputs[e], *layout.hidden, 1], np.int64) for e in range(ne)]
        self._workspace: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def workspace(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Element e's activations and f' of its last forward pass (element_passes' layout),
        in the passes' dtype; allocated on first use (n_e × Σ hidden values each)."""
        ws = self._workspace.get(e)
        if ws is None or ws[0].dtype != self.dtype:
            n = len(self.X[e]) * sum(self.layout.hidden)
            ws = self._workspace[e] = (np.empty(n, self.dtype), np.empty(n, self.dtype))
        return ws

    def use_float64(self) -> bool:
        """Switch float32 network passes to float64 from now on (the inputs keep their float32
        rounding: a fixed perturbation of the data, not noise in the loss); False if they
        already were float64."""
        if self.dtype == np.float64:
            return False
        self.dtype = np.dtype(np.float64)
        self.X = [x.astype(np.float64) for x in self.X]
        if self.with_forces:
            shared = self.v is self.g
            self.g = np.zeros(self.g.shape)
            self.v = self.g if shared else np.zeros(self.v.shape)
        return True

    # Atoms go through the networks in blocks of this many rows, so that the temporaries of
    # the backward passes stay in cache: on the reference set (3000 images, 2 x 20 tanh),
    # loss+gradient with forces took 98 ms with 2048-row blocks against 133 ms unblocked
    # (medians of 24, interleaved; 512: 110, 1024: 109, 4096: 100).
    # Without forces there are fewer temporaries per row: 4096 rows measured ~5% faster.
    block = 2048
    block_energy_only = 4096
    # The element kernels (tanh) keep fewer temporaries per block: 512 rows, with and without
    # forces, measured fastest (interleaved medians: reference set with forces 43.7 against
    # 45.3 ms at 2048, energy-only loss+gradient 8.2 against 9.3 ms at 4096; a TiO2 subset with
    # 2 x 30 networks 39.6 against 45.4 ms at 2048)
    element_block = 512
    # False: the numpy passes for tanh networks too (the reference; benchmarks/element_passes.py);
    # set on the class before a Batch is made, or on one Batch
    element_kernels = True

    def _blocks(self, e: int, forces: bool = True):
        n = len(self.X[e])
        size = self.block if forces else self.block_energy_only
        return [(b0, min(n, b0 + size)) for b0 in range(0, n, size)]

    def _forward(self, params: np.ndarray, e: int, forces: bool, fill_g: bool = False) -> ElementPass:
        """Element e's network over its atoms, block by block; with ``fill_g`` also its rows
        of self.g = slope * d(network output)/d(scaled fingerprints)."""
        lay = self.layout
        lo, hi = lay.network_span(e)
        # float32 passes (a training's [loss] precision): a rounded copy of the element's
        # network; energies, input gradients and parameter gradients are summed in float64
        w = np.ascontiguousarray(params[lo:hi], dtype=self.dtype)  # the kernels reshape it
        slope, intercept = lay.slope_intercept(params, e)
        out_e = np.empty(len(self.X[e]))
        if self.element_kernels:
            acts, d1s = self.workspace(e)
            g = self.g if fill_g else np.empty((0, 0), self.dtype)
            element_forward(w, self.sizes[e], self.X[e], self.dtype.type(slope), self.element_block, out_e, acts, d1s,
                            g, self.elem_ptr[e], fill_g)  # fmt: skip
            return ElementPass(w, slope, intercept, out_e)
        layers = lay.unpack(w, e, base=lo)
        blocks = []
        for b0, b1 in self._blocks(e, forces):
            ps = forward(layers, self.X[e][b0:b1], lay.activation)
            out_e[b0:b1] = ps.out
            blocks.append((b0, b1, ps))
        if fill_g:
            r0, nf = self.elem_ptr[e], lay.n_inputs[e]
            for b0, b1, ps in blocks:
                input_gradient(layers, ps, slope, out=self.g[r0 + b0 : r0 + b1, :nf])
        return ElementPass(w, slope, intercept, out_e, layers, blocks)

    def _energies(self, params: np.ndarray, fill_g: bool = False) -> np.ndarray:
        """Ê per image (eV); with ``fill_g`` also the input gradients self.g, from the same
        forward passes."""
        Ehat = np.zeros(self.n_images)
        for e in range(len(self.layout.elements)):
            if len(self.X[e]) == 0:
                continue
            ep = self._forward(params, e, True, fill_g)
            Ehat += np.bincount(self.img[e], weights=ep.slope * ep.out + ep.intercept, minlength=self.n_images)
        return Ehat

    def predict_energies(self, params: np.ndarray) -> np.ndarray:
        """Ê per image (eV)."""
        return self._energies(params)

    def _forces_and_v(self, F_ref: np.ndarray, wF: np.ndarray, sq: np.ndarray, mx: np.ndarray) -> None:
        """Run the force kernel over stored derivatives, or over recomputed chunks."""
        if self.blocks is not None:
            b = self.blocks
            _force_kernel(
                b.image_ptr, self.atom_ptr, b.centre, b.partner, b.kind, b.ptr, b.values,
                self.species, self.row, self.sub_idx, self.sub_len, self.g, F_ref,
                wF, self.Fhat, self.v, sq, mx,
            )  # fmt: skip
            return
        lo = 0
        step = max(1, int(200_000 // max(1.0, self.natoms.mean() ** 2)))  # ~200k pairs per chunk
        while lo < self.n_images:
            hi = min(self.n_images, lo + step)
            a0, a1 = self.atom_ptr[lo], self.atom_ptr[hi]
            sub = self.st.slice(lo, hi)
            _, b = compute_fingerprints(sub, self.recompute, True)
            _scale_derivatives(b.centre, b.kind, b.ptr, b.values, sub.species, self.sub_idx, self.sub_len, self.factor)
            _force_kernel(
                b.image_ptr, sub.atom_ptr, b.centre, b.partner, b.kind, b.ptr, b.values,
                sub.species, self.row[a0:a1], self.sub_idx, self.sub_len, self.g, F_ref[a0:a1],
                wF[lo:hi], self.Fhat[a0:a1], self.v, sq[lo:hi], mx[lo:hi],
            )  # fmt: skip
            lo = hi

    def predict(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Ê per image (eV) and F̂ per atom (eV/Å, None without derivatives)."""
        Ehat = self._energies(params, fill_g=self.with_forces)
        if not self.with_forces:
            return Ehat, None
        sq, mx = np.empty(self.n_images), np.empty(self.n_images)
        # with F_ref = 0 and weight 1 the kernel leaves F̂ itself in Fhat
        self._forces_and_v(np.zeros_like(self.Fhat), np.ones(self.n_images), sq, mx)
        return Ehat, self.Fhat.copy()

    def virials(self) -> np.ndarray:
        """∂Ê/∂ε per image (n_images, 6) in eV, Voigt order xx yy zz yz xz xy, for a
        homogeneous strain r -> (1 + ε) r of positions and cell (stress = this / volume, as
        ASE defines it).  Call after :meth:`predict` (it reuses the input gradients ``g``);
        needs fingerprints computed ``with_virial``.
        """
        if self.with_forces and self.v is self.g:  # a training's ShardProblem: v written over g
            raise ValueError("virials need the input gradients, which this problem's force kernel overwrites")
        if not self.with_forces or self.blocks is None or self.blocks.virial is None:
            raise ValueError("virials need derivatives computed with_virial=True")
        # ∂E/∂G_f of each atom = g_f * (scaling factor of f): the virial blocks are unscaled
        dEdG = self.g[self.row] * self.factor[self.species]
        per_atom = np.einsum("af,afv->av", dEdG, self.blocks.virial)
        img = np.repeat(np.arange(self.n_images), self.st.n_atoms)
        return np.stack([np.bincount(img, weights=per_atom[:, v], minlength=self.n_images) for v in range(6)], axis=1)
