"""Benchmark on the reference set: ``python -m hpcpot.bench [--images N] [--ranks 1,2]``.

Reports, in one run (so ratios are comparable): numba compile time (cold/warm cache),
fingerprint time with and without derivatives, one loss+gradient evaluation energy-only and
with forces (median of --repeats) for each derivative storage mode with its memory, peak
RSS; then, under mpiexec, per-evaluation time at each rank count with its breakdown
(compute, Bcast, Allreduce, rank-0 optimiser), annealing step cost, peak RSS per rank and
start-up time, and the predicted parallel efficiency at 16, 64 and 256 ranks.
"""

from __future__ import annotations

from . import _process  # noqa: F401  (before numpy: one BLAS thread per rank, heap thresholds)

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "o_pt111_emt_3000.traj"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _process_age() -> float:
    """Seconds since this process was created (start-up time includes the interpreter)."""
    with open("/proc/self/stat") as fh:
        start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), ts


def _page_faults(fn, repeats: int = 3) -> float:
    """Minor page faults per call of fn (after one call): memory the allocator handed back
    to the OS and takes again every evaluation (see hpcpot._process)."""
    fn()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / repeats


def _config_text(data: str, images: int, preset: str = "auto", alpha: float = 0.04) -> str:
    return f"""
[data]
train = ["{data}"]
index = ":{images}"
validation_fraction = 0.0
[fingerprints]
preset = "{preset}"
[loss]
force_coefficient = {alpha}
[output]
dir = "out"
"""


def compile_times() -> dict:
    # what a training with the default config compiles (its network passes' precision)
    code = ("import time;t=time.perf_counter();from hpcpot.training.trainer import _exercise_kernels;"
            "from hpcpot.training.config import LossConfig;_exercise_kernels(LossConfig().precision);"
            "print(time.perf_counter()-t)")  # fmt: skip
    out = {}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d)
        for label in ("cold_cache_s", "warm_cache_s"):
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            out[label] = float(r.stdout.strip().splitlines()[-1])
    return out


def single_process(data: str, images: int, repeats: int, log, preset: str = "auto") -> dict:
    from .potential.fingerprints import compute_fingerprints, derivative_value_count, pair_kind_counts, shortest_distances
    from .potential.network import Layout, initial_parameters
    from .training.config import FingerprintConfig
    from .training.data import read_structures
    from .training.descriptors import generated_set, symmetry_functions
    from .training.loss import ShardProblem
    from .training.trainer import _exercise_kernels

    _exercise_kernels()  # float64 passes, and below float32's
    _exercise_kernels("float32")
    res: dict = {"images": images}
    t = time.perf_counter()
    st, _ = read_structures([data], need_forces=True, index=f":{images}")
    res["read_validate_s"] = time.perf_counter() - t
    res["atoms"] = int(len(st.species))
    res["force_values"] = int(3 * len(st.species))
    fpc = FingerprintConfig(preset=preset)
    if preset == "auto":  # what a training whose config names no fingerprint keys gets
        sf = generated_set(fpc, list(st.elements), shortest_distances(st, fpc.cutoff))
    else:
        sf = symmetry_functions(fpc, list(st.elements))
    res["preset"] = preset
    res["functions_per_element"] = [int(n) for n in sf.n_functions]
    res["fingerprint_s"], _ = _median_time(lambda: compute_fingerprints(st, sf, False), 1)
    # the exact number of derivative values, as a training passes it: one allocation, which
    # numpy asks the kernel to back with 2 MiB pages (grown arrays get 4 KiB pages, and the
    # force kernel streaming them took ~9% longer)
    nv = derivative_value_count(pair_kind_counts(st, sf.cutoff), sf)
    t = time.perf_counter()
    G, b = compute_fingerprints(st, sf, True, n_values=nv)
    res["fingerprint_derivative_s"] = time.perf_counter() - t
    res["derivative_bytes"] = int(b.nbytes)
    res["derivative_pairs"] = int(len(b.centre))
    t = time.perf_counter()
    _, b32 = compute_fingerprints(st, sf, True, np.float32, n_values=nv)  # what a training stores (the default)
    res["fingerprint_derivative_float32_s"] = time.perf_counter() - t
    log(f"fingerprints (preset {preset!r}, {', '.join(map(str, res['functions_per_element']))} functions per element): "
        f"{res['fingerprint_s']:.2f} s; with derivatives {res['fingerprint_derivative_float32_s']:.2f} s stored as "
        f"float32 ({b32.nbytes / 2**20:.1f} MiB, as a training does), {res['fingerprint_derivative_s']:.2f} s as float64 "
        f"({b.nbytes / 2**20:.1f} MiB); {len(b.centre) / len(st.species):.1f} pairs per atom")  # fmt: skip
    ne = len(st.elements)
    gmin = np.stack([G[st.species == e].min(0) for e in range(ne)])
    gmax = np.stack([G[st.species == e].max(0) for e in range(ne)])
    lay = Layout(st.elements, tuple(int(n) for n in sf.n_functions), (20, 20), "tanh")
    p = initial_parameters(lay, np.ones(ne), np.zeros(ne), 0)
    tables = sf.block_tables()
    eo = ShardProblem(st, G, None, lay, gmin, gmax, tables, 0.0)
    res["eval_energy_only_s"], ts = _median_time(lambda: eo.evaluate(p), repeats)
    res["loss_only_energy_s"], _ = _median_time(lambda: eo.evaluate(p, with_grad=False), repeats)
    res["page_faults_energy_only"] = _page_faults(lambda: eo.evaluate(p))
    log(f"loss+gradient, energy only: {1000 * res['eval_energy_only_s']:.1f} ms (median of {repeats}; "
        f"{res['page_faults_energy_only']:.0f} page faults per evaluation)")
    modes = {}
    for mode in ("float64", "float32", "recompute"):
        if mode == "float64":
            blocks = b
        elif mode == "float32":
            blocks, b32 = b32, None
        else:
            blocks = None
        prob = ShardProblem(st, G, blocks, lay, gmin, gmax, tables, 0.04, recompute=sf if blocks is None else None)
        reps = repeats if mode != "recompute" else max(3, repeats // 3)
        med, _ = _median_time(lambda prob=prob: prob.evaluate(p), reps)
        lmed, _ = _median_time(lambda prob=prob: prob.evaluate(p, with_grad=False), reps)
        faults = _page_faults(lambda prob=prob: prob.evaluate(p), 1 if mode == "recompute" else 3)
        # the force term's gradient alone (energy residuals set to zero): where float32 storage shows
        energy = prob.energy
        prob.energy = prob.predict_energies(p)
        g = prob.evaluate(p)[5:].copy()
        prob.energy = energy
        modes[mode] = {"eval_s": med, "loss_only_s": lmed, "bytes": int(blocks.nbytes) if blocks is not None else 0, "grad": g,
                       "page_faults": faults}  # fmt: skip
        del prob, blocks
    g64 = modes["float64"]["grad"]
    for mode, m in modes.items():
        m["grad_rel_err_vs_float64"] = float(np.abs(m.pop("grad") - g64).max() / np.abs(g64).max())
        log(f"loss+gradient with forces, {mode:9s}: {1000 * m['eval_s']:8.1f} ms (median), "
            f"{m['bytes'] / 2**20:7.1f} MiB derivatives, force-term gradient rel. difference vs float64 {m['grad_rel_err_vs_float64']:.1e}, "
            f"{m['page_faults']:.0f} page faults per evaluation")  # fmt: skip
    res["modes"] = modes
    res["eval_forces_s"] = modes["float64"]["eval_s"]
    # [loss] precision = "float32": the network passes in float32 (float32 derivatives)
    eo32 = ShardProblem(st, G, None, lay, gmin, gmax, tables, 0.0, dtype=np.float32)
    res["eval_energy_only_float32_passes_s"], _ = _median_time(lambda: eo32.evaluate(p), repeats)
    _, b32 = compute_fingerprints(st, sf, True, np.float32, n_values=nv)
    pr32 = ShardProblem(st, G, b32, lay, gmin, gmax, tables, 0.04, dtype=np.float32)
    res["eval_forces_float32_passes_s"], _ = _median_time(lambda pr32=pr32: pr32.evaluate(p), repeats)
    energy = pr32.energy
    pr32.energy = pr32.predict_energies(p)
    rel = float(np.abs(pr32.evaluate(p)[5:] - g64).max() / np.abs(g64).max())
    pr32.energy = energy
    del pr32, b32
    log(f"network passes in float32 ([loss] precision): loss+gradient energy only {1000 * res['eval_energy_only_float32_passes_s']:.1f} ms, "
        f"with forces (float32 derivatives) {1000 * res['eval_forces_float32_passes_s']:.1f} ms, "
        f"force-term gradient rel. difference vs float64 {rel:.1e}")  # fmt: skip
    res["calculator_s"] = _calculator_times(data, sf, lay, p, gmin, gmax, repeats)
    log("ASE calculator, one energy+forces call: " + ", ".join(
        f"{n} atoms {1000 * t:.1f} ms" for n, t in res["calculator_s"].items()) + f" (median of {5 * repeats})")  # fmt: skip
    res["peak_rss_mib"] = _rss_mib()
    log(f"peak RSS (this process, all of the above): {res['peak_rss_mib']:.0f} MiB")
    return res


def _calculator_times(data: str, sf, lay, p, gmin, gmax, repeats: int) -> dict:
    """Seconds per ASE energy+forces call (what an MD step costs): the first reference image
    and a 4x4x1 repeat of it, the positions nudged before each call so nothing is cached."""
    from .potential.calculator import Calculator
    from .potential.modelfile import Model

    calls = calculator_calls(data, Calculator(Model(sf, lay, p, gmin, gmax)))
    return {n: _median_time(call, 5 * repeats)[0] for n, call in calls.items()}


def calculator_calls(data: str, calc) -> dict:
    """{atoms: a call of ``calc``'s energy+forces} on the first image of ``data`` and on a
    4x4x1 repeat of it, each call nudging a position first so that nothing is cached."""
    from ase.io import read

    atoms = read(data, 0)
    atoms.set_constraint()
    calls = {}
    for a in (atoms, atoms.repeat((4, 4, 1))):
        a.calc = calc

        def call(a=a):
            a.positions[0, 0] += 1e-6
            a.get_forces()

        calls[len(a)] = call
    return calls


def worker(args) -> int:
    """Run under mpiexec: set up, then time evaluations; rank 0 prints one JSON line."""
    from .parallel import CMD_LOSS, Evaluator, world
    from .training.config import load_config
    from .training.loss import N_HEAD
    from .training.trainer import build

    comm = world()
    with tempfile.TemporaryDirectory() as d:
        cfgp = Path(d) / "c.toml"
        if comm.rank == 0:
            cfgp.write_text(_config_text(args.data, args.images, args.preset))
        comm.barrier()
        cfg = load_config(cfgp) if comm.rank == 0 else None
        cfg = comm.bcast(cfg)
        setup = build(comm, cfg, lambda *a: None)
    startup = float(comm.allreduce_max(np.array([_process_age()]))[0])
    ev = Evaluator(comm, setup.train, None, N_HEAD)
    rss = comm.allgather(_rss_mib())
    if comm.rank != 0:
        ev.serve()
        comm.allgather(ev.timing["compute"] / max(ev.timing["n"], 1))
        if not args.startup_only:  # the same collectives as rank 0, or the job hangs
            _collectives(comm, ev)
            _replicated(comm, ev, setup.x0, args.repeats)
        return 0
    out: dict = {"ranks": comm.size, "startup_s": startup, "rss_mib": rss, "passes": str(setup.train.dtype)}
    if not args.startup_only:
        p = setup.x0
        ev.evaluate(p)
        for k in ev.timing:
            ev.timing[k] = 0
        out["eval_s"], _ = _median_time(lambda: ev.evaluate(p), args.repeats)
        n = ev.timing["n"]
        out["bcast_s"] = ev.timing["bcast"] / n
        out["allreduce_s"] = ev.timing["allreduce"] / n
        out["compute_rank0_s"] = ev.timing["compute"] / n
        out["anneal_step_s"], _ = _median_time(lambda: ev.evaluate(p, CMD_LOSS), args.repeats)
        out.update(_optimizer_times(ev, p))
        if comm.size == 1:
            out["optimizer_at_shard"] = _optimizer_at_shard_sizes(args, setup.train, p)
    ev.stop()
    comps = comm.allgather(ev.timing["compute"] / max(ev.timing["n"], 1))
    if not args.startup_only:
        out["compute_per_rank_s"] = comps
        out["collectives_s"] = _collectives(comm, ev)
        out["replicated_eval_s"], out["allreduce_only_s"] = _replicated(comm, ev, setup.x0, args.repeats)
    print("BENCH-JSON " + json.dumps(out), flush=True)
    return 0


def _optimizer_times(ev, p) -> dict:
    """Seconds per evaluation of scipy's L-BFGS-B and hpcpot's L-BFGS (see _optimizer_time),
    the latter also with its pairs prefetched as an evaluation's Allreduce does it, and the
    prefetch's own seconds."""
    pre_gap, pre = _optimizer_time(ev, p, "lbfgs", prefetch=True)
    return {"optimizer_per_eval_s": _optimizer_time(ev, p, "lbfgsb")[0],
            "optimizer_per_eval_s_lbfgs": _optimizer_time(ev, p, "lbfgs")[0],
            "optimizer_per_eval_s_lbfgs_prefetched": pre_gap, "lbfgs_prefetch_s": pre}  # fmt: skip


def _optimizer_at_shard_sizes(args, whole, x_whole, ranks=(16, 64, 256)) -> dict:
    """The optimiser's time per evaluation when the evaluations between its steps are those
    of one rank's shard at P ranks (images / P): a small shard leaves more of the optimiser's
    state and of the interpreter in cache than the whole set does on one rank."""
    from .parallel import Evaluator, SerialComm
    from .training.config import load_config
    from .training.loss import N_HEAD
    from .training.trainer import build

    res = {}
    for P in ranks:
        with tempfile.TemporaryDirectory() as d:
            cfgp = Path(d) / "c.toml"
            cfgp.write_text(_config_text(args.data, max(1, args.images // P), args.preset))
            setup = build(SerialComm(), load_config(cfgp), lambda *a: None)
        ev = Evaluator(SerialComm(), setup.train, None, N_HEAD)
        res[str(P)] = _optimizer_times(ev, setup.x0)
        # the shard's own loss+gradient against the whole set's (``whole``, what
        # compute_rank0_s measured), interleaved so that the machine's speed cancels: a shard
        # of a few images costs more than 1/P of the set, by what every evaluation pays
        # whatever its size (Python and numpy calls per element, layer and block)
        # And the same evaluation through the evaluation service, as a training calls it: its
        # own Python (the replicated mode's parameter hashes and control slots, the rank-0
        # mode's command copy) runs after the evaluation has left its code out of the caches
        prob, x0, buf = setup.train, setup.x0, np.zeros(setup.train.buffer_size)
        buf_w = np.zeros(whole.buffer_size)
        shard_t, whole_t, rep_t, r0_t = [], [], [], []
        for _ in range(5):
            whole_t.append(_median_time(partial(whole.evaluate, x_whole, True, buf_w), 1)[0])
            shard_t.append(_median_time(partial(prob.evaluate, x0, True, buf), 9)[0])
            rep_t.append(_service_time(prob, partial(ev.everywhere, x0), 9))
            r0_t.append(_service_time(prob, partial(ev.evaluate, x0), 9))
        res[str(P)]["shard_eval_s"] = float(np.median(shard_t))
        res[str(P)]["whole_eval_s"] = float(np.median(whole_t))
        res[str(P)]["service_s"] = {"replicated": float(np.median(rep_t)), "rank0": float(np.median(r0_t))}
        del setup, ev, prob
    return res


def _service_time(prob, call, repeats: int) -> float:
    """Median seconds of ``call()`` (an evaluation through the evaluation service) beyond the
    ``prob.evaluate`` inside it, paired call by call so that the machine's speed cancels."""
    inner: list[float] = []
    plain = prob.evaluate

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = plain(*args, **kwargs)
        inner.append(time.perf_counter() - t)
        return out

    prob.evaluate = timed
    try:
        outer = []
        for _ in range(repeats):
            t = time.perf_counter()
            call()
            outer.append(time.perf_counter() - t)
    finally:
        del prob.evaluate  # the class's method again
    return float(np.median(np.array(outer) - np.array(inner)))


def _optimizer_time(ev, p, method: str, history: int = 50, measured: int = 30, prefetch: bool = False) -> tuple[float, float]:
    """Seconds per evaluation that the optimiser and its driver (log line, log.jsonl record,
    convergence test) spend between evaluations, as in a training: over ``measured``
    iterations once the history is full, with the real evaluations in between (so the
    optimiser's state is read from wherever an evaluation has left it); and the seconds of
    the prefetch.  ``prefetch``: hpcpot's L-BFGS prefetches its pairs right after each
    evaluation (timed apart from the gap), where an evaluation on several ranks runs it
    while its Allreduce is in flight (:meth:`hpcpot.parallel.Evaluator.set_overlap`)."""
    from .training.config import parse_config
    from .training.optimizers import LogWriter, run_optimizer

    cfg = parse_config({"optimizer": {"method": method, "history": history, "max_iterations": history + measured},
                        "convergence": {"energy_rmse": 0.0, "force_rmse": 0.0}})  # fmt: skip
    gaps: list[tuple[int, float, float]] = []  # (iteration, seconds since the previous evaluation returned, prefetch)
    state = {"t": None, "it": 0, "pre": 0.0}
    chunks: list = [()]

    def evaluate(x, want_max=False):
        t = time.perf_counter()
        if state["t"] is not None:
            gaps.append((state["it"], t - state["t"], state["pre"]))
        buf = ev.evaluate(x)
        t1 = time.perf_counter()
        for c in chunks[-1]:
            c()
        state["t"] = time.perf_counter()
        state["pre"] = state["t"] - t1
        return buf

    def on_iteration(it, x, elapsed):
        state["it"] = it

    with tempfile.TemporaryDirectory() as d:
        log = LogWriter(os.path.join(d, "log.jsonl"), lambda *a, **k: None)
        run_optimizer(evaluate, p, cfg, True, log, on_iteration=on_iteration, overlap=chunks.append if prefetch else None)
        log.close()
    steady = [(dt, pre) for it, dt, pre in gaps if it >= history]
    if not steady:
        return math.nan, math.nan
    return float(np.mean([dt for dt, _ in steady])), float(np.mean([pre for _, pre in steady]))


def _replicated(comm, ev, p, repeats: int) -> tuple[float, float]:
    """Every rank: (median loss+gradient as [parallel] optimizer = "replicated" evaluates,
    one Allreduce of the buffer with its control slots and no compute between)."""
    ev.everywhere(p)
    med, _ = _median_time(lambda: ev.everywhere(p), repeats)
    n = 300
    comm.barrier()
    t = time.perf_counter()
    for _ in range(n):
        comm.allreduce_sum(ev.rbuf, ())  # nonblocking, as evaluations reduce
    return med, (time.perf_counter() - t) / n


def _collectives(comm, ev, n: int = 300) -> float:
    """Time of one Bcast(params) + Allreduce(buffer) with no compute between (no waiting
    for slower ranks): the communication cost of an evaluation."""
    comm.barrier()
    t = time.perf_counter()
    for _ in range(n):
        comm.Bcast(ev.cmd)
        comm.allreduce_sum(ev.buf, ())
    return (time.perf_counter() - t) / n


def _step_cost(compute: float, P: int, opt: float, prefetch: float, stage: float, allreduce_stage: float) -> float:
    """Seconds per evaluation at P ranks: the slowest rank's compute, log2(P) stages of the
    collectives, the optimiser's step, and whatever of its prefetch the Allreduce's stages
    do not hide."""
    return compute + stage * math.log2(P) + opt + max(0.0, prefetch - allreduce_stage * math.log2(P))


def predict(res1: dict, res2: dict | None, costs: np.ndarray, log) -> dict:
    """Predicted efficiency from measured figures (a latency model of the collectives)."""
    from .training.shard import balanced_assignment, imbalance

    t1 = res1["compute_rank0_s"]
    # one stage of a tree collective: the measured 2-rank Bcast + Allreduce (rank 0 drives) or
    # Allreduce alone (replicated optimiser), shared memory here; and on InfiniBand-class
    # networks ~10 µs per collective of ~24 kB
    here = {"rank0": res2["collectives_s"], "replicated": res2["allreduce_only_s"]} if res2 is not None else None
    ib = {"rank0": 2 * 10e-6, "replicated": 10e-6}
    out = {}
    for P, shard in res1.get("optimizer_at_shard", {}).items():
        if "shard_eval_s" in shard:
            part = shard["whole_eval_s"] / int(P)
            log(f"a {P}-rank shard's loss+gradient: {1e6 * shard['shard_eval_s']:.0f} µs against 1/{P} of the whole "
                f"set's {1e6 * part:.0f} µs (interleaved, medians): a fixed cost of "
                f"{1e6 * max(0.0, shard['shard_eval_s'] - part):.0f} µs per evaluation")  # fmt: skip
        if "service_s" in shard:
            sv = shard["service_s"]
            log(f"  the evaluation service around it: {1e6 * sv['replicated']:.0f} µs with a copy of the optimiser on "
                f"every rank (parameter hashes, control slots), {1e6 * sv['rank0']:.0f} µs with rank 0 driving")  # fmt: skip
    methods = (("scipy L-BFGS-B", "optimizer_per_eval_s"), ("hpcpot L-BFGS, no prefetch", "optimizer_per_eval_s_lbfgs"),
               ("hpcpot L-BFGS, its pairs prefetched while the Allreduce is in flight (a training's)",
                "optimizer_per_eval_s_lbfgs_prefetched"))  # fmt: skip
    for name, key in methods:
        opt1 = res1.get(key)
        if opt1 is None:
            continue
        prefetched = key.endswith("_prefetched")
        lines = [f"optimiser: {name}, {1e6 * opt1:.0f} µs per evaluation between whole-set evaluations; efficiency "
                 "with rank 0 driving (Bcast + Allreduce) / with a copy on every rank (Allreduce only)"
                 + ("; the prefetch's time beyond the Allreduce's log2(P) stages is added" if prefetched else ""),
                 f"{'ranks':>6} {'set':>6} {'imbalance':>9} {'optimiser':>10} {'measured stage':>21} "
                 f"{'10 µs/collective/stage':>24}"]  # fmt: skip
        for scale in (1, 100):
            c = np.tile(costs, scale)
            for P in (16, 64, 256):
                imb = imbalance(balanced_assignment(c, P), c, P) if len(c) >= P else 1.0
                ideal = t1 * scale / P
                at_shard = res1.get("optimizer_at_shard", {}).get(str(P), {})
                # a rank's compute: its shard measured (1x), or 1/P of 100x the set plus what a
                # shard costs beyond 1/P of the set (a fixed cost per evaluation); 1/P of the
                # set when the shard was not measured (the model before round 18)
                fixed = (max(0.0, at_shard["shard_eval_s"] - at_shard["whole_eval_s"] / P)
                         if "shard_eval_s" in at_shard else 0.0)  # fmt: skip
                tp = (ideal + fixed) * imb
                # with a shard of 1/P of the reference set: the optimiser's time measured between
                # such shard evaluations; with 100x the set a shard outgrows the caches as on one rank
                opt_src = at_shard if scale == 1 else {}
                opt = opt_src.get(key, opt1)
                pre = opt_src.get("lbfgs_prefetch_s", res1.get("lbfgs_prefetch_s", 0.0)) if prefetched else 0.0
                rec = {"imbalance": imb, "optimizer_s": opt, "prefetch_s": pre, "fixed_s": fixed}
                for mode in ("rank0", "replicated"):
                    # the evaluation service's own time per evaluation, whatever the set's size
                    tpm = tp + at_shard.get("service_s", {}).get(mode, 0.0)
                    rec[f"eff_this_machine_{mode}"] = (
                        ideal / _step_cost(tpm, P, opt, pre, here[mode], here["replicated"]) if here is not None
                        else math.nan)  # fmt: skip
                    rec[f"eff_ib_{mode}"] = ideal / _step_cost(tpm, P, opt, pre, ib[mode], ib["replicated"])
                out[f"{key}_{scale}x_{P}"] = rec
                lines.append(
                    f"{P:6d} {str(scale) + 'x':>6} {imb:9.3f} {1e6 * opt:7.0f} µs"
                    + (f" + {1e6 * pre:3.0f} µs prefetch" if prefetched else "") + " "
                    f"{100 * rec['eff_this_machine_rank0']:9.1f}% / {100 * rec['eff_this_machine_replicated']:5.1f}% "
                    f"{100 * rec['eff_ib_rank0']:12.1f}% / {100 * rec['eff_ib_replicated']:5.1f}%")  # fmt: skip
        for line in lines:
            log(line)
    return out


def _find_mpiexec() -> str | None:
    """The mpiexec beside this python (the venv's MPICH), else one on PATH, else None."""
    import shutil

    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcpot.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="reference trajectory (default: ../shared/data/o_pt111_emt_3000.traj)")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=7, help="timed repetitions per figure (medians are reported)")
    ap.add_argument("--ranks", default="1,2", help="rank counts for the MPI part ('' to skip)")
    ap.add_argument("--startup-ranks", default="1,2,4", help="rank counts for the start-up measurement")
    ap.add_argument("--preset", default="auto", choices=("auto", "default", "amp"),
                    help="fingerprint set (default: auto, what a training gets when its config names none)")
    ap.add_argument("--json", default="", help="also write all figures to this JSON file")
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--startup-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if not Path(args.data).exists():
        print(f"error: {args.data} not found (pass --data)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    results: dict = {"cpu_count": os.cpu_count(), "images": args.images}
    log(f"hpcpot benchmark: {args.images} images of {args.data}, {os.cpu_count()} CPUs, medians of {args.repeats}")
    results["compile"] = compile_times()
    log(f"numba kernels: {results['compile']['cold_cache_s']:.1f} s to compile (empty cache), "
        f"{results['compile']['warm_cache_s']:.1f} s to load from cache")  # fmt: skip
    if not args.skip_single:
        results["single"] = single_process(args.data, args.images, args.repeats, log, args.preset)
    mpiexec = _find_mpiexec()
    mpi = {}
    ranks = [int(r) for r in args.ranks.split(",") if r]
    if mpiexec is None and (ranks or args.startup_ranks):
        log("no mpiexec beside this python or on PATH (pip install mpich, or load your site's MPI): "
            "skipping the MPI part of the benchmark")  # fmt: skip
        ranks, args.startup_ranks = [], ""
    for n, startup_only in [(r, False) for r in ranks] + [(r, True) for r in (int(x) for x in args.startup_ranks.split(",") if x)]:
        cmd = [str(mpiexec), "-n", str(n), sys.executable, "-m", "hpcpot.bench", "--worker", "--data", args.data,
               "--images", str(args.images), "--repeats", str(args.repeats), "--preset", args.preset] + (["--startup-only"] if startup_only else [])  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("BENCH-JSON ")]
        if r.returncode != 0 or not line:
            log(f"mpiexec -n {n} failed:\n{r.stderr[-2000:]}")
            continue
        d = json.loads(line[0][len("BENCH-JSON ") :])
        key = f"startup_{n}" if startup_only else f"eval_{n}"
        mpi[key] = d
        if startup_only:
            log(f"start-up at {n} rank(s) (interpreter + imports + kernels + data + fingerprints): {d['startup_s']:.1f} s"
                + (" (oversubscribed)" if n > (os.cpu_count() or 1) else ""))  # fmt: skip
        else:
            log(f"{n} rank(s), a training's defaults ({d.get('passes', '?')} network passes): "
                f"loss+gradient {1000 * d['eval_s']:.1f} ms (compute per rank "
                f"{', '.join(f'{1000 * c:.1f}' for c in d['compute_per_rank_s'])} ms; rank 0 waits in "
                f"Bcast {1e6 * d['bcast_s']:.0f} µs, Allreduce {1e6 * d['allreduce_s']:.0f} µs; bare Bcast+Allreduce "
                f"{1e6 * d['collectives_s']:.0f} µs; with a copy of the optimiser on every rank: loss+gradient "
                f"{1000 * d['replicated_eval_s']:.1f} ms, bare Allreduce {1e6 * d['allreduce_only_s']:.0f} µs; "
                f"optimiser per evaluation: scipy L-BFGS-B {1e3 * d['optimizer_per_eval_s']:.2f} ms, hpcpot L-BFGS (the default) "
                f"{1e3 * d.get('optimizer_per_eval_s_lbfgs', math.nan):.2f} ms, or "
                f"{1e3 * d.get('optimizer_per_eval_s_lbfgs_prefetched', math.nan):.2f} ms after its warm-up of "
                f"{1e6 * d.get('lbfgs_prefetch_s', math.nan):.0f} µs, which a training on several ranks runs while "
                f"the Allreduce is in flight), anneal step {1000 * d['anneal_step_s']:.1f} ms, "
                f"peak RSS per rank {', '.join(f'{x:.0f}' for x in d['rss_mib'])} MiB")  # fmt: skip
    results["mpi"] = mpi
    if "eval_1" in mpi and "eval_2" in mpi:
        e1, e2 = mpi["eval_1"]["eval_s"], mpi["eval_2"]["eval_s"]
        results["speedup_2"] = e1 / e2
        log(f"strong scaling 1 -> 2 ranks: speed-up {e1 / e2:.2f}, parallel efficiency {100 * e1 / e2 / 2:.0f}%")
        from .training.data import read_structures
        from .training.shard import pair_cost

        st, _ = read_structures([args.data], need_forces=False, index=f":{args.images}")
        costs = pair_cost(st, 6.5)
        log("predicted efficiency of one loss+gradient evaluation ((compute/P + fixed cost per evaluation) x imbalance "
            "+ the evaluation service's own time + log2(P) collective stages + optimizer):")  # fmt: skip
        results["prediction"] = predict(mpi["eval_1"], mpi["eval_2"], costs, log)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
