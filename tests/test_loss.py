"""The loss gradient against central finite differences, and the loss definition itself."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_problem


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


def test_loss_is_amps_definition(ref_structures):
    """Recompute L from predicted energies/forces with plain numpy."""
    st = ref_structures.subset(np.arange(5))
    alpha = 0.3
    prob, p, _ = small_problem(st, alpha=alpha)
    buf = prob.evaluate(p, with_grad=False)
    E, F = prob.predict(p)
    N = st.n_atoms
    L = 0.0
    for j in range(st.n_images):
        a0, a1 = st.atom_ptr[j], st.atom_ptr[j + 1]
        L += 0.5 * ((E[j] - st.energy[j]) / N[j]) ** 2
        L += 0.5 * alpha / (3 * N[j]) * np.sum((F[a0:a1] - st.forces[a0:a1]) ** 2)
    assert buf[0] == pytest.approx(L, rel=1e-12)
    assert buf[2] == st.n_images and buf[4] == 3 * N.sum()


def test_empty_shard_evaluates_to_zero(ref_structures):
    st = ref_structures.subset(np.arange(4))
    prob, p, lay = small_problem(st)
    from hpcpot.loss import ShardProblem

    empty = st.subset(np.arange(0))
    ep = ShardProblem(empty, np.zeros((0, prob.X[0].shape[1])), None, lay, np.zeros((2, 20)), np.ones((2, 20)),
                      (prob.sub_idx, prob.sub_len), 0.04)  # fmt: skip
    buf = ep.evaluate(p)
    assert buf.shape == prob.evaluate(p).shape and not buf.any()


def test_recompute_mode_gives_the_stored_answer(ref_structures):
    from hpcpot.config import FingerprintConfig
    from hpcpot.fingerprints import SymmetryFunctions, compute_fingerprints
    from hpcpot.loss import ShardProblem

    st = ref_structures.subset(np.arange(9))
    prob, p, lay = small_problem(st)
    sf = SymmetryFunctions.from_config(FingerprintConfig(), list(st.elements))
    G, _ = compute_fingerprints(st, sf, with_derivs=False)
    ne = len(st.elements)
    gmin = np.stack([G[st.species == e].min(0) for e in range(ne)])
    gmax = np.stack([G[st.species == e].max(0) for e in range(ne)])
    rec = ShardProblem(st, G, None, lay, gmin, gmax, sf.block_tables(), 0.04, recompute=sf)
    a = prob.evaluate(p)
    b = rec.evaluate(p)
    assert np.allclose(a, b, rtol=1e-12, atol=1e-14 * np.abs(a).max())
