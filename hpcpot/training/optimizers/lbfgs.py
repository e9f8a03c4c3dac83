"""L-BFGS with a strong-Wolfe line search, for rank 0's small parameter vector.

scipy's L-BFGS-B spends 0.2 ms (history 10) to 0.8 ms (history 50) of Python and Fortran
per evaluation on ~3000 parameters while every other rank waits; here the two-loop recursion
and the pair update are numba kernels over circular (m × P) float32 buffers and the line
search a few scalar operations: 8-14x less with caches warm (histories 10-50: 23 and 52 µs
with hpcpot's driver).  After a real evaluation has streamed its derivatives through the
caches, both read their state (and Python its own objects) from DRAM and the gap narrows to
3-5x
(``benchmarks/rank0_optimizer.py``; the README's Performance section).

The method (Nocedal & Wright, Numerical Optimization, 2nd ed., Alg. 7.4 and 3.5/3.6):
the direction is −H·g from the two-loop recursion with H0 = (sᵀy / yᵀy)·I; the step
satisfies the strong Wolfe conditions (c1 = 1e-4, c2 = 0.9), found by bracketing and
zooming with safeguarded cubic interpolation; a pair (s, y) with too little curvature is
not stored.  If the search fails, the memory is dropped and steepest descent is tried once
before the run stops with a message.

Interface as scipy.optimize.minimize's: ``fun(x) -> (f, g)``; ``callback(res)`` after each
accepted step, where ``res.x`` is the new point; raising StopIteration in it ends the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from ...potential.intrinsics import prefetch

C1 = 1e-4  # sufficient decrease
C2 = 0.9  # curvature (weak enough for quasi-Newton steps of length 1 to pass)
MAX_EVALS_PER_SEARCH = 25


@njit(cache=True)
def _abs_max(g):
    """max |g_i| from the bit patterns: for floats without their sign bit the integer order is
    the float order, and an integer max vectorises (a float max, with its NaN semantics, does
    not: 2962 values 1.85 -> 0.4 µs).  NaN anywhere gives NaN."""
    gi = g.view(np.int64)
    m = np.int64(0)
    for i in range(gi.shape[0]):
        m = max(m, gi[i] & np.int64(0x7FFFFFFFFFFFFFFF))
    r = np.empty(1, np.int64)
    r[0] = m
    return r.view(np.float64)[0]


@njit(cache=True, fastmath=True)  # reassociated dot products vectorise: 3-4x on history 50
def two_loop(g, S, Y, rho, gam, head, count, out):
    """out = −H·g from the ``count`` newest pairs of the circular buffers (newest at head−1);
    returns (max |g_i|, gᵀout), which the caller needs next and this loop reads g for anyway.

    ``rho[k]`` = 1/(s_kᵀy_k) and ``gam[k]`` = s_kᵀy_k / y_kᵀy_k of each stored pair (H0 =
    gam·I from the newest), computed in float64 when the pair was stored.

    The recursion runs in float32, the precision the pairs are stored in: the direction it
    returns carries a relative error of ~1e-7 (the line search then sees exact f and g), and
    float32 arithmetic halves the vector work and the scratch vector's traffic (history 50,
    2962 parameters: 37 against 53 µs; pairs stored in float64: 95 µs).  Each sweep over
    the parameters does one pair's update and the next pair's dot product together, so the
    scratch vector is read and written count + 1 times instead of 2·count.
    """
    m = S.shape[0]
    n = g.shape[0]
    alpha = np.empty(m, np.float32)
    q = np.empty(n, np.float32)
    gmax = _abs_max(g)
    if count == 0:
        d0 = 0.0
        for i in range(n):
            out[i] = -g[i]
            d0 -= g[i] * g[i]
        return gmax, d0
    # first loop, newest to oldest: a_k = rho_k s_k.q, q -= a_k y_k
    k = (head - 1) % m
    a = np.float32(0.0)
    for i in range(n):
        qi = np.float32(-g[i])
        q[i] = qi
        a += S[k, i] * qi
    a = np.float32(a * rho[k])
    alpha[k] = a
    for _ in range(count - 1):
        kn = (k - 1) % m
        b = np.float32(0.0)
        for i in range(n):
            o = q[i] - a * Y[k, i]
            q[i] = o
            b += S[kn, i] * o
        a = np.float32(b * rho[kn])
        alpha[kn] = a
        k = kn
    # H0 = gamma I, fused with the last update above and the first dot product of the second
    # loop (oldest to newest: b = rho_k y_k.r, r += (a_k - b) s_k)
    gamma = np.float32(gam[(head - 1) % m])
    k0 = (head - count) % m
    b = np.float32(0.0)
    for i in range(n):
        o = (q[i] - a * Y[k, i]) * gamma
        q[i] = o
        b += Y[k0, i] * o
    c = np.float32(alpha[k0] - b * rho[k0])
    k = k0
    for _ in range(count - 1):
        kn = (k + 1) % m
        b = np.float32(0.0)
        for i in range(n):
            o = q[i] + c * S[k, i]
            q[i] = o
            b += Y[kn, i] * o
        c = np.float32(alpha[kn] - b * rho[kn])
        k = kn
    d0 = 0.0
    for i in range(n):
        o = np.float64(q[i] + c * S[k, i])
        out[i] = o
        d0 += g[i] * o
    return gmax, d0


@njit(cache=True, fastmath=True)  # reassociated sums vectorise: _update 8.3 -> 5.6 µs at 2962
def _store_pair(x_new, x, g_new, g, S, Y, rho, gam, head):
    """Store s = x_new − x and y = g_new − g, rounded to the buffers' float32, at ``head``
    if the rounded pair has enough curvature (H stays positive definite); True if stored.
    One kernel instead of eight numpy temporaries: rank 0's Python time per step matters."""
    n = x.shape[0]
    sy = 0.0
    yy = 0.0
    for i in range(n):
        s = np.float64(np.float32(x_new[i] - x[i]))
        y = np.float64(np.float32(g_new[i] - g[i]))
        sy += s * y
        yy += y * y
    if not (sy > 1e-12 * yy and sy > 0):
        return False
    # written only now: with a full buffer, head holds the oldest pair still in use
    for i in range(n):
        S[head, i] = x_new[i] - x[i]
        Y[head, i] = g_new[i] - g[i]
    rho[head] = 1.0 / sy
    gam[head] = sy / yy
    return True


@njit(cache=True)
def _update(x_new, x, g_new, g, S, Y, rho, gam, head, count, out):
    """After an accepted step from (x, g) to (x_new, g_new): store the pair (if its curvature
    allows) and write the next direction into ``out``; returns (head, count, max |g_new_i|,
    g_newᵀout).  One call from Python per iteration instead of two."""
    if _store_pair(x_new, x, g_new, g, S, Y, rho, gam, head):
        head = (head + 1) % S.shape[0]
        count = min(count + 1, S.shape[0])
    gmax, d0 = two_loop(g_new, S, Y, rho, gam, head, count, out)
    return head, count, gmax, d0


@njit(cache=True)
def _prefetch_pairs(S, Y, ring, first, last):
    """Ask the CPU to bring pairs ``first``..``last`` − 1 (0 = the newest, as the recursion
    reads them; ``ring`` = [head, count]) of S and Y into L2, one prefetch per cache line;
    pairs past ``count`` are skipped."""
    m, n = S.shape
    step = 64 // S.itemsize
    for j in range(first, min(last, ring[1])):
        k = (ring[0] - 1 - j) % m
        for i in range(0, n, step):
            prefetch(S[k], i)
            prefetch(Y[k], i)


def _l2_bytes() -> int:
    """This CPU's L2 cache per core in bytes (Linux sysfs), else 1 MiB."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as fh:
            text = fh.read().strip()
        return int(text[:-1]) * {"K": 2**10, "M": 2**20}[text[-1]] if text[-1] in "KM" else int(text)
    except (OSError, ValueError, IndexError):
        return 2**20


def _kernel_warm_up() -> Callable[[], None]:
    """One call of each kernel an iteration runs, on a tiny problem of its own.  After an
    evaluation has streamed its shard through the caches, the first call of a numba kernel
    from Python costs ~15 µs more than a warm one (the dispatcher's and the kernel's code
    and data come back from L3: _copy_dot on 3006 parameters 19 against 3 µs, after a dummy
    call 7 µs); run while the Allreduce is in flight, these calls take that wait instead."""
    n = 16
    x = np.linspace(0.5, 2.0, n)
    g = 2.0 * x
    x_new, g_new = 0.9 * x, 1.8 * x
    S = np.zeros((2, n), np.float32)
    Y = np.zeros((2, n), np.float32)
    rho, gam, out = np.zeros(2), np.zeros(2), np.empty(n)

    def warm() -> None:
        _step(x, 1.0, g)
        _copy_dot(g, x)
        _update(x_new, x, g_new, g, S, Y, rho, gam, 0, 0, out)  # stores a pair, recursion on it

    return warm


def _warm_up_chunks(S: np.ndarray, Y: np.ndarray, ring: np.ndarray, chunks: int = 8) -> list[Callable[[], None]]:
    """The warm-up of the next iteration, as calls an Allreduce in flight runs between its
    tests, most useful first: the prefetch of the pairs the next recursion reads, newest
    first, in ``chunks`` calls (as many pairs as fill 3/4 of L2: more would evict the first
    ones before they are read), then the kernels (:func:`_kernel_warm_up`)."""
    pairs = min(S.shape[0], max(1, int(0.75 * _l2_bytes()) // (S[0].nbytes + Y[0].nbytes)))
    bounds = np.linspace(0, pairs, min(chunks, pairs) + 1).astype(int)
    return [lambda a=int(a), b=int(b): _prefetch_pairs(S, Y, ring, a, b)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)] + [_kernel_warm_up()]  # fmt: skip


@njit(cache=True, fastmath=True)
def _copy_dot(g, p):
    """(a float64 copy of g, gᵀp) in one pass (numpy: a copy and a dot, 2.2 µs at 2962)."""
    out = np.empty(g.shape[0])
    d = 0.0
    for i in range(g.shape[0]):
        v = np.float64(g[i])
        out[i] = v
        d += v * p[i]
    return out, d


@njit(cache=True)
def _step(x, t, p):
    """x + t·p, in one pass (numpy: two temporaries)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = x[i] + t * p[i]
    return out


def _cubic_min(a, fa, da, b, fb, db):
    """Minimiser of the cubic through (a, fa, da), (b, fb, db), or None."""
    d1 = da + db - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    den = db - da + 2 * d2
    if den == 0:
        return None
    return b - (b - a) * (db + d2 - d1) / den


@dataclass(slots=True)
class _Point:
    t: float
    f: float
    d: float  # directional derivative gᵀp
    x: np.ndarray
    g: np.ndarray


def wolfe_search(phi: Callable[[float], _Point], p0: _Point, t0: float, first: _Point | None = None) -> _Point | None:
    """A step along the direction meeting the strong Wolfe conditions, or None.  ``first``:
    phi(t0), if the caller has evaluated it already."""
    lo, t, prev = p0, t0, p0
    evals = 0
    hi = None
    while evals < MAX_EVALS_PER_SEARCH:  # bracketing phase
        cur = first if (evals == 0 and first is not None) else phi(t)
        evals += 1
        if not math.isfinite(cur.f):
            lo, hi = prev, cur
            break
        if cur.f > p0.f + C1 * t * p0.d or (evals > 1 and cur.f >= prev.f):
            lo, hi = prev, cur
            break
        if abs(cur.d) <= -C2 * p0.d:
            return cur
        if cur.d >= 0:
            lo, hi = cur, prev
            break
        prev = cur
        t = min(2.0 * t if evals > 1 else 4.0 * t, 1e10)
    if hi is None:
        return None
    while evals < MAX_EVALS_PER_SEARCH:  # zoom between lo (sufficient decrease) and hi
        a, b = lo.t, hi.t
        t = _cubic_min(lo.t, lo.f, lo.d, hi.t, hi.f, hi.d) if math.isfinite(hi.f) else None
        width = abs(b - a)
        # safeguard: stay well inside the bracket, else bisect
        if t is None or not math.isfinite(t) or abs(t - a) < 0.1 * width or abs(t - b) < 0.1 * width:
            t = 0.5 * (a + b)
        if width < 1e-16 * max(1.0, abs(a)):
            return lo if lo.t > 0 else None
        cur = phi(t)
        evals += 1
        if not math.isfinite(cur.f) or cur.f > p0.f + C1 * t * p0.d or cur.f >= lo.f:
            hi = cur
        else:
            if abs(cur.d) <= -C2 * p0.d:
                return cur
            if cur.d * (hi.t - lo.t) >= 0:
                hi = lo
            lo = cur
    return lo if lo.t > 0 and lo.f < p0.f else None


@dataclass
class LbfgsResult:
    x: np.ndarray
    fun: float
    nit: int
    nfev: int
    message: str


def minimize_lbfgs(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    history: int = 10,
    maxiter: int = 1000,
    callback: Callable[[LbfgsResult], None] | None = None,
    gtol: float = 1e-12,
    overlap: Callable[[Sequence[Callable[[], None]]], None] | None = None,
) -> LbfgsResult:
    """Minimise ``fun`` from ``x0`` (float64, shape (P,)); see the module doc.

    ``overlap``, if given, is called with the warm-up of the next iteration (zero-argument
    calls: :func:`_warm_up_chunks`) and with ``()`` when the run ends: an MPI evaluation runs
    them while its Allreduce is in flight (:meth:`hpcpot.parallel.Evaluator.set_overlap`).
    After an evaluation has streamed its shard through the caches the recursion reads its
    pairs from L3 or DRAM (at 64 ranks of the reference set: ~45 µs of a ~130 µs step);
    prefetched while the rank waits for the reduction, they are in L2 when it starts."""
    x = np.array(x0, dtype=float)
    n = len(x)
    # The pairs are stored in float32: the recursion streams them twice per iteration, and at
    # history 50 on 3006 parameters (2.4 MB in float64, more than L2) it is bandwidth-bound.
    # rho, gamma and the curvature test use the stored (rounded) pairs, so H stays the
    # positive-definite L-BFGS matrix of those pairs; the line search sees exact f and g.
    S = np.zeros((history, n), np.float32)
    Y = np.zeros((history, n), np.float32)
    rho = np.zeros(history)
    gam = np.zeros(history)
    # [head, count] for the prefetch calls, kept by each stored pair (after a reset of the
    # memory it is stale until the next one: a prefetch of unused pairs, no more)
    ring = np.zeros(2, np.int64)
    if overlap is not None:
        overlap(_warm_up_chunks(S, Y, ring))
    try:
        return _minimize(fun, x, S, Y, rho, gam, ring, maxiter, callback, gtol)
    finally:
        if overlap is not None:
            overlap(())


def _minimize(fun, x, S, Y, rho, gam, ring, maxiter, callback, gtol) -> LbfgsResult:
    """minimize_lbfgs's iterations on its freshly allocated state."""
    n = len(x)
    head = count = 0
    f, g = fun(x)
    g = np.array(g, dtype=float)
    nfev, nit = 1, 0
    p = np.empty(n)
    msg = "maximum number of iterations reached"
    retried = False

    def phi(t):  # reads the current x and p
        nonlocal nfev
        xt = _step(x, t, p)
        ft, gt = fun(xt)
        nfev += 1
        gt, dt = _copy_dot(np.asarray(gt), p)  # a copy: fun may reuse its buffer
        return _Point(t, float(ft), dt, xt, gt)

    gnorm, d0 = two_loop(g, S, Y, rho, gam, head, count, p)
    while nit < maxiter:
        if gnorm <= gtol:
            msg = "gradient below gtol"
            break
        if not d0 < 0:  # not a descent direction (numerical trouble): steepest descent
            count = 0
            gnorm, d0 = two_loop(g, S, Y, rho, gam, head, count, p)
        t0 = 1.0 if count > 0 else min(1.0, 1.0 / float(np.linalg.norm(g)))
        new = phi(t0)
        # the usual case, the first trial meets both strong Wolfe conditions: no search
        if not (new.f <= f + C1 * t0 * d0 and abs(new.d) <= -C2 * d0):
            new = wolfe_search(phi, _Point(0.0, f, d0, x, g), t0, new)
        if new is None:
            if count > 0 and not retried:  # drop the memory, try steepest descent once
                count, retried = 0, True
                gnorm, d0 = two_loop(g, S, Y, rho, gam, head, count, p)
                continue
            msg = "the line search found no lower point (converged to machine precision, or a kink)"
            break
        retried = False
        head, count, gnorm, d0 = _update(new.x, x, new.g, g, S, Y, rho, gam, head, count, p)
        ring[0], ring[1] = head, count
        x, f, g = new.x, new.f, new.g
        nit += 1
        if callback is not None:
            try:
                callback(LbfgsResult(x, f, nit, nfev, ""))
            except StopIteration:
                msg = "stopped by the callback"
                break
    return LbfgsResult(x, f, nit, nfev, msg)
