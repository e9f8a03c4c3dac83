"""A training run from a validated config: data → fingerprints → scaling → optimiser → model.

Works on any communicator from :mod:`hpcpot.parallel` (a serial run is one rank).  Only
rank 0 prints (progress, one line per iteration) and writes files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from .. import __version__
from ..errors import DataError
from ..files import atomic_write_bytes
from ..parallel import (
    CMD_DONE,
    CMD_EXTRA,
    CMD_GRAD,
    CMD_JOIN,
    CMD_LOSS,
    CMD_VALID,
    Evaluator,
    GlobalError,
    ReplicaMismatch,
    SerialComm,
    SignalFlag,
    why_not_replicated,
)
from ..potential.fingerprints import (
    CHUNK_NEIGHBOURS_PER_ATOM,
    CHUNK_PAIRS,
    compute_fingerprints,
    derivative_value_count,
    neighbour_statistics,
    pair_kind_counts,
)
from ..potential.modelfile import Model
from ..potential.network import Layout, initial_parameters
from ..potential.structures import Structures, concat_structures, structure_arrays
from ..potential.symmetry import SymmetryFunctions
from . import checkpoint as ckpt
from .compiler_pages import release_compiler_pages
from .config import Config, FingerprintConfig
from .data import ImageSet
from .descriptors import describe, generated_set, symmetry_functions
from .filters import FilterResult, GlobalDataError, apply_filters, composition
from .filters import report as filter_report
from .filters import write_list as write_filtered
from .jacobian import ROWS_PER_UPDATE, NormalEquations
from .loss import N_HEAD, ShardProblem
from .optimizers import Best, Interrupted, LogWriter, NonFiniteLoss, Stats, run_optimizer
from .screening import screen
from .shard import read_shard, split_global


def make_printer(comm: SerialComm):
    """print() on rank 0 only, flushed line by line (no buffering surprises under srun);
    ``flush=False`` for the iteration lines, which :class:`LogWriter` flushes in batches."""

    def p(msg: str = "", flush: bool = True) -> None:
        if comm.rank == 0:
            print(msg, flush=flush)

    return p


@dataclass
class Setup:
    sf: SymmetryFunctions
    layout: Layout
    train: ShardProblem
    valid: ShardProblem | None
    template: Model  # functions, layout and input scaling of the models this run writes
    x0: np.ndarray
    n_train: int
    n_valid: int
    data_digest: str

    def model(self, params: np.ndarray) -> Model:
        return replace(self.template, params=params)


def _progress(log, label: str, total: int, t0: float):
    state = {"next": 0.1}

    def cb(done: int) -> None:
        if total and done / total >= state["next"] - 1e-12:
            el = time.perf_counter() - t0
            eta = el / done * (total - done)
            log(f"  {label}: {done}/{total} images ({100 * done / total:.0f}%), {el:.1f} s elapsed, ~{eta:.1f} s left")
            while state["next"] <= done / total:
                state["next"] += 0.1

    return cb


def resident_bytes() -> float:
    """This process's resident memory now (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return float(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


def _element_rows(G: np.ndarray, species: np.ndarray, n_elements: int, chunk: int = 8192):
    """(element, a copy of its rows of G) over chunks of ``chunk`` rows: what a masked copy of
    a whole element's rows would allocate at once (+15 MiB on the reference set, at the peak
    of a training) in small pieces."""
    for c0 in range(0, len(G), chunk):
        sp = species[c0 : c0 + chunk]
        for e in range(n_elements):
            sel = sp == e
            if sel.any():
                yield e, G[c0 : c0 + chunk][sel]


def fingerprint_moments(comm: SerialComm, G: np.ndarray, species: np.ndarray, n_elements: int,
                        varies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Mean and standard deviation (n_elements, n_max) of the training fingerprints over every
    rank's atoms; the deviation is 0 where ``varies`` is False (a function constant in training,
    which min-max also maps to 0).  Two passes (mean, then squared deviations): E[G²] − E[G]²
    would cancel for functions whose spread is small beside their mean."""
    sums = np.zeros((n_elements, G.shape[1] + 1))
    for e, rows in _element_rows(G, species, n_elements):
        sums[e, 0] += len(rows)
        sums[e, 1:] += rows.sum(axis=0)
    comm.allreduce_sum(sums)
    count = np.maximum(sums[:, :1], 1.0)
    mean = sums[:, 1:] / count
    sq = np.zeros_like(mean)
    for e, d in _element_rows(G, species, n_elements):  # copies, squared in place
        d -= mean[e]
        d *= d
        sq[e] += d.sum(axis=0)
    comm.allreduce_sum(sq)
    std = np.where(varies, np.sqrt(sq / count), 0.0)
    return mean, std


def memory_forecast(counts: np.ndarray, n_atoms: int, sf: SymmetryFunctions, with_forces: bool, itemsize: int,
                    net_itemsize: int = 8) -> float:  # fmt: skip
    """Bytes a shard will hold for fingerprints, derivatives and evaluation buffers;
    ``counts`` from :func:`hpcpot.potential.fingerprints.pair_kind_counts`; ``net_itemsize``:
    4 for float32 network passes (inputs, activations, input gradients)."""
    nm = sf.n_max
    b = n_atoms * nm * (8 + 2 * net_itemsize)  # G (float64 while scaling), scaled X, network temporaries
    if with_forces:
        pairs = float(counts.sum())
        values = float(derivative_value_count(counts, sf))
        if itemsize == 0:  # recompute: one chunk of ~200k pairs at a time
            values *= min(1.0, 200_000 / max(pairs, 1.0))
            pairs = min(pairs, 200_000)
            itemsize = 8
        b += values * itemsize + pairs * 17 + n_atoms * nm * net_itemsize + n_atoms * 3 * 8 * 2  # values, indices, g (= v), F
    return float(b)


def fingerprint_transient(counts: np.ndarray, n_atoms: int, sf: SymmetryFunctions, with_forces: bool,
                          itemsize: int) -> float:
    """Bytes alive only while fingerprinting: one chunk's values (CHUNK_PAIRS / 64 atoms'
    worth, in the storage type) while the chunks are copied into one array.  Measured on Mo
    and the reference set: the high-water mark minus what stays resident is this, within
    ~10 MiB."""
    if not with_forces or n_atoms == 0:
        return 0.0
    share = min(1.0, CHUNK_PAIRS / CHUNK_NEIGHBOURS_PER_ATOM / n_atoms)
    return share * derivative_value_count(counts, sf) * (itemsize or 8)


def lm_memory(n_params: int, rank: int) -> float:
    """Bytes Levenberg–Marquardt adds on a rank: JᵀJ (P² doubles) and the Jacobian scratch;
    rank 0 holds a second P² copy for the Cholesky factor."""
    return 8.0 * (n_params * n_params * (2 if rank == 0 else 1) + (ROWS_PER_UPDATE + 2) * n_params)


def node_memory_limit() -> float:
    """Bytes this node's job may use: physical memory, lowered by a cgroup v2 limit and by
    SLURM's --mem (SLURM_MEM_PER_NODE, MiB) or --mem-per-cpu (SLURM_MEM_PER_CPU x
    SLURM_CPUS_ON_NODE) when set."""
    limits = [float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))]
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            v = fh.read().strip()
        if v.isdigit():
            limits.append(float(v))
    except OSError:
        pass
    env = os.environ
    if env.get("SLURM_MEM_PER_NODE", "").isdigit() and int(env["SLURM_MEM_PER_NODE"]) > 0:
        limits.append(float(env["SLURM_MEM_PER_NODE"]) * 2**20)
    if env.get("SLURM_MEM_PER_CPU", "").isdigit() and env.get("SLURM_CPUS_ON_NODE", "").isdigit():
        limits.append(float(env["SLURM_MEM_PER_CPU"]) * int(env["SLURM_CPUS_ON_NODE"]) * 2**20)
    return min(limits)


def _node_memory_per_rank(comm: SerialComm) -> float:
    hosts = comm.hosts()
    here = hosts[comm.rank]
    per_node = sum(h == here for h in hosts)
    return node_memory_limit() / per_node


def data_digest(comm: SerialComm, st_train: Structures, st_valid: Structures) -> str:
    """A rank-count independent fingerprint of the data (sums reduced over ranks)."""
    v = np.array([
        st_train.n_images, st_train.energy.sum(), np.abs(st_train.positions).sum(), len(st_train.species),
        st_valid.n_images, st_valid.energy.sum(), np.abs(st_valid.positions).sum(), len(st_valid.species),
    ], float)  # fmt: skip
    comm.allreduce_sum(v)
    return "-".join(f"{x:.6e}" for x in v)


def energy_scaling(comm: SerialComm, st: Structures, n_el: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-element intercept (eV/atom, least squares on composition) and slope (eV).

    Normal equations are reduced over ranks, so every rank gets the global answer."""
    A = composition(st, n_el)
    red = np.concatenate([(A.T @ A).ravel(), A.T @ st.energy, [st.n_images]])
    comm.allreduce_sum(red)
    ata = red[: n_el * n_el].reshape(n_el, n_el)
    atb = red[n_el * n_el : n_el * n_el + n_el]
    mu = np.linalg.pinv(ata) @ atb
    r = (st.energy - A @ mu) / np.sqrt(np.maximum(st.n_atoms, 1))  # per-atom-energy spread
    s = np.array([float(r @ r), float(st.n_images)])
    comm.allreduce_sum(s)
    slope = max(math.sqrt(s[0] / max(s[1], 1.0)), 0.01)
    return np.full(n_el, slope), mu


def _exercise_kernels(precision: str = "float64") -> None:
    """Run every numba kernel once on a two-atom system, float64 and float32 derivatives,
    network passes in ``precision``."""
    from ase import Atoms

    atoms = Atoms("OPt", positions=[[0, 0, 0], [2.0, 0, 0]])
    sf = symmetry_functions(FingerprintConfig(preset="default"), ["O", "Pt"])
    st = structure_arrays(atoms, sf.elements)
    st.forces = np.zeros((2, 3))
    lay = Layout(sf.elements, tuple(int(n) for n in sf.n_functions), (2,), "tanh")
    for dt in (np.float64, np.float32):
        G, b = compute_fingerprints(st, sf, True, dt)
        prob = ShardProblem(st, G, b, lay, G.min(0, keepdims=True).repeat(2, 0), G.max(0, keepdims=True).repeat(2, 0) + 1,
                            sf.block_tables(), 0.1, dtype=np.dtype(precision))  # fmt: skip
        prob.evaluate(np.zeros(lay.n_params) + 0.1)
    compute_fingerprints(st, sf, False)
    # hpcpot's L-BFGS (the default optimiser): its kernels with the types a training passes
    from .optimizers.lbfgs import minimize_lbfgs

    minimize_lbfgs(lambda x: (float(x @ x), 2.0 * x), np.linspace(1.0, 2.0, 3), history=2, maxiter=3)


def warm_up_kernels(comm: SerialComm, log, precision: str = "float64") -> None:
    """Compile the numba kernels once: rank 0 compiles (or loads numba's on-disk cache),
    then the other ranks load that cache.  64 ranks never compile 64 times nor race to
    write the same cache files."""
    t0 = time.perf_counter()
    if comm.rank == 0:
        _exercise_kernels(precision)
    comm.barrier()
    if comm.rank != 0:
        _exercise_kernels(precision)
    comm.barrier()
    # every kernel a training runs is loaded now: LLVM's code is not needed again
    dropped = release_compiler_pages()
    log(f"kernels ready in {time.perf_counter() - t0:.1f} s (numba compile or cache load; "
        f"{dropped / 2**20:.0f} MiB of LLVM's code pages released on rank 0)")  # fmt: skip


def _filtered(comm: SerialComm, cfg: Config, images: ImageSet, vimages: ImageSet | None, need_forces: bool, log):
    """Global indices of the training (and separate validation) images the data filters keep;
    the dropped ones are listed in OUTDIR/filtered.tsv."""
    d = cfg.data
    if not (d.max_energy_above_min > 0 or d.max_force > 0):
        return np.arange(images.n), (np.arange(vimages.n) if vimages is not None else None)
    t0 = time.perf_counter()
    args = (d.max_energy_above_min, d.max_force, d.reference_energies, need_forces)
    try:
        res = apply_filters(comm, images, *args)
        vargs = (d.max_energy_above_min, d.max_force, res.references, need_forces)
        vres = apply_filters(comm, vimages, *vargs, lowest=res.lowest) if vimages is not None else None
    except GlobalDataError as exc:
        raise GlobalError(str(exc)) from None
    for r, n, what in ((res, images.n, "training-file"), (vres, vimages.n if vimages else 0, "validation-file")):
        if r is not None:
            for line in filter_report(r, n, what, d.max_energy_above_min, d.max_force):
                log(line)
    if comm.rank == 0:
        path = os.path.join(cfg.output.dir, "filtered.tsv")
        write_filtered(path, res if vres is None else FilterResult(res.kept, res.dropped + vres.dropped, res.lowest, res.references))
        log(f"filters: the dropped images are listed in {path} ({time.perf_counter() - t0:.1f} s)")
    return res.kept, (vres.kept if vres is not None else None)


def build(comm: SerialComm, cfg: Config, log) -> Setup:
    """Read this rank's shard, fingerprint it, and set up global scaling and parameters."""
    warm_up_kernels(comm, log, network_precision(cfg))
    t0 = time.perf_counter()
    alpha = cfg.loss.force_coefficient
    need_forces = alpha > 0
    fp = cfg.fingerprints
    key = cfg.data.split_key
    try:  # every rank opens the same files: report a missing/unreadable one once, not N times
        images = ImageSet.open(cfg.data.train, cfg.data.index, comm, need_forces, key)
        vimages = ImageSet.open(cfg.data.validation, cfg.data.index, comm, need_forces, key) if cfg.data.validation else images
    except DataError as exc:
        raise GlobalError(str(exc)) from None
    kinds = {s.kind for s in images.sources}
    if "ase" in kinds and comm.size > 1:
        log("note: rank 0 parsed the non-indexable input files and broadcast them; "
            "`python -m hpcpot.prepare` converts them once for all runs (each rank then reads its own images)")  # fmt: skip
    pool, vpool = _filtered(comm, cfg, images, vimages if cfg.data.validation else None, need_forces, log)
    if cfg.data.validation:
        g_train, g_val = pool, vpool
    else:
        try:
            g_train, g_val = split_global(comm, images, cfg.data.validation_fraction, cfg.data.seed, cfg.data.split_key,
                                          pool, cfg.data.validation_values)  # fmt: skip
        except DataError as exc:  # decided alike on every rank
            raise GlobalError(str(exc)) from None
    if len(g_train) == 0:
        raise GlobalError("no training images after the train/validation split")
    st_t = read_shard(comm, images, g_train, fp.cutoff, need_forces)
    st_v = read_shard(comm, vimages, g_val, fp.cutoff, need_forces)
    if cfg.model.elements:
        els = tuple(sorted(cfg.model.elements))
    else:
        els = tuple(sorted(set().union(*comm.allgather(set(st_t.elements) | set(st_v.elements)))))
    st_t = concat_structures([st_t], els)
    st_v = concat_structures([st_v], els)
    slope, intercept = energy_scaling(comm, st_t, len(els))
    screen(comm, [st_t, st_v], intercept, log)
    log(f"data: {len(g_train)} training and {len(g_val)} validation images, elements {', '.join(els)} "
        f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    zero_counts = np.zeros((len(els), len(els) + 1), np.int64)
    if fp.preset == "auto" or need_forces:  # one neighbour pass gives both
        r_min, c_t = neighbour_statistics(st_t, fp.cutoff)
    if fp.preset == "auto":
        comm.allreduce_min(r_min)
        sf = generated_set(fp, list(els), r_min)
        log("fingerprints: preset \"auto\" from the training data's shortest distances (" + ", ".join(
            f"{a}-{b} {r_min[i, j]:.2f} Å" for i, a in enumerate(els) for j, b in enumerate(els) if j >= i) + "):")
        for line in describe(sf):
            log(line)
    else:
        sf = symmetry_functions(fp, list(els))
    itemsize = {"float32": 4, "float64": 8, "recompute": 0}[fp.storage]
    # what the process holds now (interpreter, libraries, this shard's data), what the shard
    # will store, and the chunk alive while fingerprinting
    held = resident_bytes()
    c_t = c_t if need_forces else zero_counts
    c_v = pair_kind_counts(st_v, fp.cutoff) if need_forces else zero_counts
    net = np.dtype(network_precision(cfg)).itemsize
    need = (held + memory_forecast(c_t, len(st_t.species), sf, need_forces, itemsize, net)
            + memory_forecast(c_v, len(st_v.species), sf, need_forces, itemsize, net)
            + fingerprint_transient(c_t, len(st_t.species), sf, need_forces, itemsize))  # fmt: skip
    lm = 0.0
    if cfg.optimizer.method == "lm":
        n_par = Layout(els, tuple(int(n) for n in sf.n_functions), tuple(cfg.model.hidden), cfg.model.activation).n_params
        lm = lm_memory(n_par, comm.rank)
    need_max = float(comm.allreduce_max(np.array([need + lm]))[0])
    lm_max = float(comm.allreduce_max(np.array([lm]))[0])
    limit = cfg.parallel.memory_per_rank * 2**30 if cfg.parallel.memory_per_rank > 0 else _node_memory_per_rank(comm)
    limit = float(comm.allreduce_min(np.array([limit]))[0])
    lm_note = f", of which {lm_max / 2**30:.3f} GiB for Levenberg–Marquardt's JᵀJ" if lm_max else ""
    log(f"memory forecast: {need_max / 2**30:.3f} GiB peak on the busiest rank{lm_note} ({held / 2**30:.3f} GiB held by rank 0 now) "
        f"(limit {limit / 2**30:.2f} GiB per rank; derivatives stored as {fp.storage})")  # fmt: skip
    if lm_max and need_max > limit:
        raise GlobalError(
            f'[optimizer] method = "lm" needs ~{lm_max / 2**30:.2f} GiB per rank for JᵀJ ({n_par} parameters: P² '
            f"doubles on every rank, twice on rank 0), ~{need_max / 2**30:.2f} GiB with the data, but "
            f"{limit / 2**30:.2f} GiB are available; more ranks do not shrink it: use a smaller network, "
            'method = "lbfgsb", or raise [parallel] memory_per_rank'
        )
    if need_max > limit:
        raise GlobalError(
            f"the run needs ~{need_max / 2**30:.2f} GiB per rank but {limit / 2**30:.2f} GiB are available: "
            "use more ranks (or nodes), "
            + ('[fingerprints] storage = "float32" (half the bytes), ' if fp.storage == "float64" else "")
            + ('[fingerprints] storage = "recompute" (no derivatives stored, much slower), ' if fp.storage != "recompute" else "")
            + "or raise [parallel] memory_per_rank"
        )
    t1 = time.perf_counter()
    dtype = np.float32 if fp.storage == "float32" else np.float64
    store = need_forces and fp.storage != "recompute"
    prog = _progress(log, "fingerprints (rank 0 shard)", st_t.n_images, t1)
    if fp.cache:
        from .cache import FingerprintCache

        cache = FingerprintCache(fp.cache, sf, store, dtype, log if comm.rank == 0 else lambda *a: None)
        G_t, b_t = cache.compute(st_t, progress=prog)
        hits = np.array([cache.hits, cache.misses], float)
        G_v, b_v = cache.compute(st_v)
        hits += [cache.hits, cache.misses]
        comm.allreduce_sum(hits)
        log(f"fingerprint cache {fp.cache}: {int(hits[0])} images reused, {int(hits[1])} computed and added")
    else:
        # the exact number of derivative values: the array is allocated once
        G_t, b_t = compute_fingerprints(st_t, sf, store, dtype, progress=prog, n_values=derivative_value_count(c_t, sf))
        G_v, b_v = compute_fingerprints(st_v, sf, store, dtype, n_values=derivative_value_count(c_v, sf))
    t2 = time.perf_counter()
    nb = comm.allreduce_sum(np.array([float(b_t.nbytes if b_t is not None else 0)]))[0]
    log(f"fingerprints{' and derivatives' if need_forces else ''}: {t2 - t1:.1f} s, "
        f"{nb / 2**20:.1f} MiB of derivatives in total")  # fmt: skip
    ne, nm = len(els), sf.n_max
    gmin = np.full((ne, nm), np.inf)
    gmax = np.full((ne, nm), -np.inf)
    for e, rows in _element_rows(G_t, st_t.species, ne):
        np.minimum(gmin[e], rows.min(axis=0), out=gmin[e])
        np.maximum(gmax[e], rows.max(axis=0), out=gmax[e])
    comm.allreduce_min(gmin)
    comm.allreduce_max(gmax)
    missing = [els[e] for e in range(ne) if not np.isfinite(gmin[e, 0])]
    if missing:
        raise GlobalError(f"element(s) {', '.join(missing)} have no atoms in the training set")
    gmean = gstd = None
    if fp.scaling == "standard":
        gmean, gstd = fingerprint_moments(comm, G_t, st_t.species, ne, gmax > gmin)
    layout = Layout(els, tuple(int(n) for n in sf.n_functions), tuple(cfg.model.hidden), cfg.model.activation)
    x0 = initial_parameters(layout, slope, intercept, cfg.model.seed)
    template = Model(sf, layout, x0, gmin, gmax, fp.scaling, gmean, gstd)
    lo, hi = template.input_bounds()
    tables = sf.block_tables()
    rec = sf if (need_forces and not store) else None
    dt = np.dtype(network_precision(cfg))
    train = ShardProblem(st_t, G_t, b_t, layout, lo, hi, tables, alpha, recompute=rec, dtype=dt)
    n_val = len(g_val)
    valid = ShardProblem(st_v, G_v, b_v, layout, lo, hi, tables, alpha, recompute=rec, dtype=dt) if n_val else None
    digest = data_digest(comm, st_t, st_v)
    return Setup(sf, layout, train, valid, template, x0, len(g_train), n_val, digest)


def print_header(comm: SerialComm, cfg: Config, log) -> None:
    import ase
    import numba
    import scipy

    try:
        import mpi4py

        mv = mpi4py.__version__
    except ImportError:
        mv = "not installed"
    hosts = comm.hosts()
    uniq = sorted(set(hosts))
    log(f"hpcpot {__version__}  python {sys.version.split()[0]}  numpy {np.__version__}  scipy {scipy.__version__}  "
        f"numba {numba.__version__}  ase {ase.__version__}  mpi4py {mv}")  # fmt: skip
    log(f"MPI: {comm.library}; {comm.size} rank(s) on {len(uniq)} host(s): "
        + ", ".join(f"{h} ({hosts.count(h)})" for h in uniq))
    log(f"config {cfg.path}, resolved:")
    for sec, vals in cfg.to_dict().items():
        log(f"  [{sec}] " + json.dumps(vals))


def prepare_output(cfg: Config, restart: bool, overwrite: bool) -> None:
    """Refuse to clobber a previous run; with overwrite, move it aside (nothing is deleted)."""
    d = cfg.output.dir
    model = os.path.join(d, "model.json")
    previous = [f for f in ("model.json", "model_best.json", "log.jsonl") if os.path.exists(os.path.join(d, f))] + (
        ["checkpoints/"] if os.path.isdir(os.path.join(d, "checkpoints")) else []
    )
    if restart:
        if not os.path.isdir(os.path.join(d, "checkpoints")):
            raise GlobalError(f"--restart: no checkpoints in {d}/checkpoints")
        return
    if previous and not (overwrite or cfg.output.overwrite):
        raise GlobalError(
            f"{d} already holds a run ({', '.join(previous)}): pass --restart to continue it, "
            f"or --overwrite to start over (the old files are moved to {d}/previous-<time>/)"
        )
    if previous:
        keep = os.path.join(d, time.strftime("previous-%Y%m%d-%H%M%S"))
        os.makedirs(keep)
        for f in previous:
            shutil.move(os.path.join(d, f.rstrip("/")), keep)
    os.makedirs(d, exist_ok=True)
    _ = model


def train(comm: SerialComm, cfg: Config, restart: bool = False, overwrite: bool = False, flag: SignalFlag | None = None) -> int:
    """The whole run.  Returns the process exit code.  ``flag`` records SIGTERM/SIGUSR1/SIGINT
    (created here if not given; the CLI creates it first thing, so early signals count)."""
    log = make_printer(comm)
    flag = flag or SignalFlag()
    t_run = time.perf_counter()
    problem = None
    if comm.rank == 0:  # one rank touches the output folder; every rank learns the outcome
        try:
            prepare_output(cfg, restart, overwrite)
        except GlobalError as exc:
            problem = str(exc)
    problem = comm.bcast(problem)
    if problem is not None:
        raise GlobalError(problem)
    print_header(comm, cfg, log)
    setup = build(comm, cfg, log)
    with_forces = setup.train.with_forces
    o = cfg.optimizer
    extra = NormalEquations(setup.train, o.force_fraction, o.lm_seed) if o.method == "lm" else None
    ev = Evaluator(comm, setup.train, setup.valid, N_HEAD, extra)
    replicated = False
    if comm.size > 1 and cfg.parallel.optimizer == "replicated" and o.method != "lm":
        why = why_not_replicated(comm, ev.rbuf.size)
        replicated = why is None
        log("optimizer: a copy on every rank ([parallel] optimizer = \"replicated\"): one Allreduce per evaluation"
            if replicated else f"note: [parallel] optimizer = \"replicated\" is not used, rank 0 drives: {why}")
    if comm.rank != 0:
        while ev.serve() == CMD_JOIN:
            _follow(cfg, ev, flag)
        return 0
    try:
        return _drive(comm, cfg, setup, ev, log, flag, restart, t_run, with_forces, replicated)
    finally:
        ev.stop()


def _replicated_calls(ev: Evaluator, flag: SignalFlag, t0: float):
    """``evaluate``, ``validate`` and ``clock`` for a copy of the optimiser on every rank:
    evaluations without a broadcast, each carrying whether this rank caught a signal and
    rank 0's elapsed time (``time.perf_counter() - t0``), which every copy then agrees on."""

    def evaluate(p, want_max=False):
        buf = ev.everywhere(p, CMD_GRAD, want_max, flag.received is not None, time.perf_counter() - t0)
        evaluate.last_max = getattr(ev, "last_max", None)
        return buf

    def validate(p):
        return Stats.from_buffer(ev.everywhere(p, CMD_VALID, False, flag.received is not None, time.perf_counter() - t0))

    return evaluate, validate, lambda: ev.agreed_elapsed


def network_precision(cfg: Config) -> str:
    """The dtype of the training's network passes: [loss] precision, except for method "lm"
    (its Jacobian rows are float64; mixing them with float32 losses would mislead its
    gain ratio)."""
    return "float64" if cfg.optimizer.method == "lm" else cfg.loss.precision


def _float64_fallback(cfg: Config, ev: Evaluator, broadcast: bool, log):
    """``on_stall`` for run_optimizer under [loss] precision = "float32": when the optimiser
    stops early (late in a fit the float32 passes' rounding can be as large as the decrease
    the line search looks for: Mo, one seed of three, 153 iterations before the budget),
    switch every rank to float64 passes and go on from the last accepted point."""
    if network_precision(cfg) != "float32":
        return None

    def on_stall(it: int, message: str) -> bool:
        if not ev.use_float64(broadcast):
            return False
        ev.float64_from = it  # for status.json
        log(f"iteration {it}: the optimiser stopped with float32 network passes ({message}); "
            "float64 passes from here on (the optimiser's memory starts afresh)")  # fmt: skip
        return True

    return on_stall


def _follow(cfg: Config, ev: Evaluator, flag: SignalFlag) -> None:
    """Ranks > 0: run this rank's copy of the optimiser (rank 0 logs, checkpoints and writes
    the model), then return to :meth:`Evaluator.serve`."""
    meta = ev.join_meta
    evaluate, validate, clock = _replicated_calls(ev, flag, time.perf_counter())

    def on_iteration(it, p, elapsed):
        if ev.agreed_stop:
            raise Interrupted("signal")

    try:
        res = run_optimizer(evaluate, ev.cmd[2:].copy(), cfg, meta["with_forces"], LogWriter(None, None),
                            meta["iteration"], 0.0, validate if meta["validate"] else None, on_iteration, Best(),
                            clock=clock, on_stall=_float64_fallback(cfg, ev, False, lambda *a: None),
                            overlap=ev.set_overlap)  # fmt: skip
    except (Interrupted, NonFiniteLoss, ReplicaMismatch):
        return  # met by every copy at once; rank 0 reports it and releases this rank
    ev.everywhere(res.params, CMD_DONE)


def _drive(comm, cfg: Config, setup: Setup, ev: Evaluator, log, flag: SignalFlag, restart: bool, t_run: float,
           with_forces: bool, replicated: bool) -> int:  # fmt: skip
    from .anneal import anneal

    out = cfg.output.dir
    ck_dir = os.path.join(out, "checkpoints")
    cdig = cfg.digest()
    x = setup.x0
    it0, elapsed0, stage = 0, 0.0, "anneal" if cfg.anneal.enabled else "optimize"
    anneal_state = None
    best = Best()
    opt_state: dict = {}  # the method's own state carried by checkpoints (LM's damping)
    if restart:
        ck = ckpt.latest(ck_dir, log)
        if ck is None:
            raise GlobalError(f"--restart: no valid checkpoint in {ck_dir}")
        if ck.version != __version__:
            raise GlobalError(f"--restart: the checkpoint in {ck_dir} was written by hpcpot {ck.version}, this is "
                              f"{__version__}; refusing to resume (start over, or finish with that version)")  # fmt: skip
        if ck.config_digest != cdig:
            raise GlobalError(f"--restart: the checkpoint in {ck_dir} was made with a different config "
                              "([data], [fingerprints], [model] or [loss] changed); refusing to resume")  # fmt: skip
        if ck.data_digest != setup.data_digest:
            raise GlobalError(f"--restart: the checkpoint in {ck_dir} was made on different data; refusing to resume")
        if len(ck.params) != setup.layout.n_params:
            raise GlobalError(f"--restart: checkpoint has {len(ck.params)} parameters, the model {setup.layout.n_params}")
        x, it0, elapsed0, stage = ck.params, ck.iteration, ck.elapsed, ck.stage
        anneal_state = ck if stage == "anneal" and "current" in ck.arrays else None
        if "best" in ck.arrays and stage != "anneal":
            best = Best(float(ck.extra["best_loss"]), int(ck.extra["best_iteration"]), ck.arrays["best"])
        if "lm_damping" in ck.extra and stage != "anneal":
            opt_state["lm_damping"] = float(ck.extra["lm_damping"])
        _truncate_log(os.path.join(out, "log.jsonl"), it0 if stage != "anneal" else 0)
        log(f"restart: resuming stage '{stage}' at iteration {it0} from {ck_dir}")
        if stage == "done":
            log("the checkpointed run had already finished; nothing to do")
            return 0
    logw = LogWriter(os.path.join(out, "log.jsonl"), log)

    def logw_line(msg: str) -> None:  # after the iteration lines the writer holds back
        logw.flush()
        log(msg)

    t0 = time.perf_counter() - elapsed0

    def save(stage_: str, it: int, params: np.ndarray, extra=None, arrays=None) -> str:
        logw.flush()  # the log reaches the checkpoint's iteration before the checkpoint exists
        return ckpt.save(ck_dir, ckpt.Checkpoint(stage_, it, params, cdig, setup.data_digest,
                                                 time.perf_counter() - t0, extra or {}, arrays or {}),
                         keep=cfg.checkpoint.keep)  # fmt: skip

    t_periodic = [time.perf_counter()]  # the last periodic checkpoint (or the start)

    def checkpoint_due(it: int) -> bool:
        """A periodic checkpoint now: ``[checkpoint] every`` divides the iteration (or annealing
        step) and the last one is at least ``min_interval`` seconds old (rank 0's clock; only
        rank 0 writes)."""
        every = cfg.checkpoint.every
        if not every or it % every:
            return False
        now = time.perf_counter()
        if now - t_periodic[0] < cfg.checkpoint.min_interval:
            return False
        t_periodic[0] = now
        return True

    def check_signal(stage_: str, it: int, params: np.ndarray, extra=None, arrays=None) -> None:
        if flag.received is not None:
            path = save(stage_, it, params, extra, arrays)
            raise Interrupted(f"signal {flag.received}: checkpoint written to {path}")

    def loss_only(p: np.ndarray) -> float:
        return float(ev.evaluate(p, CMD_LOSS)[0])

    try:
        # a signal during set-up: checkpoint now (keeping any annealer state), not after an iteration
        if anneal_state is not None:
            check_signal("anneal", it0, x, anneal_state.extra, anneal_state.arrays)
        else:
            check_signal(stage, it0, x, dict(opt_state))  # keeps a resumed LM damping
        if stage == "anneal":
            x = anneal(loss_only, x, cfg.anneal, log, resume=anneal_state,
                       on_update=lambda step, extra, arrays: check_signal("anneal", step, arrays["best"], extra, arrays),
                       checkpoint_every=cfg.checkpoint.every,
                       save=lambda step, extra, arrays: checkpoint_due(step) and save("anneal", step, arrays["best"], extra, arrays))  # fmt: skip
            it0 = 0
            save("optimize", 0, x)

        def evaluate(p, want_max=False):
            buf = ev.evaluate(p, want_max=want_max)
            evaluate.last_max = getattr(ev, "last_max", None)
            return buf

        def validate(p):
            if setup.valid is None:
                return None
            return Stats.from_buffer(ev.evaluate(p, CMD_VALID))

        def with_best():
            if best.params is None:
                return dict(opt_state), {}
            return {"best_loss": best.loss, "best_iteration": best.iteration, **opt_state}, {"best": best.params}

        def normal_equations(p, iteration):
            return ev.evaluate(p, CMD_EXTRA, arg=float(iteration))

        def lm_loss(p, want_max=False):
            buf = ev.evaluate(p, CMD_LOSS, want_max=want_max)
            lm_loss.last_max = getattr(ev, "last_max", None)
            return buf

        def on_iteration(it, p, elapsed):
            # every other rank waits for this on rank 0: the checkpoint fields are built only
            # when a checkpoint is written
            if checkpoint_due(it):
                extra, arrays = with_best()
                save("optimize", it, p, {"elapsed": elapsed, **extra}, arrays)
            if not replicated:
                if flag.received is not None:
                    check_signal("optimize", it, p, *with_best())
            elif ev.agreed_stop:  # every copy stops at this iteration (rank 0's own signal
                # counts from the next evaluation on, like any rank's)
                path = save("optimize", it, p, *with_best())
                raise Interrupted(f"a signal reached {ev.agreed_stop} rank(s): checkpoint written to {path}")

        passes = network_precision(cfg)
        log(f"optimizer: {cfg.optimizer.method}, up to {cfg.optimizer.max_iterations} iterations, "
            f"{setup.layout.n_params} parameters; network passes in {passes}"
            + (" (float64 if the optimiser stalls on their rounding)" if passes == "float32" else ""))  # fmt: skip
        t_opt, tm0 = time.perf_counter(), dict(ev.timing)
        if replicated:
            ev.join(x, {"iteration": it0, "with_forces": with_forces, "validate": setup.valid is not None})
            r_eval, r_valid, clock = _replicated_calls(ev, flag, t0)
            try:
                res = run_optimizer(r_eval, x, cfg, with_forces, logw, it0, time.perf_counter() - t0,
                                    r_valid if setup.valid is not None else None, on_iteration, best, clock=clock,
                                    on_stall=_float64_fallback(cfg, ev, False, logw_line), overlap=ev.set_overlap)  # fmt: skip
                ev.everywhere(res.params, CMD_DONE)
            except (Interrupted, NonFiniteLoss, ReplicaMismatch):
                ev.joined = False  # met by every copy at the same evaluation: all have left
                raise
            ev.joined = False
        else:
            res = run_optimizer(evaluate, x, cfg, with_forces, logw, it0, time.perf_counter() - t0,
                                validate if setup.valid is not None else None, on_iteration, best,
                                normal_equations, lm_loss, opt_state,
                                on_stall=_float64_fallback(cfg, ev, True, logw_line), overlap=ev.set_overlap)  # fmt: skip
        t_end_opt, tm1 = time.perf_counter(), dict(ev.timing)  # before the final validation below
    except Interrupted as exc:
        log(f"stopped: {exc}; resume with --restart")
        _write_status(out, "interrupted", str(exc))
        logw.close()
        return 0
    except NonFiniteLoss as exc:
        return _stop_nonfinite(exc, setup, out, save, log, logw)
    extra, arrays = with_best()
    save("done", res.iterations, res.params, extra, arrays)
    model = setup.model(res.params)
    path = os.path.join(out, "model.json")
    model.save(path, overwrite=True)  # prepare_output already protected any earlier model
    best_note = None
    if best.params is not None:
        setup.model(best.params).save(os.path.join(out, "model_best.json"), overwrite=True)
        best_note = {"iteration": best.iteration, "validation_loss": best.loss}
        log(f"model_best.json: the parameters of iteration {best.iteration}, the lowest validation loss "
            f"({best.loss:.6e}) among the iterations validated; model.json: the last iteration ({res.iterations})")  # fmt: skip
    vs = validate(res.params) if setup.valid is not None else None
    summary = f"{'CONVERGED' if res.converged else 'NOT CONVERGED'}: {res.message}"
    log(summary)
    s = res.stats
    log(f"final train: E_rmse {s.energy_rmse * 1000:.3f} meV/atom" + (f", F_rmse {s.force_rmse:.4f} eV/Å" if with_forces else ""))
    if with_forces and math.isfinite(s.energy_share):
        # what α = force_coefficient did: on TiO2 the force term was 97% of the loss at α = 0.1
        # and the energies paid for it (README, results on real DFT data)
        log(f"loss shares: energy {100 * s.energy_share:.1f}%, forces {100 * (1 - s.energy_share):.1f}% "
            f"(set by force_coefficient = {cfg.loss.force_coefficient:g}; a lower value weights the energies more)")  # fmt: skip
    if vs is not None:
        log(f"final validation: E_rmse {vs.energy_rmse * 1000:.3f} meV/atom" + (f", F_rmse {vs.force_rmse:.4f} eV/Å" if with_forces else ""))
    t = ev.timing
    kinds = ", ".join(f"{n} {k} at {1000 * sec / n:.1f} ms" for k, (n, sec) in ev.by_kind.items() if n)
    log(f"model written to {path}; wall time {time.perf_counter() - t_run:.1f} s; evaluations "
        f"(rank 0's compute each): {kinds}")  # fmt: skip
    n_ev = tm1["n"] - tm0["n"]
    if n_ev and not t.get("extra_n"):
        # the serial part of an iteration: what no number of ranks makes faster
        inside = sum(tm1[k] - tm0[k] for k in ("bcast", "compute", "allreduce"))
        log(f"optimiser and driver (log, convergence test, checkpoints) between evaluations: "
            f"{1e6 * (t_end_opt - t_opt - inside) / n_ev:.0f} µs per evaluation on rank 0")  # fmt: skip
    if t.get("extra_n"):
        log(f"Levenberg–Marquardt: {t['extra_n']} JᵀJ builds, {t['extra_compute'] / t['extra_n']:.3f} s compute "
            f"and {t['extra_allreduce'] / t['extra_n']:.3f} s Allreduce each (rank 0)")  # fmt: skip
    _write_status(out, "converged" if res.converged else "not_converged", summary,
                  {"train": vars(s), "validation": vars(vs) if vs else None, "last_iteration": res.iterations,
                   "best_validation": best_note, "network_passes": network_precision(cfg),
                   "float64_passes_from_iteration": getattr(ev, "float64_from", None)})  # fmt: skip
    logw.close()
    return 0


def _stop_nonfinite(exc: NonFiniteLoss, setup: Setup, out: str, save, log, logw) -> int:
    """Keep the last finite parameters (checkpoint, and model.json when at least one
    iteration was accepted), never a NaN model; status.json says which iteration they are."""
    log(f"error: {exc}")
    finite = exc.iteration >= 1 and bool(np.all(np.isfinite(exc.params)))
    note = "no iteration was accepted: no model written"
    if finite:
        path = save("optimize", exc.iteration, exc.params)
        setup.model(exc.params).save(os.path.join(out, "model.json"), overwrite=True)
        note = (f"model.json and {path} hold the parameters of iteration {exc.iteration}, the last with a finite loss")
        log(note)
    _write_status(out, "nonfinite_loss", f"{exc}; {note}",
                  {"train": vars(exc.stats) if exc.stats else None, "model_iteration": exc.iteration if finite else None})  # fmt: skip
    logw.close()
    return 3


def _truncate_log(path: str, last_iteration: int) -> None:
    """Drop log records after the checkpoint being resumed (they will be redone), so that a
    restarted run's log.jsonl has every iteration exactly once."""
    if not os.path.exists(path):
        return
    with open(path) as fh:
        keep = [line for line in fh if line.strip() and json.loads(line).get("iteration", 0) <= last_iteration]
    blob = "".join(keep).encode()
    atomic_write_bytes(path, lambda fh: fh.write(blob))


def _json_safe(x):
    """NaN/inf -> None, so that status.json is strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _write_status(out: str, state: str, message: str, stats=None) -> None:
    blob = json.dumps(_json_safe({"state": state, "message": message, "stats": stats}), indent=1, allow_nan=False).encode()
    atomic_write_bytes(os.path.join(out, "status.json"), lambda fh: fh.write(blob))
