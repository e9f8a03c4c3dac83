"""Per-element feed-forward networks and their flat parameter vector.

Atomic energy of an atom of element e with scaled fingerprint x (shape (n_in,)):

    E_atom = slope_e * N_e(x) + intercept_e      (eV)

with N_e a feed-forward network: hidden layers ``z = W a + b, a = act(z)`` and a linear
output layer.  The energy of an image is the sum of its atomic energies.

Flat parameter layout (float64), elements in sorted order:

    for e in elements:                       # network of element e
        for each layer l (hidden..., output):
            W_l  (n_out, n_in), row-major
            b_l  (n_out,)
    for e in elements:
        slope_e, intercept_e                 # eV

Scaled fingerprints: ``x = 2 (G − Gmin) / (Gmax − Gmin) − 1`` per element and function
(0 where the training range is zero), from the training set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numba import njit

ACTIVATIONS = ("tanh", "sigmoid", "linear")


@dataclass(frozen=True)
class Layout:
    """Shapes and offsets of the flat parameter vector."""

    elements: tuple[str, ...]
    n_inputs: tuple[int, ...]  # fingerprint length per element
    hidden: tuple[int, ...]
    activation: str

    def layer_shapes(self, e: int) -> list[tuple[int, int]]:
        sizes = [self.n_inputs[e], *self.hidden, 1]
        return [(sizes[k + 1], sizes[k]) for k in range(len(sizes) - 1)]

    # Offsets computed once per Layout: every evaluation unpacks each element's layers
    # (weights, float32 copies, gradient views) and reads the slopes, and recomputing the
    # offsets from the shapes each time cost ~45 µs per evaluation of a small shard.
    @cached_property
    def _plan(self) -> tuple[tuple[tuple[tuple[int, int, int], ...], ...], tuple[int, ...]]:
        """(per element, per layer: (offset of W, n_out, n_in), b following W; the offset of
        each element's network and, last, of the slopes)."""
        plan, starts, off = [], [], 0
        for e in range(len(self.elements)):
            starts.append(off)
            layers = []
            for o, i in self.layer_shapes(e):
                layers.append((off, o, i))
                off += o * i + o
            plan.append(tuple(layers))
        return tuple(plan), (*starts, off)

    @cached_property
    def n_params(self) -> int:
        return self.scaling_offset + 2 * len(self.elements)

    def network_offset(self, e: int) -> int:
        return self._plan[1][e]

    def network_span(self, e: int) -> tuple[int, int]:
        """(first, end) of element e's network in the flat vector."""
        return self.network_offset(e), self.network_offset(e + 1)

    @cached_property
    def scaling_offset(self) -> int:
        return self.network_offset(len(self.elements))

    def unpack(self, params: np.ndarray, e: int, base: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views (W, b) of every layer of element e's network into ``params``, whose first
        entry is entry ``base`` of the flat vector (a slice of it: base = its start)."""
        out = []
        for off, o, i in self._plan[0][e]:
            w = off - base
            out.append((params[w : w + o * i].reshape(o, i), params[w + o * i : w + o * i + o]))
        return out

    def slope_intercept(self, params: np.ndarray, e: int) -> tuple[float, float]:
        k = self.scaling_offset + 2 * e
        return params[k], params[k + 1]


def initial_parameters(layout: Layout, slope: np.ndarray, intercept: np.ndarray, seed: int) -> np.ndarray:
    """Glorot-uniform weights, zero biases, energy slope/intercept per element (eV)."""
    rng = np.random.default_rng(seed)
    p = np.zeros(layout.n_params)
    for e in range(len(layout.elements)):
        for W, _b in layout.unpack(p, e):
            lim = np.sqrt(6.0 / (W.shape[0] + W.shape[1]))
            W[...] = rng.uniform(-lim, lim, W.shape)
    for e in range(len(layout.elements)):
        k = layout.scaling_offset + 2 * e
        p[k], p[k + 1] = slope[e], intercept[e]
    return p


def activation_d1(a: np.ndarray, kind: str) -> np.ndarray:
    """f'(z) expressed through the activation value a = f(z) (sigmoid and linear)."""
    if kind == "sigmoid":
        return a * (1.0 - a)
    return np.ones_like(a)


# f''(z) = f'(z) * (c0 + c1 * f(z)) for every activation offered: the backward pass of the
# force term needs f'' but never stores it.
D2_COEFFICIENTS = {"tanh": (0.0, -2.0), "sigmoid": (1.0, -2.0), "linear": (0.0, 0.0)}


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_ROUND = 6755399441055744.0  # 1.5 * 2**52: x + _ROUND - _ROUND rounds x to an integer
# fastmath without "reassoc": reassociation would fold (x + _ROUND) - _ROUND into x.
_FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}


@njit(cache=True, fastmath=_FASTMATH)
def _tanh_and_derivative(z, bias, d1, tv, pv):
    """z <- tanh(z + bias), d1 <- 1 - tanh(z + bias)^2 for z, d1 C-contiguous (n, h), bias (h,).

    Adding the bias here saves numpy's broadcast add, slow on rows of ~20 (40 µs per block).

    With q = exp(-2|z|) in (0, 1]: tanh z = sign(z) (1 - q)/(1 + q), 1 - tanh^2 = 4q/(1 + q)^2
    (both to a few ulp relative, also where they are tiny).  exp by range reduction and a
    degree-12 polynomial, 2^k from the bits of the rounded exponent, 1/(1 + q) by Newton from
    a linear guess: no libm call, no float->int conversion and no division, the three things
    that keep LLVM (no SVML here; it will not vectorise fdiv for this CPU) from vectorising
    the loops.  On a 2048 x 20 block: 134 µs against 218 µs for the previous version (exp
    polynomial plus a division) and ~730 µs for np.tanh plus derivative; max error 2.2e-16.
    tv, pv: float64 scratch arrays of z.size.
    """
    h = z.shape[1]
    for row in range(z.shape[0]):
        for c in range(h):
            z[row, c] += bias[c]
    zf = z.ravel()
    df = d1.ravel()
    n = zf.size
    for i in range(n):
        y = -2.0 * min(abs(zf[i]), 350.0)  # exp(-700) is still a normal float64
        t = y * _LOG2E + _ROUND
        k = t - _ROUND
        r = (y - k * _LN2_HI) - k * _LN2_LO
        # pv = exp(r) - 1, kept apart from the 1 so that 1 - q stays accurate for small |z|
        pv[i] = r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (1.0 / 720 + r * (
            1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800 + r * (
                1.0 / 39916800 + r * (1.0 / 479001600))))))))))))  # fmt: skip
        tv[i] = t
    ti = tv.view(np.int64)
    for i in range(n):
        ti[i] = (ti[i] + 1023) << 52  # low bits of t hold k: now the float64 2^k
    for i in range(n):
        s = tv[i]
        q = s + pv[i] * s
        omq = (1.0 - s) - pv[i] * s  # 1 - q; 1 - s is exact
        x = 1.0 + q
        r = 24.0 / 17.0 - (8.0 / 17.0) * x  # 1/x on [1, 2] to 1/17, then Newton:
        r = r + r * (1.0 - x * r)  # 3.5e-3
        r = r + r * (1.0 - x * r)  # 1.2e-5
        r = r + r * (1.0 - x * r)  # 1.5e-10
        r = r + r * (1.0 - x * r)  # < 1e-16
        zf[i] = math.copysign(omq * r, zf[i])
        df[i] = 4.0 * q * r * r


_LN2_HI32 = np.float32(0.693145751953125)  # ln 2 to 16 bits: k * _LN2_HI32 is exact
_LN2_LO32 = np.float32(1.4286068203094173e-06)
_ROUND32 = np.float32(12582912.0)  # 1.5 * 2**23
_LOG2E32 = np.float32(_LOG2E)


@njit(cache=True, fastmath=_FASTMATH)
def _tanh_and_derivative32(z, bias, d1, tv, pv):
    """_tanh_and_derivative in float32 (a training's [loss] precision = "float32"): the same
    method with float32 constants, a degree-7 polynomial (|r| <= ln2/2: 5e-9) and 2^k from
    int32 bits, 16 values per AVX-512 vector instead of 8.  Max error a few float32 ulp;
    tv, pv: float32 scratch arrays of z.size."""
    h = z.shape[1]
    for row in range(z.shape[0]):
        for c in range(h):
            z[row, c] += bias[c]
    zf = z.ravel()
    df = d1.ravel()
    n = zf.size
    one = np.float32(1.0)
    for i in range(n):
        y = np.float32(-2.0) * min(abs(zf[i]), np.float32(43.0))  # exp(-86) is still a normal float32
        t = y * _LOG2E32 + _ROUND32
        k = t - _ROUND32
        r = (y - k * _LN2_HI32) - k * _LN2_LO32
        pv[i] = r * (one + r * (np.float32(0.5) + r * (np.float32(1.0 / 6) + r * (np.float32(1.0 / 24) + r * (
            np.float32(1.0 / 120) + r * (np.float32(1.0 / 720) + r * np.float32(1.0 / 5040)))))))  # fmt: skip
        tv[i] = t
    ti = tv.view(np.int32)
    for i in range(n):
        ti[i] = (ti[i] + 127) << 23  # low bits of t hold k: now the float32 2^k
    for i in range(n):
        s = tv[i]
        q = s + pv[i] * s
        omq = (one - s) - pv[i] * s
        x = one + q
        r = np.float32(24.0 / 17.0) - np.float32(8.0 / 17.0) * x
        r = r + r * (one - x * r)  # 3.5e-3
        r = r + r * (one - x * r)  # 1.2e-5
        r = r + r * (one - x * r)  # float32 rounding
        zf[i] = math.copysign(omq * r, zf[i])
        df[i] = np.float32(4.0) * q * r * r


def activate(z: np.ndarray, kind: str) -> np.ndarray:
    """f(z), in place, for sigmoid and linear (tanh goes through _tanh_and_derivative)."""
    if kind == "sigmoid":
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        return np.reciprocal(z, out=z)
    return z


@dataclass
class Pass:
    """One forward pass: activations [x, a_1, ..., a_L] and f'(z_l) of the hidden layers."""

    out: np.ndarray  # (n,)
    acts: list[np.ndarray]
    d1: list[np.ndarray]
    kind: str


def forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, kind: str) -> Pass:
    """Network outputs (n,) for rows x (n, n_in), keeping what the backward passes need."""
    acts = [x]
    d1s = []
    a = x
    for W, b in layers[:-1]:
        z = a @ W.T
        if kind == "tanh":
            d1 = np.empty_like(z)
            if z.dtype == np.float32:
                _tanh_and_derivative32(z, b, d1, np.empty(z.size, np.float32), np.empty(z.size, np.float32))
            else:
                _tanh_and_derivative(z, b, d1, np.empty(z.size), np.empty(z.size))
            a = z
        else:
            z += b
            a = activate(z, kind)
            d1 = activation_d1(a, kind)
        acts.append(a)
        d1s.append(d1)
    W, b = layers[-1]
    return Pass((a @ W[0]) + b[0], acts, d1s, kind)


# The two kernels below index flat views with an offset chosen per row (the row's own, or 0
# when abar/tdbar is one row for every row): with 2-D indexing by r * stride LLVM did not
# vectorise them; flat, a 2048 x 20 float32 block takes 18 µs instead of 55.  They need
# C-contiguous d1, a, zdot, zbar, zdbar, abar and tdbar, which the passes always give.
@njit(cache=True, fastmath=True)
def _backprop(d1, abar, arow, zbar):
    """zbar = d1 * abar * arow[:, None]; abar is (n, h) or one row (1, h) for every row."""
    n, h = d1.shape
    D = d1.ravel()
    Z = zbar.ravel()
    AB = abar.ravel()
    full = abar.shape[0] > 1
    for r in range(n):
        s = arow[r]
        o = r * h
        oa = o if full else 0
        for c in range(h):
            Z[o + c] = D[o + c] * AB[oa + c] * s


@njit(cache=True, fastmath=True)
def _backprop_tangent(d1, a, c0, c1, abar, arow, zdot, tdbar, zbar, zdbar):
    """One hidden layer of the reverse pass through primal and tangent (see parameter_gradient):

        zbar  = f' * abar * arow[:, None] + f'' * zdot * tdbar,   f'' = f' * (c0 + c1 * a)
        zdbar = f' * tdbar

    abar and tdbar are (n, h) or one row (1, h) for every row."""
    n, h = d1.shape
    D = d1.ravel()
    A = a.ravel()
    Zd = zdot.ravel()
    Z = zbar.ravel()
    ZD = zdbar.ravel()
    AB = abar.ravel()
    TB = tdbar.ravel()
    full_a = abar.shape[0] > 1
    full_t = tdbar.shape[0] > 1
    for r in range(n):
        s = arow[r]
        o = r * h
        oa = o if full_a else 0
        ot = o if full_t else 0
        for c in range(h):
            i = o + c
            d = D[i]
            t = TB[ot + c]
            Z[i] = d * (AB[oa + c] * s + (c0 + c1 * A[i]) * Zd[i] * t)
            ZD[i] = d * t


def _column_sums(a: np.ndarray) -> np.ndarray:
    """a.sum(axis=0) as a BLAS matrix-vector product: 9 µs against 51 µs for a 2048 x 20 block."""
    return np.ones(a.shape[0], a.dtype) @ a


def input_gradient(layers, ps: Pass, scale: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """scale * d output / d x for every row, shape (n, n_in), written into ``out`` if given
    (an (n, n_in) array or view: the last product lands there without a temporary)."""
    n = len(ps.out)
    abar = np.empty_like(ps.d1[-1])
    _backprop(ps.d1[-1], layers[-1][0], np.full(n, scale, abar.dtype), abar)
    for k in range(len(layers) - 2, 0, -1):
        abar = abar @ layers[k][0]
        abar *= ps.d1[k - 1]
    return np.matmul(abar, layers[0][0], out=out)


def parameter_gradient(
    layers, ps: Pass, obar: np.ndarray, v: np.ndarray | None, tbar: float
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
    """Gradient of S = Σ_n obar_n out_n + tbar Σ_n (∇_x out_n · v_n) w.r.t. every (W, b).

    The second term (forces) is a forward-mode (tangent) pass along v followed by one
    reverse pass through both the primal and the tangent: no per-parameter Jacobian is ever
    formed.  Returns the per-layer (dW, db) and the tangent outputs ∇_x out_n · v_n (or None).
    """
    nl = len(layers)
    acts, d1s = ps.acts, ps.d1
    n = len(obar)
    tang = None
    zdots: list[np.ndarray] = []
    outdot = None
    if v is not None:
        tang = [v]
        t = v
        for k in range(nl - 1):
            zd = t @ layers[k][0].T
            zdots.append(zd)
            t = d1s[k] * zd
            tang.append(t)
        outdot = t @ layers[-1][0][0]
    grads: list[tuple[np.ndarray, np.ndarray]] = [None] * nl  # type: ignore[list-item]
    Wout = layers[-1][0]  # (1, h)
    dW = (obar @ acts[-1])[None, :]
    if tang is not None:
        dW = dW + tbar * _column_sums(tang[-1])[None, :]
    grads[-1] = (dW, np.array([obar.sum()]))
    abar, arow = Wout, obar  # dS/da of the top hidden layer is arow[:, None] * abar
    tdbar = None if tang is None else tbar * Wout
    c0, c1 = D2_COEFFICIENTS[ps.kind]
    for k in range(nl - 2, -1, -1):
        W = layers[k][0]
        zbar = np.empty_like(d1s[k])
        if tang is not None:
            zdbar = np.empty_like(d1s[k])
            _backprop_tangent(d1s[k], acts[k + 1], c0, c1, abar, arow, zdots[k], tdbar, zbar, zdbar)
            dW = zbar.T @ acts[k] + zdbar.T @ tang[k]
        else:
            _backprop(d1s[k], abar, arow, zbar)
            dW = zbar.T @ acts[k]
        grads[k] = (dW, _column_sums(zbar))
        if k > 0:
            abar, arow = zbar @ W, np.ones(n, zbar.dtype)
            if tang is not None:
                tdbar = zdbar @ W
    return grads, outdot
