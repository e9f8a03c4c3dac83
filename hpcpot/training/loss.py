"""Amp's loss and its analytic gradient on one shard of images.

    L = ½ Σ_j [ (Ê_j/N_j − E_j/N_j)² + α/(3 N_j) Σ_i Σ_k (F̂_ik − F_ik)² ]

A shard is any set of images; a serial run is one shard.  :meth:`ShardProblem.evaluate`
returns *partial sums* that add up across shards (the MPI layer allreduces them):

    buf = [loss, Σ_j r_E², n_images, Σ ΔF², n_force_components, grad...]

with r_E = (Ê_j − E_j)/N_j in eV/atom and ΔF in eV/Å.
"""

from __future__ import annotations

import numpy as np

from ..potential.element_passes import element_gradient
from ..potential.fingerprints import DerivativeBlocks
from ..potential.network import D2_COEFFICIENTS, Layout, parameter_gradient
from ..potential.predict import Batch

N_HEAD = 5  # loss, sum rE^2, n_images, sum dF^2, n_force_components


class ShardProblem(Batch):
    """The loss and its gradient on one shard: a :class:`hpcpot.potential.predict.Batch`
    with reference energies and forces and the force coefficient α."""

    def __init__(
        self, st, G: np.ndarray, blocks: DerivativeBlocks | None, layout: Layout,
        gmin: np.ndarray, gmax: np.ndarray, sub_tables: tuple[np.ndarray, np.ndarray],
        force_coefficient: float, recompute=None, dtype=np.float64,
    ):  # fmt: skip
        super().__init__(st, G, blocks, layout, gmin, gmax, sub_tables, force_coefficient > 0, recompute, dtype)
        self.alpha = force_coefficient
        if self.with_forces:
            self.wF = force_coefficient / (3.0 * self.natoms)
            # the force kernel writes v over the input gradients g it has used (the loss
            # needs only v afterwards): one n_atoms × n_max float64 array fewer
            self.v = self.g

    @property
    def buffer_size(self) -> int:
        return N_HEAD + self.layout.n_params

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
            ep = self._forward(params, e, do_forces, fill_g=do_forces)
            Ehat += np.bincount(self.img[e], weights=ep.slope * ep.out + ep.intercept, minlength=self.n_images)
            passes.append(ep)
        rE = (Ehat - self.energy) / self.natoms
        loss = 0.5 * float(rE @ rE)
        buf[1] = rE @ rE
        buf[2] = self.n_images
        maxE = float(np.abs(rE).max()) if self.n_images else 0.0
        maxF = 0.0
        if do_forces:
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
        dt = self.dtype
        wE = rE / self.natoms  # dL/dÊ_j
        for e in range(ne):
            ep = passes[e]
            if ep is None:
                continue
            wE_atom = wE[self.img[e]]
            obar = (ep.slope * wE_atom).astype(dt, copy=False)
            r0 = self.elem_ptr[e]
            if ep.blocks is None:  # element_forward's workspace holds the pass
                acts, d1s = self.workspace(e)
                v = self.v if do_forces else np.empty((0, 0), dt)
                c0, c1 = D2_COEFFICIENTS[lay.activation]
                outdot_sum = element_gradient(ep.w, self.sizes[e], self.X[e], self.element_block, acts, d1s, obar, v, r0,
                                              dt.type(-ep.slope), c0, c1, grad, lay.network_offset(e))  # fmt: skip
            else:
                gl = lay.unpack(grad, e)
                outdot_sum = 0.0
                for b0, b1, ps in ep.blocks:
                    v = self.v[r0 + b0 : r0 + b1, : lay.n_inputs[e]] if do_forces else None  # in dt already
                    grads, outdot = parameter_gradient(ep.layers, ps, obar[b0:b1], v, -float(ep.slope))
                    for (gW, gb), (dW, db) in zip(gl, grads, strict=True):
                        gW += dW
                        gb += db
                    if outdot is not None:
                        outdot_sum += outdot.sum(dtype=np.float64)
            k = lay.scaling_offset + 2 * e
            grad[k] += wE_atom @ ep.out - outdot_sum
            grad[k + 1] += wE_atom.sum()
        return buf
