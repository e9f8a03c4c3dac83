"""Prototype: the force kernel on a "lane-blocked" derivative layout, against the stored one.

    python benchmarks/lane_blocked_kernel.py [--data ../shared/data/o_pt111_emt_3000.traj] [--preset auto|default]

Today's layout stores each derivative pair's three rows of L values contiguously, and the
kernel's first pass reduces three dot products per pair horizontally (across SIMD lanes);
with ~12 pairs per centre that, and each pair's loop set-up, is most of its ~22 ns of fixed
cost per pair (``benchmarks/force_kernel.py``).  Here the pairs of 8 centres of one element
(from a batch of images) go side by side, one centre per SIMD lane: block (group, kind,
slot) holds [xyz][l][8 lanes], the slot-th pair of that kind of each of the 8 centres (zeros
where a centre has fewer).  Both passes are then vertical: 8 pairs per vector operation, no
horizontal sums, one loop set-up per 8 pairs, and the per-centre gather of g and scatter of v
become one per 8 centres.  The layout is built here from the stored one (out of place, so
this script needs both in memory); nothing in hpcpot uses it yet.  Both kernels run on the
same problem; their forces, residual sums and v are compared, then timed (medians of 7, as
ns per stored pair) with the derivatives in cache (the first 20 images, repeatedly) and
streamed (all images).

Measured (round 17, 2.1 GHz Xeon, reference set, auto set, float32; output in
``benchmarks/lane-blocked-output.txt``): the two agree to ~1e-7; in cache the lane-blocked
kernel takes 0.81-0.88 of the stored layout's time (36.7-40.0 against 43.5-46.6 ns per
pair, batches of 4-8 images; one image per batch pads 65% and is 1.65x slower), streamed
the same (62-64 ns per pair either way, both prefetching the next batch).  So the
horizontal sums are not what a streamed evaluation waits for, and the layout was not
adopted.  Written as numba loops, LLVM either vectorised the loop over l with gathers or
kept the eight sums scalar (3x slower than the stored layout); the two LLVM-vector
helpers below are what it took.
"""

from __future__ import annotations

import hpcpot._process  # noqa: F401  (before numpy: one BLAS thread, heap thresholds: as a training)

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from hpcpot.potential.intrinsics import prefetch
from hpcpot.potential.predict import _force_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from force_kernel import _median, kernel_problem  # noqa: E402  (the same problem and timing as that benchmark)

ROOT = Path(__file__).resolve().parents[1]
W = 8  # lanes: centres side by side (8 float32 = one 256-bit vector)


def build_blocked(b, species, sub_len, atom_ptr, images_per_batch: int):
    """The lane-blocked layout of DerivativeBlocks ``b`` (see the module doc)."""
    ne = sub_len.shape[0]
    n_img = len(b.image_ptr) - 1
    batch_ptr = list(range(0, n_img, images_per_batch)) + [n_img]
    groups = []  # (batch, element, centres[W])
    blocks = []  # (group, kind, pair indices[W] or -1)
    centre_of = b.centre
    for bi in range(len(batch_ptr) - 1):
        j0, j1 = batch_ptr[bi], batch_ptr[bi + 1]
        p0, p1 = b.image_ptr[j0], b.image_ptr[j1]
        a0, a1 = atom_ptr[j0], atom_ptr[j1]
        pairs_of = {a: [] for a in range(a0, a1)}
        for p in range(p0, p1):
            pairs_of[int(centre_of[p])].append(p)
        for c in range(ne):
            cen = [a for a in range(a0, a1) if species[a] == c]
            cen.sort(key=lambda a: -len(pairs_of[a]))
            for g0 in range(0, len(cen), W):
                lanes = cen[g0 : g0 + W]
                gid = len(groups)
                groups.append((bi, c, lanes + [lanes[0]] * (W - len(lanes)), len(lanes)))
                for k in range(ne):
                    per = [[p for p in pairs_of[a] if b.kind[p] == k] for a in lanes]
                    for s in range(max((len(x) for x in per), default=0)):
                        blocks.append((gid, k, [x[s] if s < len(x) else -1 for x in per] + [-1] * (W - len(lanes))))
    # arrays
    n_blk = len(blocks)
    g_cen = np.array([g[2] for g in groups], np.int64)
    g_el = np.array([g[1] for g in groups], np.int64)
    g_batch = np.array([g[0] for g in groups], np.int64)
    blk_group = np.array([x[0] for x in blocks], np.int64)
    blk_kind = np.array([x[1] for x in blocks], np.int64)
    blk_ptr = np.zeros(n_blk + 1, np.int64)
    blk_partner = np.empty((n_blk, W), np.int64)
    for t, (gid, k, ps) in enumerate(blocks):
        L = sub_len[g_el[gid], k]
        blk_ptr[t + 1] = blk_ptr[t] + 3 * L * W
        for q, p in enumerate(ps):
            blk_partner[t, q] = b.partner[p] if p >= 0 else g_cen[gid, q]  # empty lane: zeros, "partner" = centre
    vals = np.zeros(blk_ptr[-1], b.values.dtype)
    for t, (gid, k, ps) in enumerate(blocks):
        L = int(sub_len[g_el[gid], k])
        blk = vals[blk_ptr[t] : blk_ptr[t + 1]].reshape(3, L, W)
        for q, p in enumerate(ps):
            if p >= 0:
                blk[:, :, q] = b.values[b.ptr[p] : b.ptr[p] + 3 * L].reshape(3, L)
    # each group's blocks are contiguous and kind-ordered: group -> first block
    grp_blk = np.searchsorted(blk_group, np.arange(len(groups) + 1)).astype(np.int64)
    bat_grp = np.searchsorted(g_batch, np.arange(len(batch_ptr))).astype(np.int64)
    return (np.array(batch_ptr, np.int64), bat_grp, g_cen, g_el, grp_blk, blk_kind, blk_ptr, blk_partner, vals)


# Both helpers emit <8 x float> LLVM vector code directly: written as numba loops, LLVM
# either vectorised the loop over l with gathers or kept the eight sums scalar.
def _vec8(context, builder, ary_type, ary, index):
    """Pointer to the <8 x float> at element ``index`` of a numba array value."""
    a = context.make_array(ary_type)(context, builder, ary)
    vec = ir.VectorType(context.get_value_type(ary_type.dtype), W)
    return builder.bitcast(builder.gep(a.data, [index]), vec.as_pointer()), vec


@intrinsic
def _dot_lanes(typingctx, values, b, L, Gs, out):
    """out[:8] = sum_l values[b + 8l : b + 8l + 8] * Gs[8l : 8l + 8] (eight vertical sums)."""

    def codegen(context, builder, sig, args):
        vals, b_, L_, gs, out_ = args
        i64 = ir.IntType(64)
        _, vec = _vec8(context, builder, sig.args[0], vals, b_)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vec, None))
        with cgutils.for_range(builder, L_) as loop:
            off = builder.mul(loop.index, i64(W))
            pv, _ = _vec8(context, builder, sig.args[0], vals, builder.add(b_, off))
            pg, _ = _vec8(context, builder, sig.args[3], gs, off)
            x = builder.fmul(builder.load(pv, align=4), builder.load(pg, align=4), flags=("fast",))
            builder.store(builder.fadd(builder.load(acc), x, flags=("fast",)), acc)
        po, _ = _vec8(context, builder, sig.args[4], out_, i64(0))
        builder.store(builder.load(acc), po, align=4)
        return context.get_dummy_value()

    return types.void(values, b, L, Gs, out), codegen


@intrinsic
def _update_lanes(typingctx, values, b, L, R, VV):
    """VV[8l : 8l + 8] += sum_x values[b + 8(xL + l) : ... + 8] * R[x, :8] for l < L."""

    def codegen(context, builder, sig, args):
        vals, b_, L_, R_, vv = args
        i64 = ir.IntType(64)
        r = []
        for x in range(3):
            pr, _ = _vec8(context, builder, sig.args[3], R_, i64(x * W))
            r.append(builder.load(pr, align=4))
        lw = builder.mul(L_, i64(W))
        with cgutils.for_range(builder, L_) as loop:
            off = builder.mul(loop.index, i64(W))
            base = builder.add(b_, off)
            pd, _ = _vec8(context, builder, sig.args[4], vv, off)
            acc = builder.load(pd, align=4)
            for x in range(3):
                pv, _ = _vec8(context, builder, sig.args[0], vals, base)
                acc = builder.fadd(acc, builder.fmul(builder.load(pv, align=4), r[x], flags=("fast",)), flags=("fast",))
                base = builder.add(base, lw)
            builder.store(acc, pd, align=4)
        return context.get_dummy_value()

    return types.void(values, b, L, R, VV), codegen


@njit(cache=False, fastmath=True)
def lane_kernel(batch_ptr, bat_grp, g_cen, g_el, grp_blk, blk_kind, blk_ptr, blk_partner, values,
                image_ptr_unused, atom_ptr, row, sub_idx, sub_len, g, F_ref, wF, Fhat, v, sq, maxabs):  # fmt: skip
    nmax = g.shape[1]
    Gs = np.empty(nmax * W, g.dtype)
    VV = np.empty(nmax * W, g.dtype)
    ax = np.empty(W, g.dtype)
    ay = np.empty(W, g.dtype)
    az = np.empty(W, g.dtype)
    SX = np.empty((3, W), g.dtype)
    R = np.empty((3, W), g.dtype)
    for bi in range(batch_ptr.shape[0] - 1):
        j0 = batch_ptr[bi]
        j1 = batch_ptr[bi + 1]
        a0 = atom_ptr[j0]
        a1 = atom_ptr[j1]
        for m in range(a0, a1):
            Fhat[m, 0] = 0.0
            Fhat[m, 1] = 0.0
            Fhat[m, 2] = 0.0
        for gr in range(bat_grp[bi], bat_grp[bi + 1]):
            c = g_el[gr]
            SX[:, :] = 0.0
            t = grp_blk[gr]
            te = grp_blk[gr + 1]
            while t < te:
                k = blk_kind[t]
                L = sub_len[c, k]
                for l in range(L):
                    f = sub_idx[c, k, l]
                    for q in range(W):
                        Gs[l * W + q] = g[row[g_cen[gr, q]], f]
                while t < te and blk_kind[t] == k:
                    _dot_lanes(values, blk_ptr[t], L, Gs, ax)
                    _dot_lanes(values, blk_ptr[t] + L * W, L, Gs, ay)
                    _dot_lanes(values, blk_ptr[t] + 2 * L * W, L, Gs, az)
                    for q in range(W):
                        m = blk_partner[t, q]
                        Fhat[m, 0] -= ax[q]
                        Fhat[m, 1] -= ay[q]
                        Fhat[m, 2] -= az[q]
                        SX[0, q] += ax[q]
                        SX[1, q] += ay[q]
                        SX[2, q] += az[q]
                    t += 1
            # empty lanes repeat lane 0's centre with zero sums: adding them is harmless
            for q in range(W):
                i = g_cen[gr, q]
                Fhat[i, 0] += SX[0, q]
                Fhat[i, 1] += SX[1, q]
                Fhat[i, 2] += SX[2, q]
        for j in range(j0, j1):
            s = 0.0
            mx = 0.0
            for m in range(atom_ptr[j], atom_ptr[j + 1]):
                for x in range(3):
                    d = Fhat[m, x] - F_ref[m, x]
                    s += d * d
                    mx = max(mx, abs(d))
                    Fhat[m, x] = d * wF[j]
            sq[j] = s
            maxabs[j] = mx
        for m in range(a0, a1):
            v[row[m], :] = 0.0
        # as the stored-layout kernel: pass 2 prefetches the next batch's derivatives
        g0, g1 = bat_grp[bi], bat_grp[bi + 1]
        ahead = 0
        if bi + 2 < batch_ptr.shape[0]:
            ahead = blk_ptr[grp_blk[g1]] - blk_ptr[grp_blk[g0]]
        for gr in range(bat_grp[bi], bat_grp[bi + 1]):
            c = g_el[gr]
            t = grp_blk[gr]
            te = grp_blk[gr + 1]
            while t < te:
                k = blk_kind[t]
                L = sub_len[c, k]
                VV[: L * W] = 0.0
                while t < te and blk_kind[t] == k:
                    for q in range(W):
                        m = blk_partner[t, q]
                        i = g_cen[gr, q]
                        R[0, q] = Fhat[m, 0] - Fhat[i, 0]
                        R[1, q] = Fhat[m, 1] - Fhat[i, 1]
                        R[2, q] = Fhat[m, 2] - Fhat[i, 2]
                    if ahead > 0:
                        for u in range(0, 3 * L * W, 16):
                            prefetch(values, blk_ptr[t] + ahead + u)
                    _update_lanes(values, blk_ptr[t], L, R, VV)
                    t += 1
                n_real = W
                for l in range(L):
                    f = sub_idx[c, k, l]
                    for q in range(n_real):
                        v[row[g_cen[gr, q]], f] += VV[l * W + q]
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "o_pt111_emt_3000.traj"))
    ap.add_argument("--preset", default="auto", choices=("auto", "default"))
    ap.add_argument("--images-per-batch", type=int, default=4)
    args = ap.parse_args()
    pr, _ = kernel_problem(args.data, args.preset)
    b = pr.blocks
    t0 = time.perf_counter()
    lb = build_blocked(b, pr.species, pr.sub_len, pr.atom_ptr, args.images_per_batch)
    n_pairs = len(b.centre)
    print(f"{args.data}: {pr.n_images} images, {n_pairs} pairs, {b.values.nbytes / 2**20:.1f} MiB stored; "
          f"lane-blocked ({args.images_per_batch} images per batch): {lb[-1].nbytes / 2**20:.1f} MiB "
          f"({lb[-1].nbytes / b.values.nbytes - 1:+.1%} padding), built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    n = pr.n_images
    sq, mx = np.empty(n), np.empty(n)
    sq2, mx2 = np.empty(n), np.empty(n)
    v, v2 = np.empty_like(pr.g), np.empty_like(pr.g)
    F1, F2 = pr.Fhat.copy(), pr.Fhat.copy()

    def ref(k):
        _force_kernel(b.image_ptr[: k + 1], pr.atom_ptr, b.centre, b.partner, b.kind, b.ptr, b.values, pr.species,
                      pr.row, pr.sub_idx, pr.sub_len, pr.g, pr.forces, pr.wF, F1, v, sq, mx)  # fmt: skip

    def lanes(nb):
        lane_kernel(lb[0][: nb + 1], *lb[1:], None, pr.atom_ptr, pr.row, pr.sub_idx, pr.sub_len, pr.g, pr.forces, pr.wF,
                    F2, v2, sq2, mx2)  # fmt: skip

    nb_all = len(lb[0]) - 1
    ref(n)
    lanes(nb_all)
    dF = np.abs(F1 - F2).max() / np.abs(F1).max()
    dv = np.abs(v - v2).max() / np.abs(v).max()
    print(f"  agreement: weighted residuals {dF:.1e}, v {dv:.1e}, sum of squares {np.abs(sq - sq2).max() / sq.max():.1e} (relative to the largest)")
    k_img = 20
    nb_k = k_img // args.images_per_batch
    pairs_k = int(b.image_ptr[nb_k * args.images_per_batch])
    for label, fr, fl, pairs in (("first 20 images, in cache", lambda: ref(nb_k * args.images_per_batch), lambda: lanes(nb_k), pairs_k),
                                 ("all images, streamed", lambda: ref(n), lambda: lanes(nb_all), n_pairs)):  # fmt: skip
        reps = max(1, n_pairs // pairs)
        tr, tl = [], []
        for _ in range(3):  # alternating
            tr.append(_median(lambda fr=fr, reps=reps: [fr() for _ in range(reps)]) / reps)
            tl.append(_median(lambda fl=fl, reps=reps: [fl() for _ in range(reps)]) / reps)
        tr_, tl_ = statistics.median(tr), statistics.median(tl)
        print(f"  {label}: stored layout {1e9 * tr_ / pairs:5.1f} ns per pair ({1e3 * tr_:6.2f} ms per call), "
              f"lane-blocked {1e9 * tl_ / pairs:5.1f} ns per pair ({1e3 * tl_:6.2f} ms), ratio {tl_ / tr_:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
