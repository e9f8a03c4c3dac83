"""Gaussian (Behler) symmetry-function fingerprints and their position derivatives.

The definition (which functions, their parameters and order) is
:class:`hpcpot.potential.symmetry.SymmetryFunctions`; this module computes them.
Conventions follow Amp 1.0.1 (``amp.descriptor.gaussian``), lengths in Å:

* cutoff  fc(r) = ½ (cos(π r / Rc) + 1) for r < Rc, else 0;
* G2  = Σ_j exp(−η (R_ij − Rs)² / Rc²) fc(R_ij), one per (η, Rs, neighbour element);
* G4  = 2^(1−ζ) Σ_{j<k} (1 + γ cos θ_ijk)^ζ exp(−η (R_ij² + R_ik² + R_jk²) / Rc²)
        fc(R_ij) fc(R_ik) fc(R_jk), one per (η, ζ, γ, unordered neighbour-element pair);
* order: G2 (η outer, Rs, element inner), then G4 (η, ζ, γ, element pair).

Elements are sorted alphabetically by symbol, as Amp does.

Derivatives are stored sparsely, per (centre atom i, cell atom m ≠ i) pair: all periodic
images of m add into one entry, and only the structurally non-zero functions are kept: a
partner m of element e moves only the functions that involve e.  The centre's own
derivative is not stored: G_i is invariant under a common translation of all atoms (every
periodic image moves with its atom), so dG_i/dr_i = −Σ_{m≠i} dG_i/dr_m, which the force
kernel applies as it goes.  See :class:`DerivativeBlocks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from ..errors import DataError
from .intrinsics import f64_from_bits
from .neighbors import neighbor_list
from .structures import MIN_DISTANCE, structure_arrays
from .symmetry import SymmetryFunctions

# Version of the DerivativeBlocks value layout (part of the fingerprint-cache key, so that a
# cache written with another layout is recomputed rather than misread).
DERIVATIVE_LAYOUT = "xyz-l, no self pair"
CHUNK_PAIRS = 300_000  # neighbour pairs fingerprinted per chunk (bounds the transient memory)
CHUNK_NEIGHBOURS_PER_ATOM = 64  # the estimate that sizes a chunk: CHUNK_PAIRS / 64 atoms


@dataclass
class DerivativeBlocks:
    """Sparse fingerprint derivatives of a set of images.

    Pair ``p`` couples centre atom ``centre[p]`` and cell atom ``partner[p]`` ≠ centre (atom
    indices into the shard, both in the same image; dG_i/dr_i = −Σ_p of centre i, see the
    module doc).  Its values are
    ``values[ptr[p] : ptr[p] + 3 * L]`` with ``L = sub_len[species[centre], kind[p]]``, laid
    out as ``[xyz, l]`` (three contiguous rows of L, so the force kernel's dot products over l
    run on contiguous memory): ``dG_{centre, f}/dr_{partner, xyz}`` for ``f = sub_idx[c, kind, l]``,
    in 1/Å (or in scaled-fingerprint units per Å after :func:`scale_derivatives`).
    Pairs are grouped by image: image ``j`` owns pairs ``image_ptr[j]:image_ptr[j+1]``.
    """

    centre: np.ndarray  # int32 (n_pairs,)
    partner: np.ndarray  # int32 (n_pairs,)
    kind: np.ndarray  # int8 (n_pairs,)
    ptr: np.ndarray  # int64 (n_pairs + 1,)
    values: np.ndarray  # float64 or float32 (total,)
    image_ptr: np.ndarray  # int64 (n_images + 1,)
    # (n_atoms, n_max, 6) float64 with ``with_virial``: W[i, f] = Σ_q ∂G_if/∂D_q ⊗ D_q over
    # i's neighbour vectors D_q (periodic images kept apart), Voigt order xx yy zz yz xz xy.
    # Contracted with ∂E/∂G it gives the virial ∂E/∂ε (eV), which the folded values cannot.
    virial: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        arrs = (self.centre, self.partner, self.kind, self.ptr, self.values, self.image_ptr, self.virial)
        return sum(a.nbytes for a in arrs if a is not None)


# --------------------------------------------------------------------------- kernels


# Taylor coefficients of cos x and sin x / x in y = x^2, to n = 13: on 0 <= x <= pi both are
# within 1.3e-15 of libm.  In the triplet loop they replace sqrt, cos and a division per
# triplet (the loop's largest cost).
_COS_Y = np.array([1.0, -0.5, 0.041666666666666664, -0.001388888888888889, 2.48015873015873e-05, -2.755731922398589e-07, 2.08767569878681e-09, -1.1470745597729725e-11, 4.779477332387385e-14, -1.5619206968586225e-16, 4.110317623312165e-19, -8.896791392450574e-22, 1.6117375710961184e-24, -2.4795962632247976e-27])
_SINC_Y = np.array([1.0, -0.16666666666666666, 0.008333333333333333, -0.0001984126984126984, 2.7557319223985893e-06, -2.505210838544172e-08, 1.6059043836821613e-10, -7.647163731819816e-13, 2.8114572543455206e-15, -8.22063524662433e-18, 1.9572941063391263e-20, -3.868170170630684e-23, 6.446950284384474e-26, -9.183689863795546e-29])


@njit(cache=True, fastmath=True, inline="always")
def _cos_sinc(y):
    """(cos x, sin x / x) for y = x^2, 0 <= x <= pi."""
    c = _COS_Y[13]
    s = _SINC_Y[13]
    for n in range(12, -1, -1):
        c = c * y + _COS_Y[n]
        s = s * y + _SINC_Y[n]
    return c, s


_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split so that n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = 1.9082149292705877e-10


@njit(cache=True, fastmath=True, inline="always")
def _exp(x):
    """exp(x) for x <= 0 (arguments below -708 give 2^-1022 ~ 0), within 3e-14 relative of libm.

    Branch-free, so a loop of them vectorises (libm's exp does not: numba's LLVM has no
    vector math library).  exp(x) = 2^n exp(r), |r| <= ln2/2, exp(r) by its Taylor series to
    r^12 (truncation < 2e-16), 2^n assembled from its exponent bits.  In a vectorised loop
    ~0.6 ns each against ~6 ns per libm call (measured on this project's machine)."""
    x = max(x, -708.0)
    n = math.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = 2.08767569878681e-09
    p = p * r + 2.505210838544172e-08
    p = p * r + 2.755731922398589e-07
    p = p * r + 2.7557319223985893e-06
    p = p * r + 2.48015873015873e-05
    p = p * r + 0.0001984126984126984
    p = p * r + 0.001388888888888889
    p = p * r + 0.008333333333333333
    p = p * r + 0.041666666666666664
    p = p * r + 0.16666666666666666
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * f64_from_bits((np.int64(n) + 1023) << 52)


@njit(cache=True, fastmath=True, inline="always")
def _add_virial(W, i, f, gx, gy, gz, dx, dy, dz):
    """W[i, f] += g ⊗ D in Voigt order (xx, yy, zz, yz, xz, xy)."""
    W[i, f, 0] += gx * dx
    W[i, f, 1] += gy * dy
    W[i, f, 2] += gz * dz
    W[i, f, 3] += gy * dz
    W[i, f, 4] += gx * dz
    W[i, f, 5] += gx * dy


@njit(cache=True)
def _g4_tables(g4, g4_list, g4_nlist, rc2):
    """Per (centre element c, neighbour pair p) and position kk in ``g4_list[c, p]``: what the
    triplet loop needs without looking at the function's parameters again.

    A centre's functions share few distinct η and (γ, ζ): the loop computes exp(−η Σr²/Rc²)
    once per distinct η of the centre element (``eta_u[c]``, ``n_eta[c]``) and (1 + γ cos)^(ζ−1)
    once per distinct (γ, ζ) (``gam_u[c]``, ``zeta_u[c]``, ``n_gz[c]``), for a whole row of
    triplets at a time, and every function takes them by index (``eta_of``, ``gz_of``).  Also
    per function: the prefactor 2^(1−ζ) (``pref``), 2^(1−ζ) ζ γ (``pzg``, the factor of
    dG/dcos) and −2η/Rc² (``dlnex``)."""
    ne, npp, ml = g4_list.shape
    pref = np.zeros((ne, npp, ml))
    pzg = np.zeros((ne, npp, ml))
    dlnex = np.zeros((ne, npp, ml))
    eta_of = np.zeros((ne, npp, ml), np.int64)
    gz_of = np.zeros((ne, npp, ml), np.int64)
    nu = max(1, g4.shape[1])
    eta_u = np.zeros((ne, nu))
    n_eta = np.zeros(ne, np.int64)
    gam_u = np.zeros((ne, nu))
    zeta_u = np.zeros((ne, nu))
    n_gz = np.zeros(ne, np.int64)
    for c in range(ne):
        for p in range(npp):
            for kk in range(g4_nlist[c, p]):
                k = g4_list[c, p, kk]
                eta, zeta, gamma = g4[c, k, 0], g4[c, k, 1], g4[c, k, 2]
                pref[c, p, kk] = 2.0 ** (1.0 - zeta)
                pzg[c, p, kk] = pref[c, p, kk] * zeta * gamma
                dlnex[c, p, kk] = -2.0 * eta / rc2
                u = 0
                while u < n_eta[c] and eta_u[c, u] != eta:
                    u += 1
                if u == n_eta[c]:
                    eta_u[c, u] = eta
                    n_eta[c] += 1
                eta_of[c, p, kk] = u
                u = 0
                while u < n_gz[c] and not (gam_u[c, u] == gamma and zeta_u[c, u] == zeta):
                    u += 1
                if u == n_gz[c]:
                    gam_u[c, u] = gamma
                    zeta_u[c, u] = zeta
                    n_gz[c] += 1
                gz_of[c, p, kk] = u
    return pref, pzg, dlnex, eta_of, gz_of, eta_u, n_eta, gam_u, zeta_u, n_gz


@njit(cache=True, fastmath=True, inline="always")
def _powers(gam, zeta, cos_r, nb, pw1_r, pw_r, v, scratch):
    """pw1_r[v, s] = (1 + γ cos_s)^(ζ−1) and pw_r[v, s] = (1 + γ cos_s)^ζ for s < nb, both 0
    where 1 + γ cos <= 0 (taken as 0 there, with the derivative).

    The presets' ζ (1, 2, 4, 16) take one loop each, a fixed chain of squarings: a row has
    only ~50 neighbours, and the generic way below (a loop per squaring and per product)
    spent more time entering loops than in them.  20-function set, 1000 reference images:
    0.59 -> 0.53 s; the auto set 1.05 -> 0.97 s (A/B in one process; the same bits: products in
    the same order, checked on the reference set, Mo and TiO2 with the auto, default and Amp sets).
    """
    e1 = int(zeta) - 1 if zeta >= 1.0 and int(zeta) == zeta else -1
    if e1 == 0 or e1 == 1 or e1 == 3 or e1 == 15:
        for s in range(nb):
            b = 1.0 + gam * cos_r[s]
            keep = 1.0 if b > 0.0 else 0.0
            p = 1.0
            if e1 >= 1:
                p = b
            if e1 >= 3:
                b2 = b * b
                p = p * b2
                if e1 == 15:
                    b4 = b2 * b2
                    p = p * b4 * (b4 * b4)
            p = p * keep
            pw1_r[v, s] = p
            pw_r[v, s] = p * b
        return
    if e1 > 0:
        # base^(ζ−1) by squaring, a row at a time: ζ = 32 is 5 squarings, not 31 products
        e = e1
        for s in range(nb):
            pw1_r[v, s] = 1.0
            scratch[s] = 1.0 + gam * cos_r[s]
        while e > 0:
            if e & 1:
                for s in range(nb):
                    pw1_r[v, s] *= scratch[s]
            e >>= 1
            if e > 0:
                for s in range(nb):
                    scratch[s] *= scratch[s]
    else:
        for s in range(nb):
            base = 1.0 + gam * cos_r[s]
            pw1_r[v, s] = base ** (zeta - 1.0) if base > 0.0 else 0.0
    for s in range(nb):
        base = 1.0 + gam * cos_r[s]
        keep = 1.0 if base > 0.0 else 0.0
        pw1_r[v, s] *= keep
        pw_r[v, s] = pw1_r[v, s] * base


@njit(cache=True, fastmath=True)
def _fingerprint_kernel(
    species, nbr_ptr, nbr_j, nbr_D, rc,
    g2, g2_el, n_g2, g4, g4_list, g4_nlist, n_g4,
    pair_ptr, partner, kind, dptr, sub_idx, sub_len,
    G, dvals, with_derivs, W, with_virial,
):  # fmt: skip
    """Fill G (n, nmax) and, if with_derivs, dvals for atoms 0..n-1 of a chunk; if also
    with_virial, W (n, nmax, 6): W[i, f] = Σ_q ∂G_if/∂D_q ⊗ D_q in Voigt order (xx, yy, zz,
    yz, xz, xy), dimensionless (the per-function virial; symmetric since G is rotation invariant).

    nbr_* is a full neighbour list sorted by centre (j are chunk atom indices, D = r_j + S - r_i).

    G4 is computed by rows: for each neighbour q of centre i, all neighbours s within Rc of q at
    once, grouped by element in blocks padded to a multiple of 8 (padding: far away, fc = 0).
    Every triplet {q, s} appears in row q and in row s (G takes half of each), and row q
    accumulates only ∂/∂D_q.  So the inner loops are reductions over a contiguous block of s,
    with no stores, which LLVM vectorises without alias checks; a loop over each triplet's
    functions (what this replaced) scattered into two partners' rows and ran 3x slower.
    """
    n = species.shape[0]
    nmax = G.shape[1]
    n_el = sub_len.shape[1] - 1  # the tables' last kind is the self pair (not stored)
    maxnn = 0
    maxpairs = 1
    for i in range(n):
        maxnn = max(maxnn, nbr_ptr[i + 1] - nbr_ptr[i])
        maxpairs = max(maxpairs, pair_ptr[i + 1] - pair_ptr[i])
    r = np.empty(maxnn)
    fc = np.empty(maxnn)
    dfc = np.empty(maxnn)
    inv_r = np.empty(maxnn)
    slots = np.zeros(maxnn, np.int64)
    slot_of = np.full(n, -1, np.int64)
    rc2 = rc * rc
    inv_rc2 = 1.0 / rc2
    pic = math.pi / rc
    pic2 = pic * pic
    far = 4.0 * rc  # where padding neighbours sit
    pref, pzg, dlnex, eta_of, gz_of, eta_u, n_eta, gam_u, zeta_u, n_gz = _g4_tables(g4, g4_list, g4_nlist, rc2)
    m4 = max(1, g4.shape[1])
    # Per centre atom: derivatives by (partner slot, function, xyz) for G2 and (slot, xyz,
    # function) for G4, one row per partner and a last one that takes the terms of i's own
    # periodic images, which translation invariance cancels (not stored).
    nrow = maxpairs + 1 if with_derivs else 1
    dbuf = np.zeros((nrow, max(1, g2.shape[1]), 3))
    d4 = np.zeros((nrow, 3, m4))
    # the centre's neighbours in element blocks (index b), each padded to a multiple of 8
    nbp = maxnn + 8 * n_el
    X = np.empty(nbp)
    Y = np.empty(nbp)
    Z = np.empty(nbp)
    R = np.empty(nbp)
    IR = np.empty(nbp)
    FC = np.empty(nbp)
    DFCR = np.empty(nbp)  # fc'(r) / r
    orig = np.empty(nbp, np.int64)  # b -> neighbour q, -1 for padding
    blk = np.zeros(n_el + 1, np.int64)
    fill = np.zeros(n_el, np.int64)
    DN = np.zeros((nbp, 3, m4))  # ∂G4_k/∂D_b
    # one row's triplet partners s, compacted (see the G4 loop): sel[t] = b or -1 (padding)
    sel = np.empty(nbp, np.int64)
    cblk = np.zeros(n_el + 1, np.int64)
    Xc = np.empty(nbp)
    Yc = np.empty(nbp)
    Zc = np.empty(nbp)
    Rc = np.empty(nbp)
    IRc = np.empty(nbp)
    FCc = np.empty(nbp)
    # one row of triplets (q, every s): see the G4 loop
    nu = eta_u.shape[1]
    fcs_r = np.empty(nbp)
    x3_r = np.empty(nbp)
    x13_r = np.empty(nbp)
    cr1_r = np.empty(nbp)
    iij_r = np.empty(nbp)
    cos_r = np.empty(nbp)
    sq_r = np.empty(nbp)
    ex_r = np.empty((nu, nbp))
    pw1_r = np.empty((nu, nbp))
    pw_r = np.empty((nu, nbp))
    for i in range(n):
        c = species[i]
        a = nbr_ptr[i]
        nn = nbr_ptr[i + 1] - a
        p0 = pair_ptr[i]
        npair = pair_ptr[i + 1] - p0
        ng2c = n_g2[c]
        ng4c = n_g4[c]
        if with_derivs:
            for p in range(npair):
                slot_of[partner[p0 + p]] = p
            slot_of[i] = npair
            dbuf[: npair + 1, :ng2c, :] = 0.0
            d4[: npair + 1, :, :ng4c] = 0.0
        for f in range(nmax):
            G[i, f] = 0.0
        if with_virial:
            for f in range(nmax):
                for v in range(6):
                    W[i, f, v] = 0.0
        for e in range(n_el):
            fill[e] = 0
        for q in range(nn):
            dx = nbr_D[a + q, 0]
            dy = nbr_D[a + q, 1]
            dz = nbr_D[a + q, 2]
            rq = math.sqrt(dx * dx + dy * dy + dz * dz)
            r[q] = rq
            inv_r[q] = 1.0 / rq
            if rq < rc:
                fc[q] = 0.5 * (math.cos(pic * rq) + 1.0)
                dfc[q] = -0.5 * pic * math.sin(pic * rq)
            else:
                fc[q] = 0.0
                dfc[q] = 0.0
            if with_derivs:
                slots[q] = slot_of[nbr_j[a + q]]
            fill[species[nbr_j[a + q]]] += 1
        # ---- G2
        for q in range(nn):
            if fc[q] == 0.0:
                continue
            ej = species[nbr_j[a + q]]
            rq = r[q]
            for k in range(ng2c):
                if g2_el[c, k] != ej:
                    continue
                eta = g2[c, k, 0]
                rs = g2[c, k, 1]
                ex = _exp(-eta * (rq - rs) ** 2 / rc2)
                G[i, k] += ex * fc[q]
                if with_derivs:
                    dt = ex * (dfc[q] - 2.0 * eta * (rq - rs) / rc2 * fc[q]) * inv_r[q]
                    sj = slots[q]
                    for x in range(3):
                        dbuf[sj, k, x] += dt * nbr_D[a + q, x]
                    if with_virial:
                        # ∂G/∂D = dt·D, so the virial is dt·D⊗D
                        _add_virial(W, i, k, dt * nbr_D[a + q, 0], dt * nbr_D[a + q, 1], dt * nbr_D[a + q, 2],
                                    nbr_D[a + q, 0], nbr_D[a + q, 1], nbr_D[a + q, 2])  # fmt: skip
        if ng4c > 0:
            # ---- G4: element blocks
            for e in range(n_el):
                blk[e + 1] = blk[e] + (fill[e] + 7) // 8 * 8
                fill[e] = blk[e]
            nb = blk[n_el]
            for b in range(nb):
                X[b] = far
                Y[b] = 0.0
                Z[b] = 0.0
                R[b] = far
                IR[b] = 1.0 / far
                FC[b] = 0.0
                DFCR[b] = 0.0
                orig[b] = -1
                if with_derivs:
                    for x in range(3):
                        for k in range(ng4c):
                            DN[b, x, k] = 0.0
            for q in range(nn):
                e = species[nbr_j[a + q]]
                b = fill[e]
                fill[e] += 1
                X[b] = nbr_D[a + q, 0]
                Y[b] = nbr_D[a + q, 1]
                Z[b] = nbr_D[a + q, 2]
                R[b] = r[q]
                IR[b] = inv_r[q]
                FC[b] = fc[q]
                DFCR[b] = dfc[q] * inv_r[q]
                orig[b] = q
            for ej in range(n_el):
                for q in range(blk[ej], blk[ej + 1]):
                    if FC[q] == 0.0:
                        continue
                    xq, yq, zq = X[q], Y[q], Z[q]
                    rq, irq, fq, dfq = R[q], IR[q], FC[q], DFCR[q]
                    # Only about half of the (q, s) in a row form a triplet (R_qs < Rc): keep
                    # those, per element block, in compacted copies padded to a multiple of 8
                    # (padding far away, fc = 0, as above), and run the costly loops below over
                    # them.  Branch-free: every s is written, the count advances when it is in.
                    # Auto sets, with derivatives: reference 1.59 -> 1.42 s (1000 images), TiO2
                    # 1.16 -> 0.95 s (300), Mo 0.33 -> 0.26 s (60); values alone unchanged (the
                    # compaction costs what it saves there); same values to rounding (~1e-15).
                    m = 0
                    for ek in range(n_el):
                        cblk[ek] = m
                        for s in range(blk[ek], blk[ek + 1]):
                            jx = X[s] - xq
                            jy = Y[s] - yq
                            jz = Z[s] - zq
                            rjk2 = jx * jx + jy * jy + jz * jz
                            sel[m] = s
                            m += 1 if (rjk2 < rc2) & (rjk2 > 0.0) & (FC[s] > 0.0) else 0
                        while m % 8 != 0:
                            sel[m] = -1
                            m += 1
                    cblk[n_el] = m
                    nbc = m
                    for t in range(nbc):
                        s = sel[t]
                        if s >= 0:
                            Xc[t] = X[s]
                            Yc[t] = Y[s]
                            Zc[t] = Z[s]
                            Rc[t] = R[s]
                            IRc[t] = IR[s]
                            FCc[t] = FC[s]
                        else:
                            Xc[t] = far
                            Yc[t] = 0.0
                            Zc[t] = 0.0
                            Rc[t] = far
                            IRc[t] = 1.0 / far
                            FCc[t] = 0.0
                    for s in range(nbc):
                        jx = Xc[s] - xq
                        jy = Yc[s] - yq
                        jz = Zc[s] - zq
                        rjk2 = jx * jx + jy * jy + jz * jz
                        # 1 or 0 by arithmetic (a branch here stops vectorisation); 0 for padding
                        inside = 1.0 if (rjk2 < rc2) & (rjk2 > 0.0) & (FCc[s] > 0.0) else 0.0
                        # fc(R_jk) and fc'(R_jk)/R_jk as polynomials in R_jk^2: no sqrt, cos or division
                        cjk, sinc = _cos_sinc(min(pic2 * rjk2, math.pi * math.pi))
                        fcjk = 0.5 * (cjk + 1.0) * inside
                        x3 = fq * FCc[s] * (-0.5 * pic2 * sinc * inside)
                        fcs_r[s] = fq * FCc[s] * fcjk
                        x3_r[s] = x3
                        x13_r[s] = FCc[s] * fcjk * dfq + x3
                        iij = irq * IRc[s]
                        cs = (xq * Xc[s] + yq * Yc[s] + zq * Zc[s]) * iij
                        cos_r[s] = cs
                        cr1_r[s] = cs * irq * irq
                        iij_r[s] = iij
                        # Σr²/Rc²; a product, not a division: numba checks a division for a zero
                        # divisor, and that branch stops LLVM from vectorising the loop
                        sq_r[s] = (rq * rq + Rc[s] * Rc[s] + rjk2) * inv_rc2
                    for u in range(n_eta[c]):
                        en = -eta_u[c, u]
                        for s in range(nbc):
                            ex_r[u, s] = _exp(en * sq_r[s])
                    for v in range(n_gz[c]):
                        _powers(gam_u[c, v], zeta_u[c, v], cos_r, nbc, pw1_r, pw_r, v, sq_r)
                    for ek in range(n_el):
                        b0 = np.uint64(cblk[ek])  # unsigned: no negative-index wrap, so plain vector loads
                        b1 = np.uint64(cblk[ek + 1])
                        pidx = min(ej, ek) * n_el + max(ej, ek)
                        for kk in range(g4_nlist[c, pidx]):
                            k = g4_list[c, pidx, kk]
                            u = eta_of[c, pidx, kk]
                            v = gz_of[c, pidx, kk]
                            # the values by a loop of their own, so that G is bit-identical with
                            # and without derivatives
                            gs = 0.0
                            for s in range(b0, b1):
                                gs += pw_r[v, s] * ex_r[u, s] * fcs_r[s]
                            G[i, ng2c + k] += 0.5 * pref[c, pidx, kk] * gs
                            if not with_derivs:
                                continue
                            # t = tb fcs with tb = pref (1 + γ cos)^ζ exp(−η Σr²/Rc²); from the
                            # chain rule through cos θ, Σr² (D_jk = D_s − D_q) and the three fc:
                            # ∂t/∂D_q = P D_q + Q D_s
                            pr = pref[c, pidx, kk]
                            pz = pzg[c, pidx, kk]
                            dl = dlnex[c, pidx, kk]
                            aP = 0.0
                            aQx = 0.0
                            aQy = 0.0
                            aQz = 0.0
                            for s in range(b0, b1):
                                fcs = fcs_r[s]
                                tb = pr * pw_r[v, s] * ex_r[u, s]
                                dpow = pz * pw1_r[v, s] * ex_r[u, s] * fcs  # dt/dcos
                                ta = tb * fcs * dl
                                P = 2.0 * ta + tb * x13_r[s] - dpow * cr1_r[s]
                                Q = dpow * iij_r[s] - ta - tb * x3_r[s]
                                aP += P
                                aQx += Q * Xc[s]
                                aQy += Q * Yc[s]
                                aQz += Q * Zc[s]
                            DN[q, 0, k] += aP * xq + aQx
                            DN[q, 1, k] += aP * yq + aQy
                            DN[q, 2, k] += aP * zq + aQz
            if with_derivs:
                for b in range(nb):
                    q = orig[b]
                    if q < 0:
                        continue
                    sj = slots[q]
                    for x in range(3):
                        for k in range(ng4c):
                            d4[sj, x, k] += DN[b, x, k]
                    if with_virial:
                        for k in range(ng4c):
                            _add_virial(W, i, ng2c + k, DN[b, 0, k], DN[b, 1, k], DN[b, 2, k], X[b], Y[b], Z[b])
        if with_derivs:
            for p in range(npair):
                kd = kind[p0 + p]
                base_ptr = dptr[p0 + p]
                L = sub_len[c, kd]
                for l in range(L):
                    f = sub_idx[c, kd, l]
                    if f < ng2c:
                        vx, vy, vz = dbuf[p, f, 0], dbuf[p, f, 1], dbuf[p, f, 2]
                    else:
                        vx, vy, vz = d4[p, 0, f - ng2c], d4[p, 1, f - ng2c], d4[p, 2, f - ng2c]
                    dvals[base_ptr + l] = vx
                    dvals[base_ptr + L + l] = vy
                    dvals[base_ptr + 2 * L + l] = vz


# --------------------------------------------------------------------------- drivers


def _chunk_lists(st, lo: int, hi: int, cutoff: float):
    """Concatenated neighbour lists of images lo..hi-1 with chunk-local atom indices."""
    a0 = st.atom_ptr[lo]
    ii, jj, DD = [], [], []
    for k in range(lo, hi):
        s, e = st.atom_ptr[k], st.atom_ptr[k + 1]
        i, j, D = neighbor_list(st.positions[s:e], st.cells[k], st.pbc[k], cutoff)
        ii.append(i + (s - a0))
        jj.append(j + (s - a0))
        DD.append(D)
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(DD)


def _check_min_distance(st, lo: int, nbr_i: np.ndarray, nbr_D: np.ndarray) -> None:
    """Atoms closer than MIN_DISTANCE are a DataError naming file and image (checked here,
    on the neighbour list we need anyway: a separate 0.3 Å list costs 40x more)."""
    if len(nbr_D) == 0:
        return
    d2 = np.einsum("ij,ij->i", nbr_D, nbr_D)
    k = int(np.argmin(d2))
    if d2[k] < MIN_DISTANCE**2:
        atom = nbr_i[k] + st.atom_ptr[lo]
        img = int(np.searchsorted(st.atom_ptr, atom, side="right") - 1)
        raise DataError(
            f"{st.sources[img]}: atom {atom - st.atom_ptr[img]} has a neighbour {np.sqrt(d2[k]):.3f} Å away "
            f"(< {MIN_DISTANCE} Å); check the units of the positions"
        )


def _pairs(n: int, nbr_i: np.ndarray, nbr_j: np.ndarray, species: np.ndarray):
    """Unique (centre, partner ≠ centre) pairs of a chunk, sorted by centre."""
    other = nbr_i != nbr_j  # i's own periodic images have no pair
    codes = np.unique(nbr_i[other] * n + nbr_j[other])
    centre, partner = np.divmod(codes, n)
    return centre, partner, species[partner]


def neighbor_counts(st, cutoff: float) -> np.ndarray:
    """Per image: number of (centre, partner) derivative pairs plus its atoms (cheap; the
    cost-balanced sharding's measure of an image's work)."""
    out = np.zeros(st.n_images, np.int64)
    for k in range(st.n_images):
        s, e = st.atom_ptr[k], st.atom_ptr[k + 1]
        i, j, _ = neighbor_list(st.positions[s:e], st.cells[k], st.pbc[k], cutoff)
        n = e - s
        out[k] = len(np.unique(np.concatenate([i * n + j, np.arange(n) * (n + 1)])))
    return out


def neighbour_statistics(st, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """One pass of neighbour lists over the images of ``st`` for what a training needs to
    know before fingerprinting (each pass over the reference set's 3000 images costs ~0.17 s):

    * ``r_min`` (n_elements, n_elements): the shortest distance (Å) between atoms of each
      element pair within ``cutoff`` (inf for a pair never that close), for ``preset = "auto"``;
    * ``counts`` (n_elements, n_elements + 1): derivative pairs by centre element c and kind k
      (the partner's element; the last column, the self kind, is 0: no self pair is stored).
      With ``sub_len`` it gives the exact size of the stored derivatives (memory forecasts).
    """
    ne = len(st.elements)
    r_min = np.full(ne * ne, np.inf)
    counts = np.zeros(ne * (ne + 1), np.int64)
    for k in range(st.n_images):
        s, e = st.atom_ptr[k], st.atom_ptr[k + 1]
        i, j, D = neighbor_list(st.positions[s:e], st.cells[k], st.pbc[k], cutoff)
        sp = st.species[s:e]
        if len(i):
            np.minimum.at(r_min, sp[i] * ne + sp[j], np.sqrt(np.einsum("ij,ij->i", D, D)))
        n = e - s
        key = np.unique(i * n + j)  # periodic images of one partner fold into one pair
        key = key[key // n != key % n]  # i's own images have no stored pair
        np.add.at(counts, sp[key // n] * (ne + 1) + sp[key % n], 1)
    return r_min.reshape(ne, ne), counts.reshape(ne, ne + 1)


def derivative_value_count(counts: np.ndarray, sf: SymmetryFunctions) -> int:
    """How many derivative values :func:`compute_fingerprints` stores for pairs counted as in
    ``counts`` (from :func:`neighbour_statistics`): 3 × the functions each pair moves."""
    return int((counts * sf.block_tables()[1]).sum()) * 3


def pair_kind_counts(st, cutoff: float) -> np.ndarray:
    """The ``counts`` of :func:`neighbour_statistics`."""
    return neighbour_statistics(st, cutoff)[1]


def shortest_distances(st, cutoff: float) -> np.ndarray:
    """The ``r_min`` of :func:`neighbour_statistics`."""
    return neighbour_statistics(st, cutoff)[0]


def compute_fingerprints(
    st,
    sf: SymmetryFunctions,
    with_derivs: bool = True,
    dtype=np.float64,
    chunk_pairs: int = CHUNK_PAIRS,
    progress=None,
    with_virial: bool = False,
    n_values: int | None = None,
) -> tuple[np.ndarray, DerivativeBlocks | None]:
    """Fingerprints of every atom of ``st`` (a :class:`hpcpot.potential.structures.Structures`).

    Returns ``G`` (n_atoms, n_max) in the order of ``sf`` (unused trailing columns of an
    element with fewer functions are 0) and, if ``with_derivs``, the sparse derivatives
    (``dtype`` float64 or float32), with ``with_virial`` also their per-function virials
    (``DerivativeBlocks.virial``, for stress).  ``progress(done_images)`` is called after each chunk.
    ``n_values``: the number of derivative values, if the caller knows it (a training does,
    from :func:`neighbour_statistics`): the array is then allocated once at that size.
    """
    with_virial = with_virial and with_derivs
    if tuple(st.elements) != tuple(sf.elements):
        raise ValueError(f"structures number species by {st.elements}, the fingerprint set by {sf.elements}")
    sub_idx, sub_len = sf.block_tables()
    g4_list, g4_nlist = sf.g4_pair_tables()
    na = len(st.species)
    G = np.zeros((na, sf.n_max))
    W = np.zeros((na if with_virial else 0, sf.n_max, 6))
    cen_l, par_l, kind_l, len_l = [], [], [], []
    # the derivative values, written in place by the kernel; np.empty pages cost no memory
    # until written
    vals = np.empty(n_values if with_derivs and n_values else 0, dtype)
    used = 0
    img_pairs = np.zeros(st.n_images, np.int64)
    lo = 0
    while lo < st.n_images:
        # grow the chunk until it holds ~chunk_pairs neighbour pairs (estimate: n_atoms * 64)
        hi = lo + 1
        est = (st.atom_ptr[hi] - st.atom_ptr[lo]) * 64
        while hi < st.n_images and est < chunk_pairs:
            hi += 1
            est = (st.atom_ptr[hi] - st.atom_ptr[lo]) * CHUNK_NEIGHBOURS_PER_ATOM
        a0, a1 = st.atom_ptr[lo], st.atom_ptr[hi]
        n = a1 - a0
        sp = st.species[a0:a1]
        ni, nj, nD = _chunk_lists(st, lo, hi, sf.cutoff)
        _check_min_distance(st, lo, ni, nD)
        nbr_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(ni, minlength=n), out=nbr_ptr[1:])
        if with_derivs:
            centre, partner, kind = _pairs(n, ni, nj, sp)
            pair_ptr = np.zeros(n + 1, np.int64)
            np.cumsum(np.bincount(centre, minlength=n), out=pair_ptr[1:])
            plen = 3 * sub_len[sp[centre], kind]
            dptr = np.zeros(len(centre) + 1, np.int64)
            np.cumsum(plen, out=dptr[1:])
            vals = _room_for(vals, used, int(dptr[-1]), a1, na)
            dvals = vals[used : used + dptr[-1]]  # the kernel rounds as it stores: no float64 chunk, no copy
        else:
            centre = partner = kind = np.zeros(0, np.int64)
            pair_ptr = np.zeros(n + 1, np.int64)
            dptr = np.zeros(1, np.int64)
            dvals = np.zeros(0)
        _fingerprint_kernel(
            sp, nbr_ptr, nj, nD, sf.cutoff,
            sf.g2, sf.g2_el, sf.n_g2, sf.g4, g4_list, g4_nlist, sf.n_g4,
            pair_ptr, partner, kind, dptr, sub_idx, sub_len,
            G[a0:a1], dvals, with_derivs, W[a0:a1] if with_virial else W, with_virial,
        )  # fmt: skip
        if with_derivs:
            cen_l.append((centre + a0).astype(np.int32))
            par_l.append((partner + a0).astype(np.int32))
            kind_l.append(kind.astype(np.int8))
            len_l.append(plen)
            used += len(dvals)
            del dvals  # no view may outlive a chunk: _room_for may reallocate vals
            # pairs per image: centres of image k are its atoms
            img_of_atom = np.repeat(np.arange(lo, hi), st.n_atoms[lo:hi])
            img_pairs[lo:hi] = np.bincount(img_of_atom[centre] - lo, minlength=hi - lo)
        if progress is not None:
            progress(hi)
        lo = hi
    if not with_derivs:
        return G, None
    plen = np.concatenate(len_l) if len_l else np.zeros(0, np.int64)
    ptr = np.zeros(len(plen) + 1, np.int64)
    np.cumsum(plen, out=ptr[1:])
    image_ptr = np.zeros(st.n_images + 1, np.int64)
    np.cumsum(img_pairs, out=image_ptr[1:])
    blocks = DerivativeBlocks(
        _concat_freeing(cen_l, np.int32),
        _concat_freeing(par_l, np.int32),
        _concat_freeing(kind_l, np.int8),
        ptr,
        _trimmed(vals, used),
        image_ptr,
        W if with_virial else None,
    )
    return G, blocks


def _room_for(vals: np.ndarray, used: int, need: int, atoms_done: int, atoms_total: int) -> np.ndarray:
    """``vals`` with room for ``need`` more values after ``used``.  When it has to grow, it
    grows to what the atoms done so far need per atom, times all atoms, plus 5%: np.empty
    pages that are never written cost no memory, so the estimate may be generous, and the
    kernel writes each chunk straight into place (concatenating chunks at the end cost
    0.4 s, a tenth of the fingerprinting, on the reference set)."""
    if used + need <= len(vals):
        return vals
    if used == 0 and atoms_done == atoms_total:
        # one chunk holds everything (the ASE calculator, small batches): the exact size, and
        # np.empty's untouched pages (numpy's resize below would zero-fill them first: 5 ms
        # of a 30 ms calculator call at 224 atoms)
        return np.empty(need, vals.dtype)
    size = max(used + need, int((used + need) / max(atoms_done, 1) * atoms_total * 1.05) + 1024)
    # realloc, not a new array and a copy, so that the old and the new never both hold the
    # values (TiO2, whose later images need more per atom than the first chunk's, peaked at
    # 2.76 GiB against 1.97 GiB).  Growing from the initial empty array gives a block glibc
    # can remap (one from np.empty of a large size is copied instead); numpy zero-fills the
    # new part, which costs the time of a memset.  A training passes the exact size.
    vals.resize(size, refcheck=False)  # no views of vals exist here
    return vals


def _trimmed(vals: np.ndarray, used: int) -> np.ndarray:
    """``vals[:used]`` as an array of its own, without a copy: the unused tail is given back
    (realloc, which shrinks a large block in place)."""
    if len(vals) != used:
        vals.resize(used, refcheck=False)  # no views of vals exist here
    return vals


def _concat_freeing(parts: list, dtype) -> np.ndarray:
    """np.concatenate(parts), releasing each part once copied.  The result's pages are only
    touched as they are filled, so the peak is the total plus one chunk, not twice the total
    (np.concatenate held every chunk and the whole copy at once: peak RSS 2x the derivatives)."""
    out = np.empty(sum(len(p) for p in parts), dtype)
    off = 0
    for k in range(len(parts)):
        n = len(parts[k])
        out[off : off + n] = parts[k]
        off += n
        parts[k] = None
    return out


def fingerprints(atoms, sf: SymmetryFunctions) -> np.ndarray:
    """Unscaled fingerprints of one structure, shape (n_atoms, n_functions), in the order
    documented above (comparable with Amp's).  When elements have different numbers of
    functions the shorter rows are padded with 0."""
    G, _ = compute_fingerprints(structure_arrays(atoms, sf.elements), sf, with_derivs=False)
    return G


def fingerprint_derivatives_dense(atoms, sf: SymmetryFunctions) -> tuple[np.ndarray, np.ndarray]:
    """(G, dG) with dG[i, f, m, x] = ∂G_if/∂r_mx (1/Å), dense; for tests and small systems."""
    st = structure_arrays(atoms, sf.elements)
    G, b = compute_fingerprints(st, sf, with_derivs=True)
    sub_idx, sub_len = sf.block_tables()
    n = len(atoms)
    dG = np.zeros((n, sf.n_max, n, 3))
    for p in range(len(b.centre)):  # test helper: clarity over speed
        i, m, k = b.centre[p], b.partner[p], b.kind[p]
        c = st.species[i]
        L = sub_len[c, k]
        dG[i, sub_idx[c, k, :L], m, :] += b.values[b.ptr[p] : b.ptr[p] + 3 * L].reshape(3, L).T
    for i in range(n):  # the centre's own derivative, from translation invariance
        dG[i, :, i, :] = -dG[i].sum(axis=1)
    return G, dG
