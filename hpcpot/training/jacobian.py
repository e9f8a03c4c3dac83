"""The Gauss–Newton normal equations JᵀJ and Jᵀr of one shard, for Levenberg–Marquardt.

Residuals (so that ½‖r‖² is exactly the loss of :mod:`hpcpot.training.loss`):

    r_E,j  = (Ê_j − E_j) / N_j                     one per image (eV/atom)
    r_F,mk = √(α / (3 N_j)) (F̂_mk − F_mk)          one per force component of image j

The Jacobian is built a block of images at a time into a small scratch (rows × P) and
folded into JᵀJ by a BLAS rank-k update (``dsyrk``), so the whole Jacobian never exists.

Energy rows are the parameter gradients of the atomic networks summed over an image.  A
force row, ∂F̂_mk/∂θ = −Σ_i slope ∂(∇_x N_i · v_imk)/∂θ with v_imk = ∂x_i/∂r_mk (the
stored, scaled derivative blocks), is one tangent pass along v plus one reverse pass per
(pair, component): the mixed second derivative ∂²N/∂x∂θ is never formed, which costs
O(P_e) per (pair, component) instead of O(n_f P_e).

With ``force_fraction`` f < 1 only a random share f of force components enters JᵀJ (rows
scaled by 1/√f, so the estimate is unbiased); which ones depends on a seed, the iteration
and each image's source name, so every rank count draws the same rows.
"""

from __future__ import annotations

import time
import zlib

import numpy as np
from numba import njit

from ..potential.fingerprints import compute_fingerprints
from ..potential.network import D2_COEFFICIENTS, forward
from ..potential.predict import _scale_derivatives
from .loss import N_HEAD, ShardProblem

# Rows of the Jacobian scratch per rank-k update: 512 rows x P keeps dsyrk near its peak
# (measured ~50 GFlop/s for 400 x 2000 on this machine) while the scratch stays ~10 MB.
ROWS_PER_UPDATE = 512


@njit(cache=True)
def _mix(x):
    """splitmix64 finaliser: a well-mixed uint64 from a uint64."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True)
def _select_forces(atom_ptr, j0, j1, keys, salt, fraction, frow, first):
    """frow[m, k] = Jacobian row of force component (m, k) of images j0..j1-1, or -1 when
    not drawn; rows are numbered from ``first``.  Returns the next free row."""
    t = first
    for j in range(j0, j1):
        h = _mix(np.uint64(keys[j]) ^ salt)
        for m in range(atom_ptr[j], atom_ptr[j + 1]):
            for k in range(3):
                if fraction < 1.0:
                    h = _mix(h + np.uint64(0x9E3779B97F4A7C15))
                    u = (h >> np.uint64(11)) * (1.0 / 9007199254740992.0)
                    if u >= fraction:
                        frow[m, k] = -1
                        continue
                frow[m, k] = t
                t += 1
    return t


@njit(cache=True)
def _tangent_rows(p0, p1, atom_off, centre, partner, kind, ptr, values, species, e, row_of_atom, row_lo,
                  sub_idx, sub_len, frow, V, ci, tgt):  # fmt: skip
    """One row per (pair with a centre of element e, component k) whose force row is drawn:
    V[r] = ∂x_centre/∂r_partner,k (scaled, dense over the functions), ci[r] = the centre's
    row in this block of element e's atoms, tgt[r] = its Jacobian row; and one per (centre,
    k) for the centre's own force row, V = ∂x_i/∂r_i,k = −Σ of its pairs' (no pair (i, i) is
    stored).  Returns the count (at most 3 × (pairs + centres))."""
    n = 0
    own = np.empty(3, np.int64)  # the centre's own rows, summed from its pairs' values
    p = p0
    while p < p1:
        i = centre[p] + atom_off
        c = species[i]
        if c != e:
            p += 1
            continue
        for k in range(3):
            own[k] = -1
            if frow[i, k] >= 0:
                own[k] = n
                for f in range(V.shape[1]):
                    V[n, f] = 0.0
                ci[n] = row_of_atom[i] - row_lo
                tgt[n] = frow[i, k]
                n += 1
        while p < p1 and centre[p] + atom_off == i:
            m = partner[p] + atom_off
            b = ptr[p]
            kd = kind[p]
            L = sub_len[c, kd]
            for k in range(3):
                if own[k] >= 0:
                    for l in range(L):
                        V[own[k], sub_idx[c, kd, l]] -= values[b + k * L + l]
                t = frow[m, k]
                if t < 0:
                    continue
                for f in range(V.shape[1]):
                    V[n, f] = 0.0
                for l in range(L):
                    V[n, sub_idx[c, kd, l]] = values[b + k * L + l]
                ci[n] = row_of_atom[i] - row_lo
                tgt[n] = t
                n += 1
            p += 1
    return n


@njit(cache=True, fastmath=True)
def _outer_add(J, tgt, U, ui, A, ai, off, scale):
    """J[tgt[r], off + a * n_in + b] += scale * U[ui[r], a] * A[ai[r], b]  (a weight block)."""
    n_in = A.shape[1]
    for r in range(tgt.shape[0]):
        t = tgt[r]
        u = ui[r]
        s = ai[r]
        for a in range(U.shape[1]):
            c = scale * U[u, a]
            base = off + a * n_in
            for b in range(n_in):
                J[t, base + b] += c * A[s, b]


@njit(cache=True, fastmath=True)
def _row_add(J, tgt, U, ui, off, scale):
    """J[tgt[r], off + a] += scale * U[ui[r], a]  (a bias block)."""
    for r in range(tgt.shape[0]):
        t = tgt[r]
        u = ui[r]
        for a in range(U.shape[1]):
            J[t, off + a] += scale * U[u, a]


def image_keys(sources: list[str], energy: np.ndarray) -> np.ndarray:
    """A rank-independent 32-bit key per image (its source name; the energy bits if unnamed)."""
    keys = np.empty(len(energy), np.int64)
    for j, s in enumerate(sources if len(sources) == len(energy) else [""] * len(energy)):
        keys[j] = zlib.crc32(s.encode()) if s else zlib.crc32(np.float64(energy[j]).tobytes())
    return keys


class NormalEquations:
    """The LM evaluation of one shard: ``evaluate(params, iteration, out)`` fills

        out = [loss, ΣrE², n_img, ΣΔF², n_F, grad (P), JᵀJ (P × P)]

    with partial sums that add up across shards (the MPI layer allreduces the buffer).  The
    head and ``grad`` are the exact loss and gradient (:meth:`ShardProblem.evaluate`); JᵀJ
    (its upper triangle in column-major order, i.e. the lower triangle of the row-major
    ``out[N_HEAD + P:].reshape(P, P)``) may use a drawn share of the force rows.
    """

    def __init__(self, prob: ShardProblem, force_fraction: float = 1.0, seed: int = 0):
        self.prob = prob
        self.fraction = float(force_fraction)
        self.seed = int(seed)
        self.P = prob.layout.n_params
        self.keys = image_keys(prob.st.sources, prob.energy)
        inv = np.empty(len(prob.row), np.int64)
        inv[prob.row] = np.arange(len(prob.row))
        self.atom_of_row = inv  # element-major row -> shard atom
        self.timing = {"rows": 0.0, "syrk": 0.0, "n_rows": 0}  # seconds building rows / in dsyrk

    @property
    def buffer_size(self) -> int:
        return N_HEAD + self.P + self.P * self.P

    def evaluate(self, params: np.ndarray, iteration: float, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (see class doc) at ``params``; ``iteration`` salts the force draw."""
        P = self.P
        out[:] = 0.0
        self.prob.evaluate(params, with_grad=True, out=out[: N_HEAD + P])
        self.accumulate(params, int(iteration), out[N_HEAD + P :].reshape(P, P).T, None)
        return out

    def normal_matrices(self, params: np.ndarray, iteration: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(JᵀJ full (P, P), Jᵀr (P,), r) of this shard built from its Jacobian rows, for tests
        and small problems; r holds every residual in block order (½ r·r is the loss when
        force_fraction = 1)."""
        P = self.P
        C = np.zeros((P, P), order="F")
        jtr = np.zeros(P)
        res: list[np.ndarray] = []
        self.accumulate(params, iteration, C, jtr, res)
        C = np.triu(C) + np.triu(C, 1).T
        return C, jtr, np.concatenate(res) if res else np.zeros(0)

    def _chunks(self):
        """Image ranges whose rows (1 + 3 N_j each) fill about ROWS_PER_UPDATE rows."""
        n = self.prob.n_images
        rows = 1 + 3 * self.prob.natoms.astype(np.int64) if self.prob.with_forces else np.ones(n, np.int64)
        j0 = 0
        while j0 < n:
            j1, s = j0, 0
            while j1 < n and (j1 == j0 or s + rows[j1] <= ROWS_PER_UPDATE):
                s += rows[j1]
                j1 += 1
            yield j0, j1
            j0 = j1

    def _pairs(self, j0: int, j1: int):
        """(centre, partner, kind, ptr, values, p0, p1, atom offset) of images j0..j1-1."""
        prob = self.prob
        b = prob.blocks
        if b is not None:
            return b.centre, b.partner, b.kind, b.ptr, b.values, b.image_ptr[j0], b.image_ptr[j1], 0
        sub = prob.st.slice(j0, j1)  # storage = "recompute": this block's derivatives now
        _, b = compute_fingerprints(sub, prob.recompute, True)
        _scale_derivatives(b.centre, b.kind, b.ptr, b.values, sub.species, prob.sub_idx, prob.sub_len, prob.factor)
        return b.centre, b.partner, b.kind, b.ptr, b.values, 0, len(b.centre), prob.atom_ptr[j0]

    def accumulate(self, params: np.ndarray, iteration: int, C: np.ndarray, jtr: np.ndarray | None,
                   residuals: list | None = None) -> None:  # fmt: skip
        """C (P, P) Fortran-ordered += JᵀJ (upper triangle); jtr += Jᵀr when given."""
        from scipy.linalg.blas import dsyrk  # here: only Levenberg–Marquardt needs scipy.linalg

        prob, lay, P = self.prob, self.prob.layout, self.P
        if prob.n_images == 0:
            return
        forces = prob.with_forces
        Ehat, Fhat = prob.predict(params)
        ne = len(lay.elements)
        layers = [lay.unpack(params, e) for e in range(ne)]
        c0, c1 = D2_COEFFICIENTS[lay.activation]
        frow = np.full((len(prob.species), 3), -1, np.int64)
        salt = np.uint64((self.seed * 1_000_003 + iteration) & 0x7FFFFFFFFFFFFFFF)
        scale_f = 1.0 / np.sqrt(self.fraction) if self.fraction < 1.0 else 1.0
        J = np.zeros((0, P))
        t_start = time.perf_counter()
        t_syrk = 0.0
        for j0, j1 in self._chunks():
            nimg = j1 - j0
            nrow = nimg
            if forces:
                nrow = _select_forces(prob.atom_ptr, j0, j1, self.keys, salt, self.fraction, frow, nimg)
            if J.shape[0] < nrow:
                J = np.zeros((nrow, P))
            Jc = J[:nrow]
            Jc[:] = 0.0
            r = np.empty(nrow)
            r[:nimg] = (Ehat[j0:j1] - prob.energy[j0:j1]) / prob.natoms[j0:j1]
            if forces:
                pairs = self._pairs(j0, j1)
            for e in range(ne):
                img_e = prob.img[e]
                lo, hi = np.searchsorted(img_e, [j0, j1])
                if hi == lo:
                    continue
                self._element_rows(Jc, e, lo, hi, j0, layers[e], params, c0, c1, frow, pairs if forces else None)
            a0, a1 = prob.atom_ptr[j0], prob.atom_ptr[j1]
            Jc[:nimg] /= prob.natoms[j0:j1, None]
            if forces:
                w = np.sqrt(prob.alpha / (3.0 * prob.natoms[j0:j1]))
                wa = np.repeat(w, prob.natoms[j0:j1].astype(np.int64))
                sel = frow[a0:a1]
                m, k = np.nonzero(sel >= 0)
                rows = sel[m, k]
                r[rows] = wa[m] * (Fhat[a0 + m, k] - prob.forces[a0 + m, k]) * scale_f
                Jc[rows] *= (wa[m] * scale_f)[:, None]
            # C += Jcᵀ Jc on the upper triangle, in place (C is Fortran-ordered, Jc.T too)
            t0 = time.perf_counter()
            dsyrk(1.0, Jc.T, beta=1.0, c=C, trans=0, lower=0, overwrite_c=1)
            t_syrk += time.perf_counter() - t0
            self.timing["n_rows"] += nrow
            if jtr is not None:
                jtr += Jc.T @ r
            if residuals is not None:
                residuals.append(r.copy())
        self.timing["syrk"] += t_syrk
        self.timing["rows"] += time.perf_counter() - t_start - t_syrk

    def _element_rows(self, Jc, e, lo, hi, j0, layers, params, c0, c1, frow, pairs) -> None:
        """Add the rows of element e's atoms lo..hi-1 (its rows in prob.X[e]) to Jc."""
        prob, lay = self.prob, self.prob.layout
        slope, _ = lay.slope_intercept(params, e)
        ps = forward(layers, prob.X[e][lo:hi], lay.activation)
        acts, d1s = ps.acts, ps.d1
        nl = len(layers)
        # q[k] = ∂N/∂z_k per atom (the plain backward pass of the output)
        q = [None] * (nl - 1)
        q[nl - 2] = d1s[nl - 2] * layers[-1][0][0]
        for k in range(nl - 3, -1, -1):
            q[k] = d1s[k] * (q[k + 1] @ layers[k + 1][0])
        off = lay.network_offset(e)
        offs = []
        for o, i in lay.layer_shapes(e):
            offs.append((off, off + o * i))
            off += o * i + o
        ks = lay.scaling_offset + 2 * e
        n = hi - lo
        at = np.arange(n, dtype=np.int64)
        tgt_e = (prob.img[e][lo:hi] - j0).astype(np.int64)
        # energy rows: slope ∂N/∂θ, ∂/∂slope = N, ∂/∂intercept = 1
        for k in range(nl - 1):
            _outer_add(Jc, tgt_e, q[k], at, acts[k], at, offs[k][0], slope)
            _row_add(Jc, tgt_e, q[k], at, offs[k][1], slope)
        _row_add(Jc, tgt_e, acts[nl - 1], at, offs[nl - 1][0], slope)
        np.add.at(Jc[:, offs[nl - 1][1]], tgt_e, slope)
        np.add.at(Jc[:, ks], tgt_e, ps.out)
        np.add.at(Jc[:, ks + 1], tgt_e, 1.0)
        if pairs is None:
            return
        centre, partner, kind, ptr, values, p0, p1, aoff = pairs
        nf = lay.n_inputs[e]
        cap = 3 * (p1 - p0 + len(np.unique(centre[p0:p1])))
        V = np.empty((cap, nf))
        ci = np.empty(cap, np.int64)
        tgt = np.empty(cap, np.int64)
        row_lo = prob.elem_ptr[e] + lo
        R = _tangent_rows(p0, p1, aoff, centre, partner, kind, ptr, values, prob.species, e, prob.row, row_lo,
                          prob.sub_idx, prob.sub_len, frow, V, ci, tgt)  # fmt: skip
        if R == 0:
            return
        V, ci, tgt = V[:R], ci[:R], tgt[:R]
        # tangent pass along v: ż_k = W_k ȧ_k, ȧ_{k+1} = f'(z_k) ż_k
        tang = [V]
        zdot = []
        for k in range(nl - 1):
            zd = tang[k] @ layers[k][0].T
            zdot.append(zd)
            tang.append(d1s[k][ci] * zd)
        outdot = tang[-1] @ layers[-1][0][0]
        # reverse pass of s = ∇_x N · v: zbar_k = f'' ż_k ∂s/∂ȧ + f' ∂s/∂a, with ∂s/∂ż_k = q_k
        rr = np.arange(R, dtype=np.int64)
        zbar = (c0 + c1 * acts[nl - 1][ci]) * q[nl - 2][ci] * zdot[nl - 2]
        for k in range(nl - 2, -1, -1):
            if k < nl - 2:
                zbar = (c0 + c1 * acts[k + 1][ci]) * q[k][ci] * zdot[k] + d1s[k][ci] * (zbar @ layers[k + 1][0])
            # F̂ = −slope Σ s: ∂s/∂W_k = zbar ⊗ a_k + q_k ⊗ ȧ_k, ∂s/∂b_k = zbar
            _outer_add(Jc, tgt, zbar, rr, acts[k], ci, offs[k][0], -slope)
            _outer_add(Jc, tgt, q[k], ci, tang[k], rr, offs[k][0], -slope)
            _row_add(Jc, tgt, zbar, rr, offs[k][1], -slope)
        _row_add(Jc, tgt, tang[nl - 1], rr, offs[nl - 1][0], -slope)
        np.add.at(Jc[:, ks], tgt, -outdot)
