"""Plots a user looks at: ``python -m hpcpot.plot RUN_DIR [--out FILE]``.

* learning curves of a training run, from its ``log.jsonl``: loss, energy RMSE (meV/atom)
  and force RMSE (eV/Å), training and validation, against iteration and wall time, log scale
  (``RUN_DIR/learning-curves.png`` by default);
* parity plots and error histograms of a model on reference data
  (:func:`parity_plots`, drawn by ``python -m hpcpot.evaluate MODEL DATA --plot PREFIX``).

Needs matplotlib (``pip install 'hpcpot[plot]'``); everything else in hpcpot works without
it.  Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no display, and the
caller's matplotlib backend is left alone), sized to stay readable when printed small.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np

DPI = 100
LEARNING_SIZE = (10.0, 9.0)  # inches: 1000 x 900 px
PARITY_PANEL = (4.2, 4.0)  # inches per panel
MAX_POINTS = 200_000  # scatter at most this many force components per panel (a random subset)


class PlotUnavailable(RuntimeError):
    """matplotlib is missing."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable` with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(
            "plots need matplotlib, which is not installed: pip install 'hpcpot[plot]' (or pip install matplotlib)"
        ) from None


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.set_layout_engine("constrained")
    return fig


def _save(fig, path: str) -> str:
    from .files import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # Figure.savefig uses the Agg canvas for png
    atomic_write_bytes(path, lambda fh: fh.write(buf.getvalue()))
    return path


# --------------------------------------------------------------------------- learning curves


def read_log(path: str) -> dict[str, np.ndarray]:
    """``log.jsonl`` as columns (NaN where a line lacks a key: validation is not every line)."""
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: the rest is still worth drawing
    keys = sorted({k for r in rows for k in r})
    return {k: np.array([r.get(k, np.nan) if r.get(k) is not None else np.nan for r in rows], float) for k in keys}


def learning_curves(run_dir: str, out: str | None = None, overwrite: bool = False) -> str:
    """Draw the learning curves of the run in ``run_dir`` into ``out`` (PNG; default
    ``run_dir/learning-curves.png``); returns the path."""
    from .files import refuse_existing

    log = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(log):
        raise FileNotFoundError(f"{log} not found: is {run_dir} the output directory of hpcpot.train?")
    out = out or os.path.join(run_dir, "learning-curves.png")
    refuse_existing([out], overwrite)
    d = read_log(log)
    if "iteration" not in d or len(d["iteration"]) == 0:
        raise ValueError(f"{log} has no iterations yet")
    fig = _figure(*LEARNING_SIZE)
    axes = fig.subplots(3, 2, sharex="col")
    rows = [
        ("loss", None, 1.0, "loss (dimensionless)"),
        ("energy_rmse", "val_energy_rmse", 1000.0, "energy RMSE (meV/atom)"),
        ("force_rmse", "val_force_rmse", 1.0, "force RMSE (eV/Å)"),
    ]
    xs = [("iteration", "iteration"), ("elapsed", "wall time (s)")]
    for r, (train_key, val_key, scale, ylabel) in enumerate(rows):
        for c, (xkey, xlabel) in enumerate(xs):
            ax = axes[r, c]
            x = d.get(xkey)
            for key, label, style in ((train_key, "training", "-"), (val_key, "validation", "--")):
                if key is None or key not in d or x is None:
                    continue
                y = d[key] * scale
                ok = np.isfinite(y) & np.isfinite(x) & (y > 0)
                if ok.any():
                    ax.plot(x[ok], y[ok], style, lw=1.5, label=f"{label} (last {y[ok][-1]:.3g})")
            ax.set_yscale("log")
            _plain_log_labels(ax)
            ax.grid(True, which="both", alpha=0.3)
            if c == 0:
                ax.set_ylabel(ylabel)
            if r == 2:
                ax.set_xlabel(xlabel)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.suptitle(f"learning curves: {os.path.basename(os.path.abspath(run_dir))}", fontsize=10)
    return _save(fig, out)


def _plain_log_labels(ax) -> None:
    """Log-axis ticks as 0.05, 0.1, 0.2 rather than 5×10⁻²: easier to read when small.  Minor
    ticks get labels at 2 and 5 (all of them within a decade) unless the axis spans more than
    three decades, where they would overlap."""
    import math

    from matplotlib.ticker import FuncFormatter

    lo, hi = ax.get_ylim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0

    def minor(v, _):
        lead = round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0
        return f"{v:g}" if decades < 1.2 or (decades <= 3 and lead in (2, 5)) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


# --------------------------------------------------------------------------- parity


def parity_paths(prefix: str, with_forces: bool) -> list[str]:
    """The files :func:`parity_plots` writes (PNG)."""
    names = ["energy-parity"] + (["force-parity"] if with_forces else []) + ["errors"]
    return [f"{prefix}-{n}.png" for n in names]


def _parity_panel(ax, ref: np.ndarray, pred: np.ndarray, unit: str, what: str, rmse_unit: str, rmse_scale: float):
    rng = np.random.default_rng(0)
    idx = rng.choice(len(ref), MAX_POINTS, replace=False) if len(ref) > MAX_POINTS else slice(None)
    rmse = float(np.sqrt(np.mean((pred - ref) ** 2)))
    mae = float(np.mean(np.abs(pred - ref)))
    ax.scatter(ref[idx], pred[idx], s=3, alpha=0.4, lw=0, rasterized=True,
               label=f"RMSE {rmse * rmse_scale:.3g} {rmse_unit}\nMAE {mae * rmse_scale:.3g} {rmse_unit}\n{len(ref)} values")  # fmt: skip
    lo = float(min(ref.min(), pred.min()))
    hi = float(max(ref.max(), pred.max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k-", lw=0.8)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"reference {what} ({unit})")
    ax.set_ylabel(f"predicted {what} ({unit})")
    ax.legend(loc="upper left", fontsize=8, markerscale=0, handlelength=0)
    ax.grid(True, alpha=0.3)


def parity_plots(prefix: str, st, E: np.ndarray, F: np.ndarray | None) -> list[str]:
    """Energy parity (per atom), force parity per element (components), and histograms of
    the errors, for Structures ``st`` with predicted energies ``E`` (n_images,) eV and forces
    ``F`` (n_atoms, 3) eV/Å or None.  Returns the paths written (:func:`parity_paths`)."""
    paths = parity_paths(prefix, F is not None)
    nat = st.n_atoms.astype(float)
    e_ref, e_pred = st.energy / nat, E / nat
    fig = _figure(*PARITY_PANEL)
    _parity_panel(fig.subplots(), e_ref, e_pred, "eV/atom", "energy", "meV/atom", 1000.0)
    _save(fig, paths[0])
    present = [e for e in range(len(st.elements)) if (st.species == e).any()]
    if F is not None:
        fig = _figure(PARITY_PANEL[0] * len(present), PARITY_PANEL[1])
        axes = np.atleast_1d(fig.subplots(1, len(present)))
        for ax, e in zip(axes, present):
            m = st.species == e
            _parity_panel(ax, st.forces[m].ravel(), F[m].ravel(), "eV/Å", f"{st.elements[e]} force", "eV/Å", 1.0)
            ax.set_title(f"{st.elements[e]} ({int(m.sum())} atoms)", fontsize=10)
        _save(fig, paths[1])
    # histograms: energy error per atom, force component errors per element (log counts)
    n_panels = 1 + (len(present) if F is not None else 0)
    fig = _figure(PARITY_PANEL[0] * n_panels, PARITY_PANEL[1] * 0.8)
    axes = np.atleast_1d(fig.subplots(1, n_panels))
    dE = 1000.0 * (e_pred - e_ref)
    _histogram(axes[0], dE, "energy error (meV/atom)", "meV/atom")
    if F is not None:
        for ax, e in zip(axes[1:], present):
            m = st.species == e
            _histogram(ax, (F[m] - st.forces[m]).ravel(), f"{st.elements[e]} force component error (eV/Å)", "eV/Å")
    _save(fig, paths[-1])
    return paths


def _histogram(ax, d: np.ndarray, xlabel: str, unit: str) -> None:
    rmse = float(np.sqrt(np.mean(d**2)))
    ax.hist(d, bins=80, color="C0", alpha=0.8, label=f"RMSE {rmse:.3g} {unit}\n{len(d)} values")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcpot.plot", description="Learning curves of a training run (PNG).")
    ap.add_argument("run_dir", help="the output directory of hpcpot.train (holds log.jsonl)")
    ap.add_argument("--out", help="PNG file to write (default RUN_DIR/learning-curves.png)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing file")
    a = ap.parse_args(argv)
    try:
        path = learning_curves(a.run_dir, a.out, a.overwrite)
    except (PlotUnavailable, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
