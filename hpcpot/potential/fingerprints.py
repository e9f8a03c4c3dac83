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

    A triplet's functions share few distinct η and (γ, ζ): the loop computes exp(−η Σr²/Rc²)
    once per distinct η (``eta_u``, ``n_eta``) and (1 + γ cos)^(ζ−1) once per distinct (γ, ζ)
    (``gam_u``, ``zeta_u``, ``n_gz``), and every function then takes them by index (``eta_of``,
    ``gz_of``) in one loop with no branch, which LLVM vectorises.  Also per function: the
    prefactor 2^(1−ζ) (``pref``), 2^(1−ζ) ζ γ (``pzg``, the factor of dG/dcos) and −2η/Rc²
    (``dlnex``).  Per G4 function k of centre c, where it sits in those lists: pair
    ``pos_p[c, k]``, position ``pos_kk[c, k]``.  List lengths are padded to a multiple of 8
    (``n_pad``; padding functions have zero prefactors)."""
    ne, npp, ml = g4_list.shape
    ml = (ml + 7) // 8 * 8
    n_pad = (g4_nlist + 7) // 8 * 8
    pref = np.zeros((ne, npp, ml))
    pzg = np.zeros((ne, npp, ml))
    dlnex = np.zeros((ne, npp, ml))
    eta_of = np.zeros((ne, npp, ml), np.int64)
    gz_of = np.zeros((ne, npp, ml), np.int64)
    eta_u = np.zeros((ne, npp, ml))
    n_eta = np.zeros((ne, npp), np.int64)
    gam_u = np.zeros((ne, npp, ml))
    zeta_u = np.zeros((ne, npp, ml))
    n_gz = np.zeros((ne, npp), np.int64)
    pos_p = np.zeros((ne, g4.shape[1]), np.int64)
    pos_kk = np.zeros((ne, g4.shape[1]), np.int64)
    for c in range(ne):
        for p in range(npp):
            for kk in range(g4_nlist[c, p]):
                k = g4_list[c, p, kk]
                pos_p[c, k] = p
                pos_kk[c, k] = kk
                eta, zeta, gamma = g4[c, k, 0], g4[c, k, 1], g4[c, k, 2]
                pref[c, p, kk] = 2.0 ** (1.0 - zeta)
                pzg[c, p, kk] = pref[c, p, kk] * zeta * gamma
                dlnex[c, p, kk] = -2.0 * eta / rc2
                u = 0
                while u < n_eta[c, p] and eta_u[c, p, u] != eta:
                    u += 1
                if u == n_eta[c, p]:
                    eta_u[c, p, u] = eta
                    n_eta[c, p] += 1
                eta_of[c, p, kk] = u
                u = 0
                while u < n_gz[c, p] and not (gam_u[c, p, u] == gamma and zeta_u[c, p, u] == zeta):
                    u += 1
                if u == n_gz[c, p]:
                    gam_u[c, p, u] = gamma
                    zeta_u[c, p, u] = zeta
                    n_gz[c, p] += 1
                gz_of[c, p, kk] = u
    return n_pad, pref, pzg, dlnex, eta_of, gz_of, eta_u, n_eta, gam_u, zeta_u, n_gz, pos_p, pos_kk


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
    """
    n = species.shape[0]
    nmax = G.shape[1]
    n_el = sub_len.shape[1] - 1  # the tables' last kind is the self pair (not stored)
    npp = g4_nlist.shape[1]
    maxnn = 0
    maxpairs = 1
    for i in range(n):
        maxnn = max(maxnn, nbr_ptr[i + 1] - nbr_ptr[i])
        maxpairs = max(maxpairs, pair_ptr[i + 1] - pair_ptr[i])
    r = np.empty(maxnn)
    fc = np.empty(maxnn)
    dfc = np.empty(maxnn)
    inv_r = np.empty(maxnn)
    dfc_r = np.empty(maxnn)  # fc'(r) / r
    slots = np.empty(maxnn, np.int64)
    slot_of = np.full(n, -1, np.int64)
    rc2 = rc * rc
    pic = math.pi / rc
    pic2 = pic * pic
    n_pad, pref, pzg, dlnex, eta_of, gz_of, eta_u, n_eta, gam_u, zeta_u, n_gz, pos_p, pos_kk = _g4_tables(
        g4, g4_list, g4_nlist, rc2
    )
    ml = pref.shape[2]  # the padded list length
    # Per centre atom: G2 derivatives by (partner slot, function, xyz) and G4 ones by (partner
    # slot, neighbour pair, xyz, position), one row per partner and a last one that takes the
    # terms of i's own periodic images, which translation invariance cancels (not stored).
    nrow = maxpairs + 1 if with_derivs else 1
    dbuf = np.zeros((nrow, max(1, g2.shape[1]), 3))
    d4 = np.zeros((nrow, npp, 3, ml))
    g4acc = np.zeros((npp, ml))
    w4 = np.zeros((npp, ml, 6))
    ex_u = np.empty(ml)  # per triplet: exp(−η_u Σr²/Rc²)
    pw1_u = np.empty(ml)  # (1 + γ_u cos)^(ζ_u − 1), 0 where 1 + γ cos <= 0
    pw_u = np.empty(ml)  # (1 + γ_u cos)^ζ_u, likewise
    tB = np.empty(ml)  # per function of a triplet: t / fc-product, dt/dcos
    tD = np.empty(ml)
    tP = np.empty(ml)
    tQ = np.empty(ml)
    tR = np.empty(ml)
    for i in range(n):
        c = species[i]
        a = nbr_ptr[i]
        nn = nbr_ptr[i + 1] - a
        p0 = pair_ptr[i]
        npair = pair_ptr[i + 1] - p0
        ng2c = n_g2[c]
        if with_derivs:
            for p in range(npair):
                slot_of[partner[p0 + p]] = p
            slot_of[i] = npair
            dbuf[: npair + 1, :ng2c, :] = 0.0
            d4[: npair + 1] = 0.0
        for f in range(nmax):
            G[i, f] = 0.0
        g4acc[:] = 0.0
        if with_virial:
            w4[:] = 0.0
            for f in range(nmax):
                for v in range(6):
                    W[i, f, v] = 0.0
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
            dfc_r[q] = dfc[q] * inv_r[q]
            if with_derivs:
                slots[q] = slot_of[nbr_j[a + q]]
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
                ex = math.exp(-eta * (rq - rs) ** 2 / rc2)
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
        # ---- G4
        for q in range(nn):
            if fc[q] == 0.0:
                continue
            ej = species[nbr_j[a + q]]
            dijx = nbr_D[a + q, 0]
            dijy = nbr_D[a + q, 1]
            dijz = nbr_D[a + q, 2]
            rij = r[q]
            for s in range(q + 1, nn):
                if fc[s] == 0.0:
                    continue
                dikx = nbr_D[a + s, 0]
                diky = nbr_D[a + s, 1]
                dikz = nbr_D[a + s, 2]
                djkx = dikx - dijx
                djky = diky - dijy
                djkz = dikz - dijz
                rjk2 = djkx * djkx + djky * djky + djkz * djkz
                if rjk2 >= rc2:
                    continue
                ek = species[nbr_j[a + s]]
                pidx = min(ej, ek) * n_el + max(ej, ek)
                nlist = n_pad[c, pidx]
                if nlist == 0:
                    continue
                # fc(R_jk) and fc'(R_jk)/R_jk as polynomials in R_jk^2: no sqrt, cos or division
                cjk, sinc = _cos_sinc(pic2 * rjk2)
                fcjk = 0.5 * (cjk + 1.0)
                dfcjk_r = -0.5 * pic2 * sinc
                rik = r[s]
                inv_ijik = inv_r[q] * inv_r[s]
                cos = (dijx * dikx + dijy * diky + dijz * dikz) * inv_ijik
                rsum = rij * rij + rik * rik + rjk2
                fcs = fc[q] * fc[s] * fcjk
                for u in range(n_eta[c, pidx]):
                    ex_u[u] = math.exp(-eta_u[c, pidx, u] * rsum / rc2)
                for u in range(n_gz[c, pidx]):
                    base = 1.0 + gam_u[c, pidx, u] * cos
                    zeta = zeta_u[c, pidx, u]
                    if base <= 0.0:  # (1 + γ cos)^ζ is taken as 0 there, with its derivative
                        pw1 = 0.0
                    elif zeta >= 1.0 and int(zeta) == zeta:
                        # base^(ζ−1) by squaring: ζ = 16 is 4 squarings, not 15 products in a chain
                        e1 = int(zeta) - 1
                        pw1 = 1.0
                        sq = base
                        while e1 > 0:
                            if e1 & 1:
                                pw1 *= sq
                            sq *= sq
                            e1 >>= 1
                    else:
                        pw1 = base ** (zeta - 1.0)
                    pw1_u[u] = pw1
                    pw_u[u] = pw1 * base
                # one loop for the values with and without derivatives (bit-identical G)
                for kk in range(nlist):
                    u = gz_of[c, pidx, kk]
                    e = ex_u[eta_of[c, pidx, kk]]
                    tb = pref[c, pidx, kk] * pw_u[u] * e
                    tB[kk] = tb
                    tD[kk] = pzg[c, pidx, kk] * pw1_u[u] * e * fcs  # dt/dcos
                    g4acc[pidx, kk] += tb * fcs
                if not with_derivs:
                    continue
                # t = tb fcs; dt/dD_ij = P D_ij + Q D_ik and dt/dD_ik = Q D_ij + R D_ik, from
                # the chain rule through cos θ, Σr² (D_jk = D_ik − D_ij) and the three fc:
                x3 = fc[q] * fc[s] * dfcjk_r
                x13 = fc[s] * fcjk * dfc_r[q] + x3
                x23 = fc[q] * fcjk * dfc_r[s] + x3
                cr1 = cos * inv_r[q] * inv_r[q]
                cr2 = cos * inv_r[s] * inv_r[s]
                for kk in range(nlist):
                    tb = tB[kk]
                    dpow = tD[kk]
                    ta = tb * fcs * dlnex[c, pidx, kk]
                    tP[kk] = 2.0 * ta + tb * x13 - dpow * cr1
                    tQ[kk] = dpow * inv_ijik - ta - tb * x3
                    tR[kk] = 2.0 * ta + tb * x23 - dpow * cr2
                sj = slots[q]
                sk = slots[s]
                for kk in range(nlist):
                    d4[sj, pidx, 0, kk] += tP[kk] * dijx + tQ[kk] * dikx
                    d4[sj, pidx, 1, kk] += tP[kk] * dijy + tQ[kk] * diky
                    d4[sj, pidx, 2, kk] += tP[kk] * dijz + tQ[kk] * dikz
                for kk in range(nlist):
                    d4[sk, pidx, 0, kk] += tQ[kk] * dijx + tR[kk] * dikx
                    d4[sk, pidx, 1, kk] += tQ[kk] * dijy + tR[kk] * diky
                    d4[sk, pidx, 2, kk] += tQ[kk] * dijz + tR[kk] * dikz
                if with_virial:
                    for kk in range(nlist):
                        gx = tP[kk] * dijx + tQ[kk] * dikx
                        gy = tP[kk] * dijy + tQ[kk] * diky
                        gz = tP[kk] * dijz + tQ[kk] * dikz
                        hx = tQ[kk] * dijx + tR[kk] * dikx
                        hy = tQ[kk] * dijy + tR[kk] * diky
                        hz = tQ[kk] * dijz + tR[kk] * dikz
                        w4[pidx, kk, 0] += gx * dijx + hx * dikx
                        w4[pidx, kk, 1] += gy * dijy + hy * diky
                        w4[pidx, kk, 2] += gz * dijz + hz * dikz
                        w4[pidx, kk, 3] += gy * dijz + hy * dikz
                        w4[pidx, kk, 4] += gx * dijz + hx * dikz
                        w4[pidx, kk, 5] += gx * dijy + hx * diky
        for k in range(n_g4[c]):
            G[i, ng2c + k] = g4acc[pos_p[c, k], pos_kk[c, k]]
            if with_virial:
                for v in range(6):
                    W[i, ng2c + k, v] = w4[pos_p[c, k], pos_kk[c, k], v]
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
                        pp = pos_p[c, f - ng2c]
                        kk = pos_kk[c, f - ng2c]
                        vx, vy, vz = d4[p, pp, 0, kk], d4[p, pp, 1, kk], d4[p, pp, 2, kk]
                    dvals[base_ptr + l] = vx
                    dvals[base_ptr + L + l] = vy
                    dvals[base_ptr + 2 * L + l] = vz


# --------------------------------------------------------------------------- drivers

# vesin (C++) vs ase.neighborlist.neighbor_list on the reference set: 0.13 ms vs 7.1 ms
# per 14-atom image, same pairs; vesin it is.
def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """Full neighbour list of one image: (i, j, D) with D = r_j + shift − r_i (Å), sorted by i."""
    import vesin

    nl = vesin.NeighborList(cutoff=cutoff, full_list=True, sorted=True)
    i, j, D = nl.compute(positions, cell, np.asarray(pbc, bool), "ijD")
    return i.astype(np.int64), j.astype(np.int64), D


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
    know before fingerprinting (each pass over the reference set's 3000 images costs ~0.35 s):

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
) -> tuple[np.ndarray, DerivativeBlocks | None]:
    """Fingerprints of every atom of ``st`` (a :class:`hpcpot.potential.structures.Structures`).

    Returns ``G`` (n_atoms, n_max) in the order of ``sf`` (unused trailing columns of an
    element with fewer functions are 0) and, if ``with_derivs``, the sparse derivatives
    (``dtype`` float64 or float32), with ``with_virial`` also their per-function virials
    (``DerivativeBlocks.virial``, for stress).  ``progress(done_images)`` is called after each chunk.
    """
    with_virial = with_virial and with_derivs
    if tuple(st.elements) != tuple(sf.elements):
        raise ValueError(f"structures number species by {st.elements}, the fingerprint set by {sf.elements}")
    sub_idx, sub_len = sf.block_tables()
    g4_list, g4_nlist = sf.g4_pair_tables()
    na = len(st.species)
    G = np.zeros((na, sf.n_max))
    W = np.zeros((na if with_virial else 0, sf.n_max, 6))
    cen_l, par_l, kind_l, len_l, val_l = [], [], [], [], []
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
            dvals = np.empty(dptr[-1], dtype)  # the kernel rounds as it stores: no float64 chunk, no copy
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
            val_l.append(dvals)
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
        _concat_freeing(val_l, dtype),
        image_ptr,
        W if with_virial else None,
    )
    return G, blocks


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
