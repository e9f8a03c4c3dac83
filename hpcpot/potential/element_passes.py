"""All network passes of one element in one numba call (tanh networks, float32 or float64).

The same arithmetic as :func:`hpcpot.potential.network.forward`, :func:`input_gradient` and
:func:`parameter_gradient`, block by block over the element's rows, without returning to
Python between layers.  Those functions make ~70 numpy calls per element and block; with
the few hundred rows of a small shard (a 64-rank shard of the reference set: 552 and 92
rows) their call overhead, and the interpreter's code falling out of the caches between
them, cost more than the products: a 46-image shard's loss+gradient took ~10-20% longer
than 1/64 of the whole set's, and takes about 1/64 of it here; the whole set takes 0.95 of
the numpy passes' time, with 512-row blocks (`python benchmarks/element_passes.py`, one
process, interleaved; `python -m hpcpot.bench` prints the scaling figures).

The matrix products are ``np.dot`` inside numba, which calls BLAS through SciPy's
``cython_blas`` (loaded below: numba looks the functions up there).

Workspace (kept by the caller between the forward and the gradient call, one pair per
element, in the passes' dtype): ``acts`` and ``d1s``, flat, hold for each hidden layer l
(width h_l) the activations and f'(z) of all n rows as an (n, h_l) row-major block, the
layers one after another: layer l starts at n * (h_1 + ... + h_{l-1}).

``w`` is the element's network in the flat layout of :class:`hpcpot.potential.network.Layout`
(per layer W (n_out, n_in) row-major, then b), in the passes' dtype; ``sizes`` is
(n_in, h_1, ..., h_L, 1) int64.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import numpy as np
from numba import njit, types
from numba.extending import overload

from .network import _backprop, _backprop_tangent, _tanh_and_derivative, _tanh_and_derivative32

BLAS_MODULE = "scipy.linalg.cython_blas"


def load_blas_for_numba() -> None:
    """Make ``scipy.linalg.cython_blas`` importable for numba's ``np.dot``, which imports it
    by name and calls BLAS through its function table.  Imported the usual way it first
    runs ``scipy.linalg``'s package ``__init__`` (85 modules: 0.1 s and 13.5 MiB per
    process, on every rank); the extension module needs none of that, so it is loaded alone
    (2 ms, 1.7 MiB, measured) and registered under its name.  A later ``import
    scipy.linalg`` is unaffected (its ``__init__`` does not import cython_blas).  Anything
    unexpected (another SciPy layout): the usual import."""
    if BLAS_MODULE in sys.modules:
        return
    if "scipy.linalg" in sys.modules:  # the package is loaded anyway: the usual import costs nothing
        importlib.import_module(BLAS_MODULE)
        return
    try:
        spec = importlib.util.find_spec("scipy")
        folder = Path(spec.origin).parent / "linalg"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = folder / f"cython_blas{suffix}"
            if path.exists():
                loader = importlib.machinery.ExtensionFileLoader(BLAS_MODULE, str(path))
                module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(BLAS_MODULE, path, loader=loader))
                loader.exec_module(module)
                sys.modules[BLAS_MODULE] = module
                return
    except (ImportError, OSError, AttributeError, TypeError):
        pass
    importlib.import_module(BLAS_MODULE)


load_blas_for_numba()


def _tanh_rows(z, bias, d1, tv, pv):
    """z <- tanh(z + bias), d1 <- tanh' in z's precision (numba only; see the overload)."""
    raise NotImplementedError


@overload(_tanh_rows)
def _tanh_rows_typed(z, bias, d1, tv, pv):
    if z.dtype == types.float32:
        return lambda z, bias, d1, tv, pv: _tanh_and_derivative32(z, bias, d1, tv, pv)
    return lambda z, bias, d1, tv, pv: _tanh_and_derivative(z, bias, d1, tv, pv)


@njit(cache=True)
def _offsets(sizes):
    """(offset of each layer's W in w, offset of each hidden layer's block per row in acts)."""
    nl = sizes.shape[0] - 1
    offs = np.empty(nl, np.int64)
    bases = np.zeros(nl, np.int64)
    q = 0
    for l in range(nl):
        offs[l] = q
        q += sizes[l + 1] * sizes[l] + sizes[l + 1]
        if l > 0:
            bases[l] = bases[l - 1] + sizes[l]
    return offs, bases


@njit(cache=True)
def element_forward(w, sizes, X, slope, block, out, acts, d1s, g, g_row0, want_g):
    """Network outputs ``out`` (n,) float64 of rows X (n, n_in), activations and f' into the
    workspace, and with ``want_g`` g[g_row0 + r, :n_in] = slope * dN/dx of row r (g: any
    (rows, >= n_in) array of X's dtype; slope in X's dtype)."""
    n = X.shape[0]
    nl = sizes.shape[0] - 1
    n_in = sizes[0]
    offs, bases = _offsets(sizes)
    tv = np.empty(min(n, block) * sizes[1:nl].max(), X.dtype)
    pv = np.empty_like(tv)
    h = sizes[nl - 1]
    Wo = w[offs[nl - 1] : offs[nl - 1] + h]
    bo = w[offs[nl - 1] + h]
    W0 = w[0 : sizes[1] * n_in].reshape(sizes[1], n_in)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        m = b1 - b0
        a = X[b0:b1]
        for l in range(nl - 1):
            i = sizes[l]
            o = sizes[l + 1]
            W = w[offs[l] : offs[l] + o * i].reshape(o, i)
            s = bases[l] * n
            z = acts[s + b0 * o : s + b1 * o].reshape(m, o)
            np.dot(a, W.T, z)
            _tanh_rows(z, w[offs[l] + o * i : offs[l] + o * i + o], d1s[s + b0 * o : s + b1 * o].reshape(m, o),
                       tv[: m * o], pv[: m * o])  # fmt: skip
            a = z
        for r in range(m):
            t = bo
            for c in range(h):
                t += a[r, c] * Wo[c]
            out[b0 + r] = t
        if not want_g:
            continue
        # dN/da of the top hidden layer, times f', then back through the hidden layers
        s = bases[nl - 2] * n
        d1 = d1s[s + b0 * h : s + b1 * h].reshape(m, h)
        abar = np.empty((m, h), X.dtype)
        for r in range(m):
            for c in range(h):
                abar[r, c] = d1[r, c] * Wo[c] * slope
        for k in range(nl - 2, 0, -1):
            i = sizes[k]
            o = sizes[k + 1]
            nxt = np.dot(abar, w[offs[k] : offs[k] + o * i].reshape(o, i))
            s = bases[k - 1] * n
            d1 = d1s[s + b0 * i : s + b1 * i].reshape(m, i)
            for r in range(m):
                for c in range(i):
                    nxt[r, c] *= d1[r, c]
            abar = nxt
        if g.shape[1] == n_in:
            np.dot(abar, W0, g[g_row0 + b0 : g_row0 + b1])
        else:
            t2 = np.dot(abar, W0)
            for r in range(m):
                for c in range(n_in):
                    g[g_row0 + b0 + r, c] = t2[r, c]


@njit(cache=True)
def element_gradient(w, sizes, X, block, acts, d1s, obar, v, v_row0, tbar, c0, c1, grad, goff):
    """grad[goff + k] += ∂S/∂w_k for S = Σ_r obar_r N_r + tbar Σ_r ∇_x N_r · v_r (the second
    term when v has rows: v[v_row0 + r, :n_in] is row r's tangent), after
    :func:`element_forward` filled the workspace at the same w.  Returns Σ_r ∇_x N_r · v_r
    (float64).  obar (n,) and tbar in X's dtype; c0, c1: the activation's
    D2_COEFFICIENTS; grad float64.  The tangent and reverse passes of
    :func:`hpcpot.potential.network.parameter_gradient`, per block."""
    n = X.shape[0]
    nl = sizes.shape[0] - 1
    n_in = sizes[0]
    offs, bases = _offsets(sizes)
    forces = v.shape[0] > 0
    h = sizes[nl - 1]
    Wo = w[offs[nl - 1] : offs[nl - 1] + h]
    one = np.ones(min(n, block), X.dtype)
    outdot_sum = 0.0
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        m = b1 - b0
        ob = obar[b0:b1]
        # tangent pass along v: ż_k = W_k ȧ_k, ȧ_{k+1} = f'(z_k) ż_k
        tang = []
        zdots = []
        if forces:
            if v.shape[1] == n_in:
                t = v[v_row0 + b0 : v_row0 + b1]
            else:
                t = np.empty((m, n_in), X.dtype)
                for r in range(m):
                    for c in range(n_in):
                        t[r, c] = v[v_row0 + b0 + r, c]
            tang.append(t)
            for k in range(nl - 1):
                i = sizes[k]
                o = sizes[k + 1]
                zd = np.dot(t, w[offs[k] : offs[k] + o * i].reshape(o, i).T)
                s = bases[k] * n
                d1 = d1s[s + b0 * o : s + b1 * o].reshape(m, o)
                t = np.empty_like(zd)
                for r in range(m):
                    for c in range(o):
                        t[r, c] = d1[r, c] * zd[r, c]
                zdots.append(zd)
                tang.append(t)
        s = bases[nl - 2] * n
        dWo = np.dot(ob, acts[s + b0 * h : s + b1 * h].reshape(m, h))
        if forces:
            cs = np.dot(one[:m], tang[nl - 1])
            for c in range(h):
                dWo[c] += tbar * cs[c]
            for r in range(m):
                t_r = 0.0
                for c in range(h):
                    t_r += tang[nl - 1][r, c] * Wo[c]
                outdot_sum += t_r
        go = goff + offs[nl - 1]
        sob = 0.0
        for r in range(m):
            sob += ob[r]
        for c in range(h):
            grad[go + c] += dWo[c]
        grad[go + h] += sob
        # reverse pass: dS/da of the top hidden layer is arow[:, None] * abar
        abar = Wo.reshape(1, h)
        arow = ob
        tdbar = (tbar * Wo).reshape(1, h)
        for k in range(nl - 2, -1, -1):
            i = sizes[k]
            o = sizes[k + 1]
            W = w[offs[k] : offs[k] + o * i].reshape(o, i)
            s = bases[k] * n
            d1 = d1s[s + b0 * o : s + b1 * o].reshape(m, o)
            if k == 0:
                a_in = X[b0:b1]
            else:
                si = bases[k - 1] * n
                a_in = acts[si + b0 * i : si + b1 * i].reshape(m, i)
            zbar = np.empty((m, o), X.dtype)
            if forces:
                zdbar = np.empty((m, o), X.dtype)
                _backprop_tangent(d1, acts[s + b0 * o : s + b1 * o].reshape(m, o), c0, c1, abar, arow, zdots[k], tdbar,
                                  zbar, zdbar)  # fmt: skip
                dW = np.dot(zbar.T, a_in)
                dW += np.dot(zdbar.T, tang[k])
            else:
                zdbar = zbar
                _backprop(d1, abar, arow, zbar)
                dW = np.dot(zbar.T, a_in)
            db = np.dot(one[:m], zbar)
            go = goff + offs[k]
            dWf = dW.ravel()
            for p in range(o * i):
                grad[go + p] += dWf[p]
            for c in range(o):
                grad[go + o * i + c] += db[c]
            if k > 0:
                abar = np.dot(zbar, W)
                arow = one[:m]
                if forces:
                    tdbar = np.dot(zdbar, W)
    return outdot_sum
