"""The loss gradient against central finite differences, and the loss definition itself."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fresh_python, small_problem


def _fd_check(prob, p, h=1e-6, n_check=None):
    g = prob.evaluate(p)[5:].copy()
    idx = np.arange(p.size) if n_check is None else np.random.default_rng(1).choice(p.size, n_check, replace=False)
    fd = np.empty(len(idx))
    for k, i in enumerate(idx):
        pp = p.copy()
        pp[i] += h
        lp = prob.evaluate(pp, with_grad=False)[0]
        pp[i] -= 2 * h
        lm = prob.evaluate(pp, with_grad=False)[0]
        fd[k] = (lp - lm) / (2 * h)
    return np.abs(fd - g[idx]).max() / np.abs(g).max()


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "linear"])
@pytest.mark.parametrize("alpha", [0.0, 0.04])
def test_gradient_matches_finite_differences(ref_structures, activation, alpha):
    st = ref_structures.subset(np.arange(6))
    prob, p, _ = small_problem(st, alpha=alpha, activation=activation)
    assert _fd_check(prob, p) <= 1e-6


def test_float32_derivatives_cost_little_gradient_accuracy(ref_structures):
    st = ref_structures.subset(np.arange(6))
    p64, p, _ = small_problem(st)
    p32, _, _ = small_problem(st, dtype=np.float32)
    g64 = p64.evaluate(p)[5:]
    g32 = p32.evaluate(p)[5:]
    rel = np.abs(g32 - g64).max() / np.abs(g64).max()
    assert 0 < rel < 1e-5  # float32 storage changes the gradient, but only at ~1e-7 level


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "linear"])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_float32_network_passes_agree_with_float64(ref_structures, activation, alpha):
    """[loss] precision = "float32": weights, inputs and activations rounded, sums in float64.
    The loss and every gradient component agree with the float64 passes (whose gradient the
    finite-difference test checks) to ~1e-6 of the largest, and the arrays the passes use
    really are float32."""
    st = ref_structures.subset(np.arange(8))
    p64, p, _ = small_problem(st, alpha=alpha, activation=activation)
    p32, _, _ = small_problem(st, alpha=alpha, activation=activation, precision=np.float32)
    assert p32.X[0].dtype == np.float32 and (alpha == 0 or p32.g.dtype == np.float32)
    b64 = p64.evaluate(p).copy()
    b32 = p32.evaluate(p).copy()
    assert b32.dtype == np.float64
    assert b32[0] == pytest.approx(b64[0], rel=1e-6) and b32[0] != b64[0]
    np.testing.assert_allclose(b32[1:5], b64[1:5], rtol=1e-5)
    g64, g32 = b64[5:], b32[5:]
    assert np.abs(g32 - g64).max() <= 2e-6 * np.abs(g64).max()
    # energies and forces of the same parameters, as a training's validation sees them
    E64, F64 = p64.predict(p)
    E32, F32 = p32.predict(p)
    np.testing.assert_allclose(E32, E64, rtol=1e-6)
    if alpha:
        assert np.abs(F32 - F64).max() <= 1e-5 * np.abs(F64).max()


def test_force_kernel_does_not_depend_on_the_order_of_pairs(ref_structures):
    """The kernel gathers a centre's input gradients once per run of its pairs: with the pairs
    of every image shuffled (no centre's pairs contiguous any more) the loss, gradient and
    forces are the same to rounding."""
    st = ref_structures.subset(np.arange(5))
    prob, p, _ = small_problem(st, alpha=0.3)
    buf = prob.evaluate(p).copy()
    E, F = prob.predict(p)
    b = prob.blocks
    rng = np.random.default_rng(3)
    order = np.concatenate([b.image_ptr[j] + rng.permutation(b.image_ptr[j + 1] - b.image_ptr[j]) for j in range(st.n_images)])
    assert (np.diff(b.centre[order]) != 0).sum() > (np.diff(b.centre) != 0).sum()  # really split up
    b.centre, b.partner, b.kind = b.centre[order], b.partner[order], b.kind[order]
    b.ptr = np.append(b.ptr[order], b.ptr[-1])  # values stay where they are
    np.testing.assert_allclose(prob.evaluate(p), buf, rtol=1e-12, atol=1e-15)
    E2, F2 = prob.predict(p)
    np.testing.assert_allclose(E2, E, rtol=1e-12)
    np.testing.assert_allclose(F2, F, rtol=1e-10, atol=1e-13)


def test_loss_is_amps_definition(ref_structures):
    """Recompute L from predicted energies/forces with plain numpy."""
    st = ref_structures.subset(np.arange(5))
    alpha = 0.3
    prob, p, _ = small_problem(st, alpha=alpha)
    buf = prob.evaluate(p, with_grad=False)
    E, F = prob.predict(p)
    N = st.n_atoms
    L = L_E = 0.0
    for j in range(st.n_images):
        a0, a1 = st.atom_ptr[j], st.atom_ptr[j + 1]
        L_E += 0.5 * ((E[j] - st.energy[j]) / N[j]) ** 2
        L += 0.5 * alpha / (3 * N[j]) * np.sum((F[a0:a1] - st.forces[a0:a1]) ** 2)
    L += L_E
    assert buf[0] == pytest.approx(L, rel=1e-12)
    assert buf[2] == st.n_images and buf[4] == 3 * N.sum()
    # the trainer's "loss shares" line
    from hpcpot.training.optimizers import Stats

    assert Stats.from_buffer(buf).energy_share == pytest.approx(L_E / L, rel=1e-12)


def test_empty_shard_evaluates_to_zero(ref_structures):
    st = ref_structures.subset(np.arange(4))
    prob, p, lay = small_problem(st)
    from hpcpot.training.loss import ShardProblem

    empty = st.subset(np.arange(0))
    ep = ShardProblem(empty, np.zeros((0, prob.X[0].shape[1])), None, lay, np.zeros((2, 20)), np.ones((2, 20)),
                      (prob.sub_idx, prob.sub_len), 0.04)  # fmt: skip
    buf = ep.evaluate(p)
    assert buf.shape == prob.evaluate(p).shape and not buf.any()


def test_recompute_mode_gives_the_stored_answer(ref_structures):
    from hpcpot.potential.fingerprints import compute_fingerprints
    from hpcpot.training.config import FingerprintConfig
    from hpcpot.training.descriptors import symmetry_functions
    from hpcpot.training.loss import ShardProblem

    st = ref_structures.subset(np.arange(9))
    prob, p, lay = small_problem(st)
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    G, _ = compute_fingerprints(st, sf, with_derivs=False)
    ne = len(st.elements)
    gmin = np.stack([G[st.species == e].min(0) for e in range(ne)])
    gmax = np.stack([G[st.species == e].max(0) for e in range(ne)])
    rec = ShardProblem(st, G, None, lay, gmin, gmax, sf.block_tables(), 0.04, recompute=sf)
    a = prob.evaluate(p)
    b = rec.evaluate(p)
    assert np.allclose(a, b, rtol=1e-12, atol=1e-14 * np.abs(a).max())


def test_tanh_kernel_matches_numpy_to_rounding():
    from hpcpot.potential.network import _tanh_and_derivative

    tiny = np.logspace(-300, 0, 3000)
    z0 = np.concatenate([np.linspace(-30, 30, 200_001), tiny, -tiny, [0.0, 400.0, -1e6, 19.1, -19.1]])
    z = z0.copy()
    d1 = np.empty_like(z)
    _tanh_and_derivative(z[:, None], np.zeros(1), d1[:, None], np.empty(z.size), np.empty(z.size))
    ref = np.tanh(z0)
    assert np.all(np.abs(z - ref) <= 1e-15 * np.abs(ref))  # a few ulp relative, tiny |z| too
    # 1 - tanh^2 = 1/cosh^2, relative accuracy even where it is tiny (cosh overflows past ~710)
    ok = np.abs(z0) < 340
    ref = 1.0 / np.cosh(z0[ok]) ** 2
    assert np.all(np.abs(d1[ok] - ref) <= 1e-14 * ref)
    assert np.all(d1[~ok] < 1e-290) and np.all(np.abs(z[~ok]) == 1.0)
    zb = np.random.default_rng(0).normal(0, 2, (50, 3))
    out, d = zb.copy(), np.empty_like(zb)
    bias = np.array([0.5, -1.0, 0.0])
    _tanh_and_derivative(out, bias, d, np.empty(zb.size), np.empty(zb.size))
    assert np.allclose(out, np.tanh(zb + bias), rtol=1e-15, atol=0)
    assert np.allclose(d, 1 / np.cosh(zb + bias) ** 2, rtol=1e-14, atol=0)


def test_float32_tanh_kernel_matches_numpy_to_float32_rounding():
    from hpcpot.potential.network import _tanh_and_derivative32

    tiny = np.logspace(-30, 0, 3000)
    z0 = np.concatenate([np.linspace(-30, 30, 200_001), tiny, -tiny, [0.0, 400.0, -1e6, 19.1, -19.1, 44.0]])
    z0 = z0.astype(np.float32)
    z = z0.copy()
    d1 = np.empty_like(z)
    _tanh_and_derivative32(z[:, None], np.zeros(1, np.float32), d1[:, None], np.empty(z.size, np.float32),
                           np.empty(z.size, np.float32))  # fmt: skip
    assert z.dtype == d1.dtype == np.float32
    zz = z0.astype(float)
    ref = np.tanh(zz)
    eps = np.finfo(np.float32).eps
    assert np.all(np.abs(z - ref) <= 3 * eps * np.abs(ref))  # a few float32 ulp, tiny |z| too
    ok = np.abs(zz) < 40
    ref = 1.0 / np.cosh(zz[ok]) ** 2
    assert np.all(np.abs(d1[ok] - ref) <= 4 * eps * ref)
    assert np.all(d1[~ok] < 1e-30) and np.all(np.abs(z[~ok]) == 1.0)
    zb = np.random.default_rng(0).normal(0, 2, (50, 3)).astype(np.float32)
    out, d = zb.copy(), np.empty_like(zb)
    bias = np.array([0.5, -1.0, 0.0], np.float32)
    _tanh_and_derivative32(out, bias, d, np.empty(zb.size, np.float32), np.empty(zb.size, np.float32))
    zr = zb.astype(float) + bias
    assert np.allclose(out, np.tanh(zr), rtol=3 * eps, atol=0)
    assert np.allclose(d, 1 / np.cosh(zr) ** 2, rtol=4 * eps, atol=0)


@pytest.mark.parametrize("alpha", [0.0, 0.04])
def test_blocked_network_passes_equal_one_block(ref_structures, alpha):
    prob, p, _ = small_problem(ref_structures.subset(np.arange(10)), alpha=alpha)
    whole = prob.evaluate(p).copy()
    prob.block, prob.block_energy_only, prob.element_block = 7, 5, 6  # many blocks, ragged last one
    blocked = prob.evaluate(p)
    assert np.allclose(blocked, whole, rtol=1e-12, atol=1e-15)



def test_training_problem_refuses_virials_over_its_shared_gradient_array(ref_structures):
    """A ShardProblem's force kernel writes v over the input gradients g (one array fewer):
    virials, which need g, must refuse rather than read v; a Batch (the calculator's and
    hpcpot.evaluate's) keeps them apart."""
    from hpcpot.potential.fingerprints import compute_fingerprints
    from hpcpot.potential.predict import Batch
    from hpcpot.training.config import FingerprintConfig
    from hpcpot.training.descriptors import symmetry_functions

    st = ref_structures.subset(np.arange(3))
    prob, p, lay = small_problem(st)
    assert prob.v is prob.g
    prob.evaluate(p)
    with pytest.raises(ValueError, match="virials need the input gradients"):
        prob.virials()
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    G, b = compute_fingerprints(st, sf, True, with_virial=True)
    ne = len(st.elements)
    gmin = np.stack([G[st.species == e].min(0) for e in range(ne)])
    gmax = np.stack([G[st.species == e].max(0) for e in range(ne)])
    batch = Batch(st, G, b, lay, gmin, gmax, sf.block_tables())
    batch.predict(p)
    assert batch.v is not batch.g and np.isfinite(batch.virials()).all()


@pytest.mark.parametrize("precision", [np.float64, np.float32])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("hidden", [(6,), (7, 5), (4, 6, 3)])
def test_one_call_element_passes_equal_the_numpy_passes(ref_structures, precision, alpha, hidden):
    """Tanh networks run each element's passes in one numba call (element_passes); the numpy
    passes (network.forward, input_gradient, parameter_gradient) are the reference: loss,
    gradient, energies and forces agree to rounding (float64) or float32 rounding, also with
    many blocks and a ragged last one."""
    prob, p, _ = small_problem(ref_structures.subset(np.arange(9)), alpha=alpha, hidden=hidden, precision=precision)
    assert prob.element_kernels
    tol = 1e-12 if precision == np.float64 else 2e-6
    prob.element_kernels = False
    ref = prob.evaluate(p).copy()
    E_ref, F_ref = prob.predict(p)
    prob.element_kernels = True
    for block in (512, 7):
        prob.element_block = block
        got = prob.evaluate(p).copy()
        assert np.abs(got[0] - ref[0]) <= tol * ref[0]
        assert np.abs(got[5:] - ref[5:]).max() <= tol * np.abs(ref[5:]).max()
        E, F = prob.predict(p)
        np.testing.assert_allclose(E, E_ref, rtol=tol)
        if alpha:
            assert np.abs(F - F_ref).max() <= 10 * tol * np.abs(F_ref).max()
            assert np.abs(F - F_ref).max() > 0 or precision == np.float64


@pytest.mark.parametrize("precision", [np.float64, np.float32])
def test_element_kernels_with_inputs_narrower_than_the_gradient_rows(precision):
    """An element with fewer functions than the widest element: element_forward writes only
    the first n_in columns of its rows of g (from row g_row0), element_gradient reads only
    those of v; the results equal network.forward / input_gradient / parameter_gradient."""
    from hpcpot.potential.element_passes import element_forward, element_gradient
    from hpcpot.potential.network import D2_COEFFICIENTS, Layout, forward, input_gradient, parameter_gradient

    rng = np.random.default_rng(5)
    n, n_in, width, row0 = 11, 4, 9, 3
    lay = Layout(("H",), (n_in,), (5, 3), "tanh")
    w = rng.normal(0, 0.7, lay.n_params - 2).astype(precision)
    X = rng.uniform(-1, 1, (n, n_in)).astype(precision)
    sizes = np.array([n_in, 5, 3, 1])
    acts, d1s = np.empty(n * 8, precision), np.empty(n * 8, precision)
    g = np.full((n + 5, width), 7.0, precision)
    out = np.empty(n)
    slope = precision(0.8)
    element_forward(w, sizes, X, slope, 4, out, acts, d1s, g, row0, True)
    layers = lay.unpack(w, 0)
    ps = forward(layers, X, "tanh")
    tol = 1e-12 if precision == np.float64 else 1e-5
    np.testing.assert_allclose(out, ps.out, rtol=tol, atol=tol)
    np.testing.assert_allclose(g[row0 : row0 + n, :n_in], input_gradient(layers, ps, 0.8), rtol=tol, atol=tol)
    assert (g[:row0] == 7).all() and (g[row0 + n :] == 7).all() and (g[:, n_in:] == 7).all()
    v = rng.normal(size=(n + 5, width)).astype(precision)
    obar = rng.normal(size=n).astype(precision)
    grad = np.zeros(lay.n_params + 3)
    c0, c1 = D2_COEFFICIENTS["tanh"]
    outdot = element_gradient(w, sizes, X, 4, acts, d1s, obar, v, row0, precision(-0.8), c0, c1, grad, 3)
    grads, outdot_ref = parameter_gradient(layers, ps, obar, v[row0 : row0 + n, :n_in], -0.8)
    ref = np.concatenate([np.concatenate([dW.ravel(), db]) for dW, db in grads])
    assert (grad[:3] == 0).all() and (grad[3 + ref.size :] == 0).all()
    np.testing.assert_allclose(grad[3 : 3 + ref.size], ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert outdot == pytest.approx(float(outdot_ref.sum()), rel=tol, abs=tol)


def test_element_kernels_load_blas_without_scipy_linalg():
    """numba's np.dot finds BLAS in scipy.linalg.cython_blas: element_passes loads that
    extension module alone, without scipy.linalg's package (0.1 s and 13.5 MiB per rank).
    In a fresh interpreter: the kernels give numpy's products, scipy.linalg is not imported,
    and importing it (and scipy.optimize, Levenberg–Marquardt's dsyrk) afterwards works."""
    code = """
import sys
import numpy as np
from hpcpot.potential.element_passes import BLAS_MODULE
from hpcpot.potential.network import Layout, forward
from hpcpot.potential.element_passes import element_forward
print(BLAS_MODULE in sys.modules, "scipy.linalg" in sys.modules)
rng = np.random.default_rng(0)
lay = Layout(("H",), (5,), (4,), "tanh")
w, X = rng.normal(size=lay.n_params - 2), rng.uniform(-1, 1, (6, 5))
out, ws = np.empty(6), np.empty(24)
element_forward(w, np.array([5, 4, 1]), X, 1.0, 8, out, ws, ws.copy(), np.empty((0, 0)), 0, False)
print(np.allclose(out, forward(lay.unpack(w, 0), X, "tanh").out, rtol=1e-13))
import scipy.linalg
import scipy.optimize
from scipy.linalg.blas import dsyrk
print(float(dsyrk(1.0, np.ones((2, 3)))[0, 0]))
"""
    assert fresh_python(code) == ["True", "False", "True", "3.0"]


def test_parameters_may_be_a_strided_view(ref_structures):
    """The element kernels reshape each element's slice of the parameters: a strided view (a
    caller's column of a larger array) gives the same loss and gradient as a copy."""
    prob, p, _ = small_problem(ref_structures.subset(np.arange(4)), alpha=0.3)
    wide = np.zeros((p.size, 2))
    wide[:, 0] = p
    assert np.array_equal(prob.evaluate(wide[:, 0]).copy(), prob.evaluate(p).copy())
    E, F = prob.predict(wide[:, 0])
    E2, F2 = prob.predict(p)
    assert np.array_equal(E, E2) and np.array_equal(F, F2)
