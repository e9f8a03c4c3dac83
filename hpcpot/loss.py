"""Amp's loss and its analytic gradient on one shard of images.

    L = ½ Σ_j [ (Ê_j/N_j − E_j/N_j)² + α/(3 N_j) Σ_i Σ_k (F̂_ik − F_ik)² ]

A shard is any set of images; a serial run is one shard.  :meth:`ShardProblem.evaluate`
returns *partial sums* that add up across shards (the MPI layer allreduces them):

    buf = [loss, Σ_j r_E², n_images, Σ ΔF², n_force_components, grad...]

with r_E = (Ê_j − E_j)/N_j in eV/atom and ΔF in eV/Å.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .fingerprints import DerivativeBlocks
from .model import Layout, forward, input_gradient, parameter_gradient

N_HEAD = 5  # loss, sum rE^2, n_images, sum dF^2, n_force_components


@njit(cache=True)
def _scale_derivatives(centre, kind, ptr, values, species, sub_idx, sub_len, factor):
    """values *= factor[species[centre], f] (fingerprint scaling, applied once)."""
    for p in range(centre.shape[0]):
        c = species[centre[p]]
        k = kind[p]
        b = ptr[p]
        for l in range(sub_len[c, k]):
            s = factor[c, sub_idx[c, k, l]]
            values[b + 3 * l] *= s
            values[b + 3 * l + 1] *= s
            values[b + 3 * l + 2] *= s


@njit(cache=True)
def _force_kernel(
    image_ptr, atom_ptr, centre, partner, kind, ptr, values, species, row,
    sub_idx, sub_len, g, F_ref, wF, Fhat, v, sq, maxabs,
):  # fmt: skip
    """Per image, while its derivatives are in cache: F̂ = −Σ dx/dr·g, residual ΔF, and
    v_i = Σ_m dx_i/dr_m · (wF ΔF_m).  sq[j] = Σ ΔF², maxabs[j] = max |ΔF|."""
    n_img = image_ptr.shape[0] - 1
    for j in range(n_img):
        a0 = atom_ptr[j]
        a1 = atom_ptr[j + 1]
        for m in range(a0, a1):
            Fhat[m, 0] = 0.0
            Fhat[m, 1] = 0.0
            Fhat[m, 2] = 0.0
        for p in range(image_ptr[j], image_ptr[j + 1]):
            i = centre[p]
            m = partner[p]
            c = species[i]
            k = kind[p]
            ri = row[i]
            b = ptr[p]
            fx = 0.0
            fy = 0.0
            fz = 0.0
            for l in range(sub_len[c, k]):
                gv = g[ri, sub_idx[c, k, l]]
                fx += gv * values[b + 3 * l]
                fy += gv * values[b + 3 * l + 1]
                fz += gv * values[b + 3 * l + 2]
            Fhat[m, 0] -= fx
            Fhat[m, 1] -= fy
            Fhat[m, 2] -= fz
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
        for p in range(image_ptr[j], image_ptr[j + 1]):
            i = centre[p]
            m = partner[p]
            c = species[i]
            k = kind[p]
            ri = row[i]
            b = ptr[p]
            rx = Fhat[m, 0]
            ry = Fhat[m, 1]
            rz = Fhat[m, 2]
            for l in range(sub_len[c, k]):
                v[ri, sub_idx[c, k, l]] += values[b + 3 * l] * rx + values[b + 3 * l + 1] * ry + values[b + 3 * l + 2] * rz


class ShardProblem:
    """Everything one shard needs to evaluate the loss: scaled fingerprints grouped by
    element, sparse scaled derivatives, reference energies (eV) and forces (eV/Å).

    ``G`` (n_atoms, n_max) and ``blocks`` come from :func:`hpcpot.fingerprints.compute_fingerprints`
    on ``st``; ``gmin``/``gmax`` (n_elements, n_max) are the global training ranges.  The
    derivative values are scaled in place (they are not needed unscaled again).

    ``recompute=sf`` (a SymmetryFunctions, with ``blocks=None``): store no derivatives and
    recompute them chunk by chunk in every evaluation with forces (memory for time).
    """

    def __init__(
        self, st, G: np.ndarray, blocks: DerivativeBlocks | None, layout: Layout,
        gmin: np.ndarray, gmax: np.ndarray, sub_tables: tuple[np.ndarray, np.ndarray],
        force_coefficient: float, recompute=None,
    ):  # fmt: skip
        self.layout = layout
        self.alpha = force_coefficient
        self.with_forces = force_coefficient > 0 and (blocks is not None or recompute is not None)
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
            x = (G[idx, :nf] - gmin[e, :nf]) * factor[e, :nf] - 1.0
            x[:, rng[e, :nf] <= 0] = 0.0
            self.X.append(np.ascontiguousarray(x))
            self.img.append(img_of_atom[idx])
        self.blocks = blocks
        self.sub_idx, self.sub_len = sub_tables
        nmax = G.shape[1]
        self.factor = factor
        if self.with_forces:
            b = blocks
            if b is not None:
                _scale_derivatives(b.centre, b.kind, b.ptr, b.values, st.species, self.sub_idx, self.sub_len, factor)
            self.wF = force_coefficient / (3.0 * self.natoms)
            self.g = np.zeros((len(order), nmax))
            self.v = np.zeros((len(order), nmax))
            self.Fhat = np.zeros((len(order), 3))
        self.last_max = (0.0, 0.0)

    @property
    def buffer_size(self) -> int:
        return N_HEAD + self.layout.n_params

    # Atoms go through the networks in blocks of this many rows, so that the temporaries of
    # the backward passes stay in cache: on the reference set (3000 images, 2 x 20 tanh),
    # loss+gradient with forces took 98 ms with 2048-row blocks against 133 ms unblocked
    # (medians of 24, interleaved; 512: 110, 1024: 109, 4096: 100).
    # Without forces there are fewer temporaries per row: 4096 rows measured ~5% faster.
    block = 2048
    block_energy_only = 4096

    def _blocks(self, e: int, forces: bool = True):
        n = len(self.X[e])
        size = self.block if forces else self.block_energy_only
        return [(b0, min(n, b0 + size)) for b0 in range(0, n, size)]

    def _forward(self, params: np.ndarray, e: int, forces: bool):
        """Element e's network over its atoms, block by block: (layers, slope, intercept,
        [(b0, b1, Pass)], outputs (n_e,))."""
        lay = self.layout
        layers = lay.unpack(params, e)
        slope, intercept = lay.slope_intercept(params, e)
        out_e = np.empty(len(self.X[e]))
        blocks = []
        for b0, b1 in self._blocks(e, forces):
            ps = forward(layers, self.X[e][b0:b1], lay.activation)
            out_e[b0:b1] = ps.out
            blocks.append((b0, b1, ps))
        return layers, slope, intercept, blocks, out_e

    def _fill_input_gradients(self, e: int, layers, slope: float, blocks) -> None:
        """self.g rows of element e = slope * d(network output)/d(scaled fingerprints)."""
        r0, nf = self.elem_ptr[e], self.layout.n_inputs[e]
        for b0, b1, ps in blocks:
            self.g[r0 + b0 : r0 + b1, :nf] = slope * input_gradient(layers, ps)

    def evaluate(self, params: np.ndarray, with_grad: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """Partial sums of this shard (see module doc); ``out`` is filled and returned.

        Also sets ``self.last_max = (max |r_E| eV/atom, max |ΔF| eV/Å)`` for this shard.
        """
        lay = self.layout
        buf = np.zeros(self.buffer_size if with_grad else N_HEAD) if out is None else out
        buf[:] = 0.0
        ne = len(lay.elements)
        do_forces = self.with_forces and self.n_images > 0
        Ehat = np.zeros(self.n_images)
        passes = []
        for e in range(ne):
            if len(self.X[e]) == 0:
                passes.append(None)
                continue
            layers, slope, intercept, blocks, out_e = self._forward(params, e, do_forces)
            Ehat += np.bincount(self.img[e], weights=slope * out_e + intercept, minlength=self.n_images)
            passes.append((layers, slope, blocks, out_e))
        rE = (Ehat - self.energy) / self.natoms
        loss = 0.5 * float(rE @ rE)
        buf[1] = rE @ rE
        buf[2] = self.n_images
        maxE = float(np.abs(rE).max()) if self.n_images else 0.0
        maxF = 0.0
        if do_forces:
            for e in range(ne):
                if passes[e] is None:
                    continue
                layers, slope, blocks, _ = passes[e]
                self._fill_input_gradients(e, layers, slope, blocks)
            self.v[:] = 0.0
            sq = np.empty(self.n_images)
            mx = np.empty(self.n_images)
            self._forces_and_v(self.forces, self.wF, sq, mx)
            loss += 0.5 * float(self.wF @ sq)
            buf[3] = sq.sum()
            buf[4] = 3.0 * self.natoms.sum()
            maxF = float(mx.max())
        buf[0] = loss
        self.last_max = (maxE, maxF)
        if not with_grad:
            return buf
        grad = buf[N_HEAD:]
        wE = rE / self.natoms  # dL/dÊ_j
        for e in range(ne):
            if passes[e] is None:
                continue
            layers, slope, blocks, out_e = passes[e]
            wE_atom = wE[self.img[e]]
            gl = lay.unpack(grad, e)
            r0 = self.elem_ptr[e]
            outdot_sum = 0.0
            for b0, b1, ps in blocks:
                v = self.v[r0 + b0 : r0 + b1, : lay.n_inputs[e]] if do_forces else None
                grads, outdot = parameter_gradient(layers, ps, slope * wE_atom[b0:b1], v, -slope)
                for (gW, gb), (dW, db) in zip(gl, grads, strict=True):
                    gW += dW
                    gb += db
                if outdot is not None:
                    outdot_sum += outdot.sum()
            k = lay.scaling_offset + 2 * e
            grad[k] += wE_atom @ out_e - outdot_sum
            grad[k + 1] += wE_atom.sum()
        return buf

    def _energies(self, params: np.ndarray, fill_g: bool = False) -> np.ndarray:
        """Ê per image (eV); with ``fill_g`` also the input gradients self.g, from the same
        forward passes."""
        Ehat = np.zeros(self.n_images)
        for e in range(len(self.layout.elements)):
            if len(self.X[e]) == 0:
                continue
            layers, slope, intercept, blocks, out_e = self._forward(params, e, True)
            if fill_g:
                self._fill_input_gradients(e, layers, slope, blocks)
            Ehat += np.bincount(self.img[e], weights=slope * out_e + intercept, minlength=self.n_images)
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
        from .fingerprints import compute_fingerprints

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
