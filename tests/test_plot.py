"""Plots: PNGs of the right size written without a display; per-element force metrics equal a
direct numpy computation; without matplotlib a clear message and everything else works."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import REF, ROOT, need


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG header; fails if the file is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _no_display_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _fake_log(run_dir, n=60, validate_every=10):
    run_dir.mkdir()
    with open(run_dir / "log.jsonl", "w") as fh:
        for it in range(1, n + 1):
            rec = {"iteration": it, "loss": 10.0 / it, "energy_rmse": 0.05 / it, "force_rmse": 0.5 / it**0.5,
                   "elapsed": 0.1 * it}  # fmt: skip
            if it % validate_every == 0:
                rec.update(val_energy_rmse=0.06 / it, val_force_rmse=0.55 / it**0.5)
            fh.write(json.dumps(rec) + "\n")
        fh.write('{"iteration": 61, "loss"')  # a line cut short by a kill is skipped


def test_learning_curves_png_without_display(tmp_path):
    pytest.importorskip("matplotlib")
    from hpcpot.plot import DPI, LEARNING_SIZE

    _fake_log(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "hpcpot.plot", str(tmp_path / "run")],
                       capture_output=True, text=True, env=_no_display_env(), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run" / "learning-curves.png"
    assert png_size(out) == (int(LEARNING_SIZE[0] * DPI), int(LEARNING_SIZE[1] * DPI))
    # never over an existing file without --overwrite
    r = subprocess.run([sys.executable, "-m", "hpcpot.plot", str(tmp_path / "run")],
                       capture_output=True, text=True, env=_no_display_env(), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr


def test_evaluate_plots_and_per_element_metrics(fitted_model, tmp_path):
    pytest.importorskip("matplotlib")
    import ase.io

    from hpcpot import Calculator
    from hpcpot.plot import DPI, PARITY_PANEL

    model, _ = fitted_model
    model.save(str(tmp_path / "model.json"))
    cmd = [sys.executable, "-m", "hpcpot.evaluate", str(tmp_path / "model.json"), str(need(REF)), "--index", "3:40:3",
           "--plot", str(tmp_path / "ev"), "--json", str(tmp_path / "ev.json")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=_no_display_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    w, h = (int(x * DPI) for x in PARITY_PANEL)
    assert png_size(tmp_path / "ev-energy-parity.png") == (w, h)
    assert png_size(tmp_path / "ev-force-parity.png") == (2 * w, h)  # one panel per element: O, Pt
    assert png_size(tmp_path / "ev-errors.png") == (3 * w, int(PARITY_PANEL[1] * 0.8 * DPI))
    assert " O (" in r.stdout and "Pt (" in r.stdout  # per-element lines in the table
    per = json.loads((tmp_path / "ev.json").read_text())["force_per_element"]

    # the same figures straight from the calculator and numpy
    dF = {"O": [], "Pt": []}
    for a in ase.io.read(need(REF), "3:40:3"):
        ref = a.get_forces(apply_constraint=False)
        a.set_constraint()
        a.calc = Calculator(model, extrapolation="ignore")
        d = a.get_forces() - ref
        for el in dF:
            dF[el].append(d[np.array(a.get_chemical_symbols()) == el])
    for el, parts in dF.items():
        d = np.concatenate(parts)
        assert per[el]["atoms"] == len(d)
        assert per[el]["rmse_ev_per_a"] == pytest.approx(np.sqrt(np.mean(d**2)), rel=1e-9)
        assert per[el]["mae_ev_per_a"] == pytest.approx(np.mean(np.abs(d)), rel=1e-9)
        assert per[el]["max_ev_per_a"] == pytest.approx(np.abs(d).max(), rel=1e-9)


def test_without_matplotlib_a_clear_message(fitted_model, tmp_path, monkeypatch, capsys):
    import ase.io

    from hpcpot import Calculator, evaluate, plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    _fake_log(tmp_path / "run")
    assert plot.main([str(tmp_path / "run")]) == 2
    assert "pip install 'hpcpot[plot]'" in capsys.readouterr().err
    fitted_model[0].save(str(tmp_path / "model.json"))
    assert evaluate.main([str(tmp_path / "model.json"), str(need(REF)), "--index", ":2", "--plot", str(tmp_path / "p")]) == 2
    assert "pip install 'hpcpot[plot]'" in capsys.readouterr().err
    assert not list(tmp_path.glob("p-*"))
    # everything else still works
    assert evaluate.main([str(tmp_path / "model.json"), str(need(REF)), "--index", ":2"]) == 0
    a = ase.io.read(need(REF), 0)
    a.calc = Calculator(fitted_model[0])
    assert np.isfinite(a.get_potential_energy())
