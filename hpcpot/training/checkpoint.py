"""Atomic checkpoints: a kill at any instant leaves the old or the new file, never a broken one.

A checkpoint is one ``.npz`` (parameters, annealer state arrays) with a JSON ``meta`` entry
(stage, iteration, config and data digests, RNG state, elapsed time).  It is written to a
temporary file in the same folder, fsynced, renamed over the target, and the folder is
fsynced.  Loading checks the zip CRCs and the meta fields; a bad file is reported and
skipped in favour of an older one.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..files import atomic_write_bytes

FORMAT = "hpcpot-checkpoint-1"


class CheckpointError(ValueError):
    pass


@dataclass
class Checkpoint:
    stage: str  # "anneal", "optimize" or "done"
    iteration: int  # optimiser iterations completed (or annealing steps in stage anneal)
    params: np.ndarray
    config_digest: str
    data_digest: str
    elapsed: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able (RNG state, anneal scalars)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # anneal current/best states
    version: str = __version__  # hpcpot version that wrote it (a restart refuses another)


def save(folder: str, ck: Checkpoint, keep: int = 2) -> str:
    """Write ``checkpoint-<sequence>.npz`` atomically; keep the newest ``keep``."""
    os.makedirs(folder, exist_ok=True)
    seq = _next_seq(folder)
    path = os.path.join(folder, f"checkpoint-{seq:06d}.npz")
    meta = {
        "format": FORMAT, "stage": ck.stage, "iteration": ck.iteration,
        "config_digest": ck.config_digest, "data_digest": ck.data_digest,
        "elapsed": ck.elapsed, "extra": ck.extra, "n_params": len(ck.params), "hpcpot_version": ck.version,
    }  # fmt: skip
    arrays = {f"a_{k}": v for k, v in ck.arrays.items()}

    def write(fh):
        np.savez(fh, params=ck.params, meta=np.array(json.dumps(meta)), **arrays)

    atomic_write_bytes(path, write)
    for old in sorted(_list(folder))[:-keep]:
        os.unlink(old)
    return path


def _list(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "checkpoint-*.npz")))


def _next_seq(folder: str) -> int:
    files = _list(folder)
    if not files:
        return 1
    return int(os.path.basename(files[-1])[11:17]) + 1


def load(path: str) -> Checkpoint:
    """Read and check one checkpoint; CheckpointError if it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            params = z["params"].copy()
            arrays = {k[2:]: z[k].copy() for k in z.files if k.startswith("a_")}
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT or meta.get("n_params") != len(params) or not np.all(np.isfinite(params)):
        raise CheckpointError(f"{path}: not a valid hpcpot checkpoint")
    return Checkpoint(
        meta["stage"], int(meta["iteration"]), params, meta["config_digest"], meta["data_digest"],
        float(meta.get("elapsed", 0.0)), meta.get("extra", {}), arrays, str(meta.get("hpcpot_version", "unknown")),
    )  # fmt: skip


def latest(folder: str, log=print) -> Checkpoint | None:
    """The newest checkpoint in ``folder`` that loads; damaged ones are reported and skipped."""
    for path in reversed(_list(folder)):
        try:
            return load(path)
        except CheckpointError as exc:
            log(f"warning: {exc}; trying an older one")
    return None
