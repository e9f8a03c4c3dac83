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

    def _net_size(self, e: int) -> int:
        return sum(o * i + o for o, i in self.layer_shapes(e))

    @property
    def n_params(self) -> int:
        return sum(self._net_size(e) for e in range(len(self.elements))) + 2 * len(self.elements)

    def network_offset(self, e: int) -> int:
        return sum(self._net_size(k) for k in range(e))

    @property
    def scaling_offset(self) -> int:
        return self.network_offset(len(self.elements))

    def unpack(self, params: np.ndarray, e: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views (W, b) of every layer of element e's network into ``params``."""
        off = self.network_offset(e)
        out = []
        for o, i in self.layer_shapes(e):
            W = params[off : off + o * i].reshape(o, i)
            off += o * i
            out.append((W, params[off : off + o]))
            off += o
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


def activation_derivs(a: np.ndarray, kind: str, need_d2: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(f'(z), f''(z)) expressed through the activation value a = f(z)."""
    if kind == "tanh":
        d1 = a * a
        np.subtract(1.0, d1, out=d1)
        return d1, (-2.0 * a * d1 if need_d2 else None)
    if kind == "sigmoid":
        d1 = a * (1.0 - a)
        return d1, (d1 * (1.0 - 2.0 * a) if need_d2 else None)
    return np.ones_like(a), (np.zeros_like(a) if need_d2 else None)


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10


@njit(cache=True, fastmath=True)
def _tanh_and_derivative(z, d1, ki, pv):
    """z <- tanh(z), d1 <- 1 - tanh(z)^2, for a C-contiguous 2-D block.

    tanh = 1 - 2/(exp(2z) + 1) with exp by range reduction and a degree-12 polynomial, written
    so that LLVM vectorises it (libm's exp does not): 157 µs against 342 µs for numpy's
    exp-based tanh plus derivative on a 2048 x 20 block on this AVX2 machine; max error 4e-16.
    ki, pv: scratch arrays of z.size.
    """
    zf = z.ravel()
    df = d1.ravel()
    n = zf.size
    for i in range(n):
        y = 2.0 * min(max(zf[i], -20.0), 20.0)  # tanh(±20) is ±1 in float64
        k = math.floor(y * _LOG2E + 0.5)
        r = (y - k * _LN2_HI) - k * _LN2_LO
        p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (1.0 / 720 + r * (
            1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800 + r * (
                1.0 / 39916800 + r * (1.0 / 479001600))))))))))))  # fmt: skip
        ki[i] = (np.int64(k) + 1023) << 52  # 2^k as float64 bits
        pv[i] = p
    kf = ki.view(np.float64)
    for i in range(n):
        a = 1.0 - 2.0 / (pv[i] * kf[i] + 1.0)
        zf[i] = a
        df[i] = 1.0 - a * a


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
    """One forward pass: activations [x, a_1, ..., a_L], f'(z_l) and (if asked) f''(z_l)."""

    out: np.ndarray  # (n,)
    acts: list[np.ndarray]
    d1: list[np.ndarray]
    d2: list[np.ndarray] | None


def forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, kind: str, need_d2: bool = False) -> Pass:
    """Network outputs (n,) for rows x (n, n_in), keeping what the backward passes need."""
    acts = [x]
    d1s, d2s = [], []
    a = x
    for W, b in layers[:-1]:
        z = a @ W.T
        z += b
        if kind == "tanh":
            d1 = np.empty_like(z)
            _tanh_and_derivative(z, d1, np.empty(z.size, np.int64), np.empty(z.size))
            a = z
            d2 = -2.0 * a * d1 if need_d2 else None
        else:
            a = activate(z, kind)
            d1, d2 = activation_derivs(a, kind, need_d2)
        acts.append(a)
        d1s.append(d1)
        d2s.append(d2)
    W, b = layers[-1]
    return Pass((a @ W[0]) + b[0], acts, d1s, d2s if need_d2 else None)


def input_gradient(layers, ps: Pass) -> np.ndarray:
    """d output / d x for every row, shape (n, n_in)."""
    abar = ps.d1[-1] * layers[-1][0]
    for k in range(len(layers) - 2, 0, -1):
        abar = (abar @ layers[k][0]) * ps.d1[k - 1]
    return abar @ layers[0][0]


def parameter_gradient(
    layers, ps: Pass, obar: np.ndarray, v: np.ndarray | None, tbar: float
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
    """Gradient of S = Σ_n obar_n out_n + tbar Σ_n (∇_x out_n · v_n) w.r.t. every (W, b).

    The second term (forces) is a forward-mode (tangent) pass along v followed by one
    reverse pass through both the primal and the tangent: no per-parameter Jacobian is ever
    formed.  ``ps`` must come from ``forward(..., need_d2=v is not None)``.  Returns the
    per-layer (dW, db) and the tangent outputs ∇_x out_n · v_n (or None).
    """
    nl = len(layers)
    acts, d1s, d2s = ps.acts, ps.d1, ps.d2
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
    Wout = layers[-1][0]
    dW = (obar @ acts[-1])[None, :]
    if tang is not None:
        dW = dW + tbar * tang[-1].sum(axis=0)[None, :]
    grads[-1] = (dW, np.array([obar.sum()]))
    abar = obar[:, None] * Wout  # (n, h)
    tdbar = None if tang is None else tbar * Wout  # (1, h), broadcasts over rows
    for k in range(nl - 2, -1, -1):
        W = layers[k][0]
        zbar = d1s[k] * abar
        if tang is not None:
            zbar += d2s[k] * zdots[k] * tdbar
            zdbar = d1s[k] * tdbar
            dW = zbar.T @ acts[k] + zdbar.T @ tang[k]
        else:
            dW = zbar.T @ acts[k]
        grads[k] = (dW, zbar.sum(axis=0))
        if k > 0:
            abar = zbar @ W
            if tang is not None:
                tdbar = zdbar @ W
    return grads, outdot
