"""hpcpot's own L-BFGS: the two-loop recursion equals the dense BFGS inverse update, the
line search meets the strong Wolfe conditions, and it reaches scipy's minima."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from hpcpot.training.optimizers.lbfgs import C1, C2, _abs_max, _Point, minimize_lbfgs, two_loop, wolfe_search


@pytest.mark.parametrize("k", [0, 1, 4, 6])
def test_two_loop_equals_the_dense_inverse_update(k):
    """With m >= the number of pairs, −H·g from the recursion equals the explicit BFGS update
    of H0 = gamma·I applied to the same (float32-stored) pairs, oldest first, to the float32
    arithmetic the recursion runs in; no pairs: −g exactly.  Also returns max|g| and gᵀ(−H·g)."""
    rng = np.random.default_rng(1)
    n, m = 7, 6
    A = rng.normal(size=(n, n))
    A = A @ A.T + n * np.eye(n)
    S = np.zeros((m, n), np.float32)
    Y = np.zeros((m, n), np.float32)
    rho = np.zeros(m)
    gam = np.zeros(m)
    pairs = []
    for j in range(k):
        s = rng.normal(size=n).astype(np.float32).astype(float)
        y = (A @ s).astype(np.float32).astype(float)
        i = (2 + j) % m  # a wrapped circular buffer
        S[i], Y[i], rho[i], gam[i] = s, y, 1 / (s @ y), (s @ y) / (y @ y)
        pairs.append((s, y))
    H = np.eye(n)
    if pairs:
        s_last, y_last = pairs[-1]
        H *= (s_last @ y_last) / (y_last @ y_last)
    for s, y in pairs:
        r = 1 / (s @ y)
        V = np.eye(n) - r * np.outer(y, s)
        H = V.T @ H @ V + r * np.outer(s, s)
    g = rng.normal(size=n)
    out = np.empty(n)
    gmax, d0 = two_loop(g, S, Y, rho, gam, (2 + k) % m, k, out)
    if k == 0:
        np.testing.assert_array_equal(out, -g)
    np.testing.assert_allclose(out, -H @ g, rtol=2e-6, atol=2e-6 * np.abs(H @ g).max())
    assert gmax == np.abs(g).max()
    assert d0 == pytest.approx(float(g @ out), rel=1e-12)


def test_abs_max_from_the_bit_patterns():
    """max |g| via integer compares of the sign-cleared bits: the float answer, signs and
    subnormals included; inf stays inf and NaN anywhere gives NaN."""
    rng = np.random.default_rng(3)
    for g in (rng.normal(size=2962), -np.abs(rng.normal(size=5)), np.array([0.0, -0.0]), np.array([5e-324, -1e-310]),
              np.array([-1e300, 2.0])):  # fmt: skip
        assert _abs_max(g) == np.abs(g).max()
    assert _abs_max(np.array([1.0, -np.inf])) == np.inf
    assert np.isnan(_abs_max(np.array([1.0, np.nan, 3.0])))


def _rosen(x):
    return float(scipy.optimize.rosen(x)), scipy.optimize.rosen_der(x)


def test_line_search_meets_strong_wolfe():
    x = np.array([-1.2, 1.0, -0.5, 0.8])
    f0, g0 = _rosen(x)
    p = -g0
    seen = []

    def phi(t):
        f, g = _rosen(x + t * p)
        seen.append(t)
        return _Point(t, f, float(g @ p), x + t * p, g)

    for t0 in (1.0, 1e-6, 1e3):
        r = wolfe_search(phi, _Point(0.0, f0, float(g0 @ p), x, g0), t0)
        assert r is not None
        assert r.f <= f0 + C1 * r.t * float(g0 @ p)
        assert abs(r.d) <= -C2 * float(g0 @ p)


@pytest.mark.parametrize("n,history", [(2, 5), (10, 10), (30, 50)])
def test_reaches_the_minimum_of_rosenbrock_as_scipy_does(n, history):
    x0 = np.linspace(-1.5, 1.2, n)
    ours = minimize_lbfgs(_rosen, x0, history=history, maxiter=5000, gtol=1e-9)
    ref = scipy.optimize.minimize(_rosen, x0, jac=True, method="L-BFGS-B", options={"maxcor": history, "gtol": 1e-9})
    np.testing.assert_allclose(ours.x, np.ones(n), atol=1e-6)
    np.testing.assert_allclose(ref.x, np.ones(n), atol=1e-5)
    assert ours.nfev < 3 * ref.nfev  # not a gross loss in work per iteration


def test_quadratic_in_a_few_iterations_and_callback_stops():
    rng = np.random.default_rng(0)
    d = rng.uniform(1, 100, 50)

    def f(x):
        return 0.5 * float(x @ (d * x)), d * x

    r = minimize_lbfgs(f, np.ones(50), history=50, maxiter=500, gtol=1e-10)
    assert np.abs(r.x).max() < 1e-8 and r.nit < 120
    calls = []

    def cb(res):
        calls.append(res.nit)
        if res.nit == 3:
            raise StopIteration

    r = minimize_lbfgs(f, np.ones(50), history=5, maxiter=500, callback=cb)
    assert calls == [1, 2, 3] and r.nit == 3


def test_nonfinite_trial_points_are_backed_off():
    """A loss that is inf beyond x = 2 (an overflow): the search bisects back, never returns it."""

    def f(x):
        if x[0] > 2:
            return np.inf, np.full_like(x, np.nan)
        return float((x[0] - 1.9) ** 2), np.array([2 * (x[0] - 1.9)])

    r = minimize_lbfgs(f, np.array([-50.0]), history=3, maxiter=50, gtol=1e-10)
    assert abs(r.x[0] - 1.9) < 1e-6


def test_deferred_log_keeps_every_iteration_also_when_a_run_fails(tmp_path):
    """The driver formats its progress lines and log.jsonl records in batches: after a normal
    end every accepted iteration is in both, with the validation fields where it validated;
    when an evaluation raises, the iterations accepted before it still reach log.jsonl."""
    import json

    from hpcpot.training.config import parse_config
    from hpcpot.training.loss import N_HEAD
    from hpcpot.training.optimizers import LogWriter, Stats, run_optimizer

    d = np.linspace(1, 50, 20)

    def evaluate(x, want_max=False, fail_at=None):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("an evaluation failed")
        buf = np.empty(N_HEAD + len(x))
        buf[N_HEAD:] = d * x
        buf[0] = 0.5 * float(x @ buf[N_HEAD:])
        buf[1:N_HEAD] = (buf[0], 1.0, buf[0], 3.0)
        return buf

    cfg = parse_config({"optimizer": {"method": "lbfgs", "max_iterations": 12},
                        "convergence": {"energy_rmse": 0.0, "force_rmse": 0.0}, "output": {"validate_every": 4}})  # fmt: skip
    lines: list[str] = []
    calls: list[int] = []

    def show(line, flush=True):  # log.jsonl is written before stdout, which may block on a full pipe
        assert len((tmp_path / "a.jsonl").read_text().splitlines()) > len(lines)
        lines.append(line)

    log = LogWriter(str(tmp_path / "a.jsonl"), show)
    res = run_optimizer(evaluate, np.ones(20), cfg, True, log, validate=lambda x: Stats.from_buffer(evaluate(x)))
    log.close()
    recs = [json.loads(v) for v in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == list(range(1, res.iterations + 1)) and res.iterations == 12
    assert [r["iteration"] for r in recs if "val_loss" in r] == [4, 8, 12]
    assert len(lines) == 12 and lines[3].startswith("iter      4") and "| val E" in lines[3]
    assert recs[-1]["loss"] == pytest.approx(res.stats.loss)

    calls.clear()
    log = LogWriter(str(tmp_path / "b.jsonl"), None)
    with pytest.raises(RuntimeError, match="an evaluation failed"):
        run_optimizer(lambda x, want_max=False: evaluate(x, fail_at=8), np.ones(20), cfg, True, log)
    recs = [json.loads(v) for v in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(recs) >= 5 and [r["iteration"] for r in recs] == list(range(1, len(recs) + 1))


@pytest.mark.parametrize("method", ["lbfgs", "lbfgsb"])
def test_a_stalled_line_search_switches_to_exact_losses_and_goes_on(method):
    """run_optimizer's on_stall: a loss rounded to float32 (as float32 network passes give)
    stops the line search near the minimum; on_stall then switches the evaluation to float64
    once, the method goes on from the last accepted point, and the iterations keep counting."""
    from hpcpot.training.config import parse_config
    from hpcpot.training.loss import N_HEAD
    from hpcpot.training.optimizers import LogWriter, run_optimizer

    d = np.logspace(0, 2, 40)
    state = {"dtype": np.float32, "stalls": []}

    def evaluate(x, want_max=False):
        buf = np.zeros(N_HEAD + len(x))
        r = x - 1.0
        buf[0] = np.asarray(1.0 + 0.5 * float(r @ (d * r)), state["dtype"])  # 1 + ...: float32 resolves 6e-8
        buf[1:N_HEAD] = (1.0, 1.0, 1.0, 1.0)
        buf[N_HEAD:] = d * r
        return buf

    def on_stall(it, message):
        assert message
        state["stalls"].append(it)
        if state["dtype"] == np.float64:
            return False
        state["dtype"] = np.float64
        return True

    cfg = parse_config({"optimizer": {"method": method, "max_iterations": 400, "history": 10},
                        "convergence": {"energy_rmse": 0.0, "force_rmse": 0.0}})  # fmt: skip
    x0 = np.zeros(40)
    res = run_optimizer(evaluate, x0, cfg, True, LogWriter(None, None), on_stall=on_stall)
    assert state["stalls"] and state["stalls"][0] < 400 and len(state["stalls"]) <= 2
    first = state["stalls"][0]
    assert res.iterations > first  # it went on after the switch
    assert res.stats.loss - 1.0 < 1e-10  # below what float32 could resolve
    # without on_stall the same run stops at the first stall, where float32 left it
    state["dtype"] = np.float32
    res32 = run_optimizer(evaluate, x0, cfg, True, LogWriter(None, None))
    assert res32.iterations == first and not res32.converged


def test_the_prefetch_for_the_allreduce_is_registered_covers_the_pairs_and_changes_nothing(monkeypatch):
    """minimize_lbfgs hands its warm-up to ``overlap`` at the start and withdraws it at the
    end; the chunks prefetch the newest pairs, as many as 3/4 of L2 holds, each once, then
    call the kernels on a problem of their own; running them before every evaluation leaves
    the run's bits unchanged."""
    import hpcpot.training.optimizers.lbfgs as lb

    rng = np.random.default_rng(3)
    d = rng.uniform(1, 100, 60)

    def fun(x, chunks=()):
        for c in chunks:
            c()
        return 0.5 * float(x @ (d * x)), d * x

    calls = []
    plain = minimize_lbfgs(fun, np.ones(60), history=5, maxiter=30)
    res = minimize_lbfgs(lambda x: fun(x, calls[0]), np.ones(60), history=5, maxiter=30, overlap=calls.append)
    assert len(calls) == 2 and len(calls[0]) == 5 + 1 and calls[1] == ()
    assert np.array_equal(res.x, plain.x) and res.nit == plain.nit == 30

    S = np.zeros((50, 1000), np.float32)
    ring = np.array([3, 50])
    seen = []
    monkeypatch.setattr(lb, "_prefetch_pairs", lambda S_, Y_, r, a, b: seen.append((a, b)))
    lb._warm_up_chunks(S, S, ring)[0]()  # the sizes come from this machine's L2: any split works
    monkeypatch.setattr(lb, "_l2_bytes", lambda: 80_000)  # 3/4 of it: 7 pairs of 2 x 4000 bytes
    seen.clear()
    for c in lb._warm_up_chunks(S, S, ring, chunks=3):
        c()
    assert seen == [(0, 2), (2, 4), (4, 7)]
