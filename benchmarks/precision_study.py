"""Float32 against float64 network passes on real data: the same config, weight seeds and
iteration budget, trained both ways and tested on the run's held-out images.

    python benchmarks/precision_study.py examples/mo_mlearn_pbe.toml [--seeds 0 1 2] [--side-by-side 2]

Each (seed, precision) run is ``benchmarks/real_data.py`` on a copy of the config with
``[loss] precision`` and ``[model] seed`` set and its own output folder (under
``--out``, default ``precision-study/`` beside this script's repository root).  With
``--side-by-side 2`` the float32 and float64 runs of one seed run at the same time, one per
core, so their wall times compare; the table reports test MAE/RMSE, iterations, wall time
and whether the float32 run fell back to float64 passes.  The README's choice of the
default precision comes from this script's output (``benchmarks/precision-study-output.txt``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def with_keys(text: str, keys: dict[str, dict[str, str]]) -> str:
    """The TOML text with ``keys[section][key] = value`` (values as TOML literals) set: an
    existing key of that section is replaced, a missing one added under its section header
    (the section is appended when absent).  Enough for hpcpot's flat configs."""
    lines = text.splitlines()
    for section, kv in keys.items():
        head = next((i for i, x in enumerate(lines) if x.strip() == f"[{section}]"), None)
        if head is None:
            lines += ["", f"[{section}]"]
            head = len(lines) - 1
        end = next((i for i in range(head + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        for key, value in kv.items():
            pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
            hit = next((i for i in range(head + 1, end) if pat.match(lines[i])), None)
            if hit is None:
                lines.insert(head + 1, f"{key} = {value}")
                end += 1
            else:
                lines[hit] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--side-by-side", type=int, choices=(1, 2), default=2, help="runs at a time (2: one per core)")
    ap.add_argument("--out", default=str(ROOT / "precision-study"))
    a = ap.parse_args(argv)
    cfg = Path(a.config).resolve()
    text = cfg.read_text()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # relative data paths in the config resolve against its folder: the copies live there too
    jobs = []
    for seed in a.seeds:
        for prec in ("float32", "float64"):
            name = f"{cfg.stem}-{prec}-s{seed}"
            run_dir = out / name
            c = cfg.parent / f".{name}.toml"
            c.write_text(with_keys(text, {"loss": {"precision": f'"{prec}"'}, "model": {"seed": str(seed)},
                                          "output": {"dir": json.dumps(str(run_dir))}}))  # fmt: skip
            jobs.append((seed, prec, c, out / f"{name}.json"))
    results = {}
    for k in range(0, len(jobs), a.side_by_side):
        batch = jobs[k : k + a.side_by_side]
        procs = [subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "real_data.py"), str(c), "--json", str(j)],
                                  stdout=subprocess.DEVNULL) for _, _, c, j in batch]  # fmt: skip
        for p in procs:
            p.wait()
        for seed, prec, c, j in batch:
            c.unlink(missing_ok=True)
            results[(seed, prec)] = json.loads(j.read_text()) if j.exists() else None
    print(f"{cfg.name}: test errors of model.json, seeds {a.seeds}, {a.side_by_side} run(s) at a time")
    print(f"{'seed':>4} {'passes':>8} {'E MAE':>7} {'E RMSE':>7} {'F MAE':>7} {'F RMSE':>7} {'iters':>6} {'wall s':>7}  fallback")
    for (seed, prec), r in sorted(results.items()):
        if r is None:
            print(f"{seed:4d} {prec:>8}  failed")
            continue
        last = r["last"]
        run_dir = out / f"{cfg.stem}-{prec}-s{seed}"
        log = (run_dir / "train-stdout.txt").read_text() if (run_dir / "train-stdout.txt").exists() else ""
        m = re.search(r"iteration (\d+): the optimiser stopped with float32", log)
        print(f"{seed:4d} {prec:>8} {last['energy_mae_mev_per_atom']:7.2f} {last['energy_rmse_mev_per_atom']:7.2f} "
              f"{last['force_mae_ev_per_a']:7.4f} {last['force_rmse_ev_per_a']:7.3f} {r['iterations']:6d} {r['wall_s']:7.1f}  "
              f"{'at ' + m.group(1) if m else '-'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
