"""Where the force kernel's time goes: nanoseconds per stored derivative pair with the
derivatives in cache against streamed from memory, and one core's streaming bandwidth.

    python benchmarks/force_kernel.py [--data ../shared/data/o_pt111_emt_3000.traj] [--preset auto|default]

The problem is a training's (the auto symmetry-function set unless ``--preset`` says
otherwise, float32 derivatives and network passes, α = 0.3).  "In cache": the kernel run over the first K images (a few MiB of
derivatives) many times over; "streamed": over all of them once per call.  The two passes
over an image cost the in-cache figure when the second pass has prefetched the next
image in time; what exceeds it is waiting on memory.  The bandwidth line (numpy copy of
256 MiB, read + write) gives the floor: derivative bytes / bandwidth.  Medians of 7 per
figure; ratios are what to read, the machine's speed cancels.
"""

from __future__ import annotations

import hpcpot._process  # noqa: F401  (before numpy: one BLAS thread, heap thresholds: as a training)

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from hpcpot.potential.fingerprints import compute_fingerprints, shortest_distances
from hpcpot.potential.network import Layout, initial_parameters
from hpcpot.potential.predict import _force_kernel
from hpcpot.training.config import FingerprintConfig
from hpcpot.training.data import read_structures
from hpcpot.training.descriptors import generated_set, symmetry_functions
from hpcpot.training.loss import ShardProblem

ROOT = Path(__file__).resolve().parents[1]


def _median(fn, repeats: int = 7) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def kernel_problem(data: str, preset: str) -> tuple[ShardProblem, object]:
    """A training's shard problem on ``data`` (float32 derivatives and passes, α = 0.3,
    2 x 20 tanh) with the input gradients an evaluation leaves for the force kernel; and the
    symmetry functions."""
    st, _ = read_structures([data], need_forces=True)
    fpc = FingerprintConfig(preset=preset)
    if preset == "auto":
        sf = generated_set(fpc, list(st.elements), shortest_distances(st, fpc.cutoff))
    else:
        sf = symmetry_functions(fpc, list(st.elements))
    G, b = compute_fingerprints(st, sf, True, np.float32)
    ne = len(st.elements)
    gmin = np.stack([G[st.species == e].min(0) for e in range(ne)])
    gmax = np.stack([G[st.species == e].max(0) for e in range(ne)])
    lay = Layout(st.elements, tuple(int(n) for n in sf.n_functions), (20, 20), "tanh")
    p = initial_parameters(lay, np.ones(ne), np.zeros(ne), 0)
    pr = ShardProblem(st, G, b, lay, gmin, gmax, sf.block_tables(), 0.3, dtype=np.float32)
    for e in range(ne):  # input gradients, as an evaluation leaves them for the kernel
        pr._forward(p, e, True, fill_g=True)
    return pr, sf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "o_pt111_emt_3000.traj"))
    ap.add_argument("--preset", default="auto", choices=("auto", "default", "amp"))
    args = ap.parse_args()
    pr, sf = kernel_problem(args.data, args.preset)
    b = pr.blocks
    sq, mx = np.empty(pr.n_images), np.empty(pr.n_images)
    # v apart from g (a training writes v over g): repeated calls must not feed v back in as
    # g, whose values would then shrink into float32 subnormals, which are slow
    v = np.empty_like(pr.g)

    def run(k: int) -> None:  # the first k images
        _force_kernel(b.image_ptr[: k + 1], pr.atom_ptr, b.centre, b.partner, b.kind, b.ptr, b.values, pr.species,
                      pr.row, pr.sub_idx, pr.sub_len, pr.g, pr.forces, pr.wF, pr.Fhat, v, sq, mx)  # fmt: skip

    n = pr.n_images
    print(f"{args.data}: {n} images, {len(b.centre)} derivative pairs, {b.nbytes / 2**20:.1f} MiB (float32), "
          f"{sf.n_functions.tolist()} functions per element (preset {args.preset!r}), values per pair and "
          f"component {sorted(set(pr.sub_len[:, :-1].ravel().tolist()))}")  # fmt: skip
    for k in (20, 100, n):
        pairs = int(b.image_ptr[k] - b.image_ptr[0])
        reps = max(1, n // k)
        t = _median(lambda k=k, reps=reps: [run(k) for _ in range(reps)]) / reps
        mib = b.nbytes * pairs / len(b.centre) / 2**20
        print(f"  first {k:5d} images ({mib:6.1f} MiB): {1e9 * t / pairs:5.1f} ns per pair, {1e3 * t:7.2f} ms per call")
    a = np.ones(32 << 20)
    c = np.empty_like(a)
    t = _median(lambda: np.copyto(c, a))
    bw = 2 * a.nbytes / t
    print(f"  one core's streaming bandwidth (numpy copy of 256 MiB, read + write): {bw / 1e9:.1f} GB/s; "
          f"reading the derivatives once at that rate: {1e3 * b.nbytes / bw:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
