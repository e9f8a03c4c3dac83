"""The network passes of a tanh network in one numba call per element
(:mod:`hpcpot.potential.element_passes`, the default) against the numpy passes per layer and
block (:mod:`hpcpot.potential.network`, ``Batch.element_kernels = False``), in one process.

    python benchmarks/element_passes.py [--rounds 8]

On the reference set (auto descriptors, 2 x 20, float32 passes and derivatives, α = 0.04, as
``python -m hpcpot.bench`` sets it up): a training's loss+gradient of the whole set and of one
rank's shard at 16, 64 and 256 ranks (images / P), the energy-only loss+gradient of the whole
set, and the ASE calculator's energy+forces call on 14 and 224 atoms.  Each round times both
paths back to back (medians of 9 calls for a shard, of 1 for the whole set), alternating which
goes first; the table gives the medians over the rounds and their ratio.  Both paths are
checked to give the same loss and gradient to float32 rounding first.
"""

from __future__ import annotations

import hpcpot._process  # noqa: F401  (before numpy: one BLAS thread, heap thresholds: as a training)

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from hpcpot.bench import _config_text, _median_time, calculator_calls
from hpcpot.parallel import SerialComm
from hpcpot.potential.predict import Batch
from hpcpot.training.config import load_config
from hpcpot.training.trainer import build

DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "o_pt111_emt_3000.traj")


def _problem(images: int, alpha: float = 0.04):
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "c.toml"
        cfg.write_text(_config_text(DATA, images, alpha=alpha))
        s = build(SerialComm(), load_config(cfg), lambda *a: None)
    return s.train, s.x0


def _calculator_calls(prob, x):
    """Energy+forces calls of the ASE calculator on the first image and on a 4x4x1 repeat."""
    from hpcpot.potential.calculator import Calculator
    from hpcpot.potential.fingerprints import shortest_distances
    from hpcpot.potential.modelfile import Model
    from hpcpot.training.config import FingerprintConfig
    from hpcpot.training.descriptors import generated_set

    fpc = FingerprintConfig(preset="auto")
    sf = generated_set(fpc, list(prob.layout.elements), shortest_distances(prob.st, fpc.cutoff))
    gmin = np.full((len(prob.layout.elements), sf.n_max), -1e3)  # wide: no extrapolation warnings
    return calculator_calls(DATA, Calculator(Model(sf, prob.layout, x, gmin, -gmin)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    cases = {}
    whole, xw = _problem(3000)
    bw = np.zeros(whole.buffer_size)
    cases["whole set, loss+gradient with forces"] = (whole, lambda: whole.evaluate(xw, True, bw), 1)
    for P in (16, 64, 256):
        prob, x = _problem(3000 // P)
        buf = np.zeros(prob.buffer_size)
        cases[f"{P}-rank shard ({3000 // P} images)"] = (prob, lambda p=prob, x=x, b=buf: p.evaluate(x, True, b), 9)
    eo, xe = _problem(3000, alpha=0.0)
    be = np.zeros(eo.buffer_size)
    cases["whole set, energy only"] = (eo, lambda: eo.evaluate(xe, True, be), 3)
    for prob, _, _ in cases.values():
        prob.element_kernels = False
    ref = whole.evaluate(xw).copy()
    whole.element_kernels = True
    new = whole.evaluate(xw).copy()
    rel = np.abs(new[5:] - ref[5:]).max() / np.abs(ref[5:]).max()
    print(f"whole set: loss {ref[0]:.9g} (numpy passes) against {new[0]:.9g}, gradient max rel. difference {rel:.1e}")
    assert rel < 2e-6
    calc_calls = _calculator_calls(whole, xw)
    res = {name: {False: [], True: []} for name in [*cases, *(f"ASE calculator, {n} atoms" for n in calc_calls)]}
    for r in range(args.rounds):
        for fused in (False, True) if r % 2 == 0 else (True, False):
            for name, (prob, fn, calls) in cases.items():
                prob.element_kernels = fused
                fn()
                res[name][fused].append(_median_time(fn, calls)[0])
            Batch.element_kernels = fused
            for n, call in calc_calls.items():
                call()
                res[f"ASE calculator, {n} atoms"][fused].append(_median_time(call, 15)[0])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    Batch.element_kernels = True
    print(f"medians of {args.rounds} interleaved rounds (µs):")
    print(f"{'':44s} {'numpy passes':>13s} {'element kernels':>16s} {'ratio':>6s}")
    for name, t in res.items():
        a, b = statistics.median(t[False]) * 1e6, statistics.median(t[True]) * 1e6
        print(f"{name:44s} {a:13.0f} {b:16.0f} {b / a:6.2f}")
    w = {f: statistics.median(res["whole set, loss+gradient with forces"][f]) * 1e6 for f in (False, True)}
    for P in (16, 64, 256):
        s = {f: statistics.median(res[f"{P}-rank shard ({3000 // P} images)"][f]) * 1e6 for f in (False, True)}
        print(f"{P}-rank shard beyond 1/{P} of the whole set: numpy passes {s[False] - w[False] / P:+.0f} µs, "
              f"element kernels {s[True] - w[True] / P:+.0f} µs")  # fmt: skip


if __name__ == "__main__":
    main()
