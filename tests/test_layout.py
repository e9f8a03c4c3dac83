"""The package's one boundary: the potential never depends on training, MPI or the config."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hpcpot"


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    mod_parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if mod_parts[-1] == "__init__":
        mod_parts = mod_parts[:-1]
    package = mod_parts if path.name == "__init__.py" else mod_parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from . import x` imports module x
    return out


FORBIDDEN_FOR_POTENTIAL = ("hpcpot.training", "hpcpot.parallel", "hpcpot.config", "mpi4py")


def _forbidden_imports(folder: str) -> list[str]:
    files = sorted((PKG / folder).glob("*.py"))
    assert len(files) >= 3, files
    return [
        f"{f.name} imports {m}"
        for f in files
        for m in sorted(_imports(f))
        if any(m == p or m.startswith(p + ".") for p in FORBIDDEN_FOR_POTENTIAL)
    ]


def test_potential_imports_nothing_from_training_mpi_or_config():
    assert len(list((PKG / "potential").glob("*.py"))) >= 7
    bad = _forbidden_imports("potential")
    assert not bad, bad


def test_mpi_layer_knows_no_loss_layout():
    mods = _imports(PKG / "parallel.py")
    hp = sorted(m for m in mods if m.startswith("hpcpot"))
    assert all(m.startswith("hpcpot.errors") for m in hp), hp
    src = (PKG / "parallel.py").read_text()
    assert "N_HEAD" not in src


def test_import_scanner_sees_relative_imports():
    """The scanner itself: a relative import from training inside potential would be caught."""
    mods = _imports(PKG / "training" / "loss.py")
    assert "hpcpot.potential.predict" in mods
    assert "hpcpot.potential.predict.Batch" in mods


def test_lammps_package_imports_nothing_from_training_mpi_or_config():
    """pair_style hpcpot's build and runtime helpers belong to the potential half too."""
    bad = _forbidden_imports("lammps")
    assert not bad, bad
