"""How much of a small shard's fixed cost per evaluation a fused numba kernel would remove:
the parameter gradient of one block (tangent and reverse passes through a network with two
hidden layers, forces on) as one numba call over the rows, against
:func:`hpcpot.potential.network.parameter_gradient` (numpy and BLAS per layer).

    python benchmarks/fused_backward.py [--repeats 7]

The kernel is a prototype for this measurement, not used by training: row by row it runs the
tangent pass and the reverse pass of one row and accumulates the weight gradients, with the
row's temporaries in registers and L1 and no matrix product handed to BLAS. It checks that
both give the same gradient (float32 arithmetic, ~1e-6 relative), then times both on blocks
of the reference set's sizes: a 2-image shard's rows per element (24 Pt, 4 O), a 64-rank
shard's (552, 92) and a full block (2048), medians of interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit

from hpcpot.potential.network import D2_COEFFICIENTS, Layout, forward, initial_parameters, parameter_gradient


@njit(cache=True, fastmath=True)
def fused_gradient(x, v, W1, W2, W3, a1, a2, d1, d2, obar, tbar, c0, c1, dW1, db1, dW2, db2, dW3, db3):
    """Accumulate the gradient of S = Σ obar·out + tbar Σ (∇out · v) into dW*, db* (zeroed by
    the caller) row by row; returns Σ_r ∇out_r · v_r."""
    n, nin = x.shape
    h1 = W1.shape[0]
    h2 = W2.shape[0]
    t1 = np.empty(h1, np.float32)
    zd1 = np.empty(h1, np.float32)
    t2 = np.empty(h2, np.float32)
    zd2 = np.empty(h2, np.float32)
    zb2 = np.empty(h2, np.float32)
    zdb2 = np.empty(h2, np.float32)
    ab1 = np.empty(h1, np.float32)
    tdb1 = np.empty(h1, np.float32)
    zb1 = np.empty(h1, np.float32)
    zdb1 = np.empty(h1, np.float32)
    outdot = 0.0
    for r in range(n):
        # tangent pass along v_r
        for j in range(h1):
            s = np.float32(0.0)
            for i in range(nin):
                s += v[r, i] * W1[j, i]
            zd1[j] = s
            t1[j] = d1[r, j] * s
        od = np.float32(0.0)
        for j in range(h2):
            s = np.float32(0.0)
            for i in range(h1):
                s += t1[i] * W2[j, i]
            zd2[j] = s
            t2[j] = d2[r, j] * s
            od += t2[j] * W3[0, j]
        outdot += od
        # output layer
        o = obar[r]
        for j in range(h2):
            dW3[0, j] += o * a2[r, j] + tbar * t2[j]
        db3[0] += o
        # second hidden layer
        for j in range(h2):
            tdb = tbar * W3[0, j]
            zb2[j] = d2[r, j] * (W3[0, j] * o + (c0 + c1 * a2[r, j]) * zd2[j] * tdb)
            zdb2[j] = d2[r, j] * tdb
            db2[j] += zb2[j]
        for j in range(h2):
            for i in range(h1):
                dW2[j, i] += zb2[j] * a1[r, i] + zdb2[j] * t1[i]
        for i in range(h1):
            ab1[i] = 0.0
            tdb1[i] = 0.0
        for j in range(h2):
            for i in range(h1):
                ab1[i] += zb2[j] * W2[j, i]
                tdb1[i] += zdb2[j] * W2[j, i]
        # first hidden layer
        for j in range(h1):
            zb1[j] = d1[r, j] * (ab1[j] + (c0 + c1 * a1[r, j]) * zd1[j] * tdb1[j])
            zdb1[j] = d1[r, j] * tdb1[j]
            db1[j] += zb1[j]
        for j in range(h1):
            for i in range(nin):
                dW1[j, i] += zb1[j] * x[r, i] + zdb1[j] * v[r, i]
    return outdot


def compare(n: int, layers, rng, repeats: int) -> str:
    """One block of ``n`` rows: both paths checked against each other, then timed."""
    c0, c1 = D2_COEFFICIENTS["tanh"]
    x = rng.uniform(-1, 1, (n, 52)).astype(np.float32)
    v = rng.normal(0, 0.1, (n, 52)).astype(np.float32)
    obar = rng.normal(0, 1e-3, n).astype(np.float32)
    ps = forward(layers, x, "tanh")
    (W1, _), (W2, _), (W3, _) = layers
    out = [np.zeros_like(W1), np.zeros(20, np.float32), np.zeros_like(W2), np.zeros(20, np.float32),
           np.zeros_like(W3), np.zeros(1, np.float32)]  # fmt: skip

    def fused():
        for o in out:
            o[...] = 0.0
        return fused_gradient(x, v, W1, W2, W3, ps.acts[1], ps.acts[2], ps.d1[0], ps.d1[1], obar,
                              np.float32(-0.7), np.float32(c0), np.float32(c1), *out)  # fmt: skip

    def numpy_path():
        return parameter_gradient(layers, ps, obar, v, -0.7)

    od = fused()
    grads, od_ref = numpy_path()
    ref = np.concatenate([np.concatenate([dW.ravel(), db.ravel()]) for dW, db in grads])
    got = np.concatenate([out[0].ravel(), out[1], out[2].ravel(), out[3], out[4].ravel(), out[5]])
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    err_od = abs(od - float(od_ref.sum())) / max(1e-30, abs(float(od_ref.sum())))
    t = {"numpy": [], "fused": []}
    for _ in range(repeats):
        for name, fn in (("numpy", numpy_path), ("fused", fused)):
            ts = []
            for _ in range(max(5, 20000 // n)):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            t[name].append(statistics.median(ts))
    tn, tf = statistics.median(t["numpy"]), statistics.median(t["fused"])
    return (f"  {n:5d} rows: numpy/BLAS {1e6 * tn:8.1f} µs, fused kernel {1e6 * tf:8.1f} µs (x{tn / tf:.2f}); "
            f"max rel. difference {err:.1e} (gradient), {err_od:.1e} (Σ∇out·v)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    lay = Layout(("O",), (52,), (20, 20), "tanh")
    p = initial_parameters(lay, np.ones(1), np.zeros(1), 1)
    layers = [(W.astype(np.float32), b.astype(np.float32)) for W, b in lay.unpack(p, 0)]
    rng = np.random.default_rng(0)
    print("parameter gradient of one block (52 inputs, 2 x 20 tanh, forces), float32; medians of interleaved rounds")
    for n in (4, 24, 92, 552, 2048):
        print(compare(n, layers, rng, a.repeats), flush=True)


if __name__ == "__main__":
    main()
