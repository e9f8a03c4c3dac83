"""Training configuration: a plain TOML file, validated up front.

Every key is checked for name and type before any work starts; an unknown or
mistyped key is an error that names the key and the file.  Units: Å for
lengths, eV for energies, eV/Å for forces, GiB for memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError


class ConfigError(InputError):
    """A problem with the configuration file; the message names file and key."""


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # paths or globs
    validation: list[str] = field(default_factory=list)  # optional separate files
    validation_fraction: float = 0.1
    seed: int = 0
    split_key: str = ""  # atoms.info key whose value says "train"/"validation"
    validation_values: list[str] = field(default_factory=list)  # with split_key: these values are validation, the rest training
    index: str = ":"  # ASE index applied to each file
    # filters, applied before the split (0 = off); dropped images are listed in OUTDIR/filtered.tsv
    # eV/atom above the lowest energy per atom of the training files, after per-element
    # reference energies (reference_energies, else fitted by least squares)
    max_energy_above_min: float = 0.0
    max_force: float = 0.0  # eV/Å: largest atomic force |F_i| of an image
    reference_energies: dict[str, float] = field(default_factory=dict)  # eV per atom of each element


@dataclass
class ElementFingerprintConfig:
    """Per-element override of the symmetry-function set (any key may be left out)."""

    g2_etas: list[float] | None = None
    g2_offsets: list[float] | None = None
    g4_etas: list[float] | None = None
    g4_zetas: list[float] | None = None
    g4_gammas: list[float] | None = None


@dataclass
class FingerprintConfig:
    cutoff: float = 6.5  # Å
    # "auto" (from the data's distances), "default" (a fixed small set) or "amp" (Amp 1.0.1's);
    # unset with g2_etas or g2_offsets written: "default", completed by those lists
    preset: str = "auto"
    n_radial: int = 8  # preset "auto": shifted radial G2 per neighbour element
    g2_etas: list[float] | None = None  # None: from the preset
    g2_offsets: list[float] = field(default_factory=lambda: [0.0])  # Rs, Å
    g4_etas: list[float] | None = None
    g4_zetas: list[float] | None = None
    g4_gammas: list[float] | None = None
    elements: dict[str, ElementFingerprintConfig] = field(default_factory=dict)
    storage: str = "float32"  # derivatives: "float32" (default: half the bytes, gradient within 1e-9 of float64), "float64" or "recompute"
    cache: str = ""  # HDF5 fingerprint cache file ("" = off)
    # network inputs: "standard" ((G - mean)/std over the training atoms) or "minmax" (training
    # range to [-1, 1], Amp's).  TiO2, 28 min: 3.95 -> 3.18 meV/atom held-out RMSE (README)
    scaling: str = "standard"


@dataclass
class ModelConfig:
    hidden: list[int] = field(default_factory=lambda: [20, 20])
    activation: str = "tanh"  # tanh, sigmoid, linear
    seed: int = 0  # weight initialisation
    elements: list[str] = field(default_factory=list)  # default: from the data


@dataclass
class LossConfig:
    force_coefficient: float = 0.3  # alpha in Amp's loss (Amp: 0.04); with standardised inputs the best of 0.3-3 on Mo DFT data, equal to 1 on the reference split (README)
    # arithmetic of the training's network passes: "float32" rounds weights, inputs and
    # activations (per-atom energies and the sums over blocks, images and ranks stay
    # float64; loss within ~1e-7 of float64's) and falls back to "float64" when the
    # optimiser stalls on the rounding.
    # Measured (README): the same test errors per iteration on Mo (3 seeds) and the demo,
    # TiO2 27% less time per evaluation and better held-out errors in the same 10 minutes.
    # The model file and every prediction are float64 either way; method "lm" (its Jacobian
    # is float64) always uses float64 passes.
    precision: str = "float32"


@dataclass
class OptimizerConfig:
    # "lbfgs" (hpcpot's: ~50 µs per step on rank 0, history 50), "lbfgsb" (scipy's, the same
    # method: ~750 µs, equal results on Mo over 6 seed/α pairs, README), "bfgs", "cg"
    # (nonlinear conjugate gradient) or "lm" (Levenberg–Marquardt)
    method: str = "lbfgs"
    max_iterations: int = 5000  # a budget: real DFT sets were still improving at 1000 (Mo: 6000)
    max_time: float = 0.0  # s of optimisation (restarts included, set-up not); 0 = no limit
    history: int = 50  # L-BFGS memory, pairs kept (scipy's maxcor); 50 beat 10 on Mo DFT data (README)
    # Levenberg–Marquardt: (JᵀJ + μ I) δ = −Jᵀr; μ is multiplied by lm_decrease after a step
    # the quadratic model predicted well (gain ratio > 0.75), by lm_increase after a rejected
    # or poorly predicted one (< 0.25)
    lm_damping: float = 1e-3  # initial μ (units of the loss per parameter²)
    lm_increase: float = 10.0
    lm_decrease: float = 0.3  # 0.1 made every other trial step fail (μ bounced 10x down, 10x up)
    force_fraction: float = 1.0  # share of force components drawn into JᵀJ each iteration
    lm_seed: int = 0  # seed of that draw


@dataclass
class ConvergenceConfig:
    energy_rmse: float = 0.001  # eV/atom; <= 0 disables
    force_rmse: float = 0.1  # eV/Å; <= 0 disables
    energy_maxresid: float = 0.0  # eV/atom; 0 disables
    force_maxresid: float = 0.0  # eV/Å; 0 disables
    on: str = "train"  # "train" or "validation": which set must meet the criteria


@dataclass
class AnnealConfig:
    enabled: bool = False
    tmax: float = 2000.0
    tmin: float = 2.5
    steps: int = 10000
    updates: int = 0  # 0: steps // 200
    step_size: float = 0.05  # std of the Gaussian parameter move
    auto: bool = False  # estimate tmax/tmin from exploratory runs
    seed: int = 0


@dataclass
class CheckpointConfig:
    every: int = 50  # iterations; 0 = only on signals and at the end
    # seconds: a checkpoint due by `every` is skipped while the last one is younger than this
    # (0: none).  At 64 ranks an iteration can take ~1 ms, and 50 of them are no reason to
    # fsync a file (1.4 ms on a local disk here, far more on a parallel file system)
    min_interval: float = 60.0
    keep: int = 2  # checkpoint files kept


@dataclass
class ParallelConfig:
    memory_per_rank: float = 0.0  # GiB; 0 = node memory / ranks on the node
    # "replicated": every rank runs an identical copy of the optimiser on the allreduced
    # gradient (one collective per evaluation, no wait on rank 0); "rank0": rank 0 runs it
    # and broadcasts the parameters.  Annealing and "lm" always use "rank0".
    optimizer: str = "replicated"


@dataclass
class OutputConfig:
    dir: str = "run"
    overwrite: bool = False
    validate_every: int = 10  # iterations between validation-set evaluations (and, with convergence.on = "validation", convergence tests)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    fingerprints: FingerprintConfig = field(default_factory=FingerprintConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    convergence: ConvergenceConfig = field(default_factory=ConvergenceConfig)
    anneal: AnnealConfig = field(default_factory=AnnealConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    path: str = ""  # the file it came from (not a TOML key)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d

    def digest(self, sections: tuple[str, ...] = ("data", "fingerprints", "model", "loss")) -> str:
        """Hash of the sections that define the problem being trained (for restarts)."""
        d = self.to_dict()
        d["loss"].pop("precision")  # the same problem in other arithmetic: a run may resume with either
        blob = json.dumps({k: d[k] for k in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_CHOICES = {
    ("fingerprints", "preset"): ("default", "amp", "auto"),
    ("fingerprints", "storage"): ("float64", "float32", "recompute"),
    ("fingerprints", "scaling"): ("minmax", "standard"),
    ("loss", "precision"): ("float64", "float32"),
    ("model", "activation"): ("tanh", "sigmoid", "linear"),
    ("optimizer", "method"): ("lbfgsb", "lbfgs", "bfgs", "cg", "lm"),
    ("parallel", "optimizer"): ("replicated", "rank0"),
    ("convergence", "on"): ("train", "validation"),
}


def _check_value(value: Any, annotation: str, where: str) -> Any:
    """Coerce/validate one TOML value against a dataclass field annotation string."""
    ann = annotation.replace(" ", "")
    optional = ann.endswith("|None")
    if optional:
        ann = ann[: -len("|None")]
    if ann == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if ann == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if ann == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if ann == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if ann == "dict[str,float]":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table such as {{ O = -432.1, Ti = -1603.4 }}, got {value!r}")
        return {str(k): _check_value(v, "float", f"{where}.{k}") for k, v in value.items()}
    if ann.startswith("list["):
        inner = ann[5:-1]
        if isinstance(value, str) and inner == "str":
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_value(v, inner, f"{where}[{k}]") for k, v in enumerate(value)]
    raise AssertionError(f"unhandled annotation {annotation}")


def _fill(cls: type, table: Any, where: str, section: str = "") -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields or key == "path":
            raise ConfigError(
                f"{where}: unknown key '{key}' (allowed: {', '.join(k for k in fields if k != 'path')})"
            )
        ann = str(fields[key].type)
        if ann.startswith("dict[str,ElementFingerprintConfig]") or ann.startswith(
            "dict[str, ElementFingerprintConfig]"
        ):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table of elements")
            kwargs[key] = {
                el: _fill(ElementFingerprintConfig, sub, f"{where}.{key}.{el}") for el, sub in value.items()
            }
        else:
            kwargs[key] = _check_value(value, ann, f"{where}.{key}")
    obj = cls(**kwargs)
    for (sec, key), allowed in _CHOICES.items():
        if sec == section and getattr(obj, key, None) not in allowed and key in table:
            raise ConfigError(f"{where}.{key}: {getattr(obj, key)!r} is not one of {allowed}")
    return obj


def _check_ranges(cfg: Config, src: str) -> None:
    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"{src}: [{key.split('.')[0]}] {key.split('.', 1)[1]}: {msg}")

    if not 0.0 <= cfg.data.validation_fraction < 1.0:
        bad("data.validation_fraction", "must be in [0, 1)")
    if cfg.data.validation_values and not cfg.data.split_key:
        bad("data.validation_values", "needs split_key (the atoms.info key whose values these are)")
    for key in ("max_energy_above_min", "max_force"):
        if not (math.isfinite(getattr(cfg.data, key)) and getattr(cfg.data, key) >= 0):
            bad(f"data.{key}", "must be a finite number >= 0 (0 = off)")
    from ase.data import chemical_symbols

    for el, e in cfg.data.reference_energies.items():
        if el not in chemical_symbols[1:]:
            bad(f"data.reference_energies.{el}", "not a chemical symbol")
        if not math.isfinite(e):
            bad(f"data.reference_energies.{el}", "must be a finite number (eV per atom)")
    fp = cfg.fingerprints
    if not (math.isfinite(fp.cutoff) and fp.cutoff > 0):
        bad("fingerprints.cutoff", "must be a finite number > 0 (Å)")
    if fp.preset == "auto":
        if fp.n_radial < 1:
            bad("fingerprints.n_radial", "must be >= 1")
        for key in ("g2_etas",):
            if getattr(fp, key) is not None or fp.g2_offsets != [0.0]:
                bad(f"fingerprints.{key if getattr(fp, key) is not None else 'g2_offsets'}",
                    'the radial functions of preset = "auto" come from the data; set them only with another preset')  # fmt: skip
    for owner, sets in [("fingerprints", fp), *((f"fingerprints.elements.{el}", o) for el, o in fp.elements.items())]:
        for key in ("g2_etas", "g4_etas"):
            vals = getattr(sets, key)
            if vals is not None and any(not (math.isfinite(v) and v >= 0) for v in vals):
                raise ConfigError(f"{src}: [{owner}] {key}: every eta must be a finite number >= 0")
        if sets.g4_zetas is not None and any(not (math.isfinite(z) and z >= 1) for z in sets.g4_zetas):
            raise ConfigError(f"{src}: [{owner}] g4_zetas: every zeta must be >= 1")
        if sets.g4_gammas is not None and any(abs(g) > 1 for g in sets.g4_gammas):
            raise ConfigError(f"{src}: [{owner}] g4_gammas: every gamma must be in [-1, 1]")
    a = cfg.anneal
    o = cfg.optimizer
    for key, ok, msg in (
        ("model.hidden", bool(cfg.model.hidden) and all(h > 0 for h in cfg.model.hidden),
         "need at least one hidden layer, all sizes positive"),
        ("optimizer.history", cfg.optimizer.history >= 1, "must be >= 1"),
        ("parallel.memory_per_rank", cfg.parallel.memory_per_rank >= 0, "must be >= 0 (GiB; 0 = automatic)"),
        ("loss.force_coefficient", cfg.loss.force_coefficient >= 0, "must be >= 0"),
        ("optimizer.max_iterations", cfg.optimizer.max_iterations >= 0, "must be >= 0"),
        ("optimizer.max_time", math.isfinite(cfg.optimizer.max_time) and cfg.optimizer.max_time >= 0,
         "must be a finite number >= 0 (seconds; 0 = no limit)"),
        ("optimizer.lm_damping", math.isfinite(o.lm_damping) and o.lm_damping > 0, "must be a finite number > 0"),
        ("optimizer.lm_increase", math.isfinite(o.lm_increase) and o.lm_increase > 1, "must be a finite number > 1"),
        ("optimizer.lm_decrease", 0 < o.lm_decrease < 1, "must be in (0, 1)"),
        ("optimizer.force_fraction", 0 < o.force_fraction <= 1, "must be in (0, 1]"),
        ("anneal.tmax", not a.enabled or a.tmax > a.tmin > 0, "need tmax > tmin > 0"),
        ("anneal.steps", a.steps >= 1, "must be >= 1"),
        ("checkpoint.every", cfg.checkpoint.every >= 0, "must be >= 0"),
        ("checkpoint.min_interval", math.isfinite(cfg.checkpoint.min_interval) and cfg.checkpoint.min_interval >= 0,
         "must be a finite number >= 0 (seconds; 0 = none)"),
        ("checkpoint.keep", cfg.checkpoint.keep >= 1, "must be >= 1"),
    ):  # fmt: skip
        if not ok:
            bad(key, msg)


def parse_config(table: dict[str, Any], source: str = "<config>") -> Config:
    """Build a validated Config from a parsed TOML table (paths are left as written;
    :func:`load_config` resolves them against the config file's folder)."""
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "path"}
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}] (allowed: {', '.join(sections)})")
        kwargs[name] = _fill(sections[name].default_factory, value, f"{source}: [{name}]", name)
    cfg = Config(**kwargs, path=source)
    fp_table = table.get("fingerprints", {})
    explicit_radial = {"g2_etas", "g2_offsets"} & (set(fp_table) | {k for o in fp_table.get("elements", {}).values() for k in o})
    if "preset" not in fp_table and explicit_radial:
        cfg.fingerprints.preset = "default"  # hand-written radial lists complete the fixed set, as before "auto"
    _check_ranges(cfg, source)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file; relative paths resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    cfg = parse_config(table, str(path))
    base = path.resolve().parent

    def rel(p: str) -> str:
        return p if Path(p).is_absolute() else str(base / p)

    cfg.data.train = [rel(p) for p in cfg.data.train]
    cfg.data.validation = [rel(p) for p in cfg.data.validation]
    cfg.output.dir = rel(cfg.output.dir)
    if cfg.fingerprints.cache:
        cfg.fingerprints.cache = rel(cfg.fingerprints.cache)
    if not cfg.data.train:
        raise ConfigError(f"{path}: [data] train: at least one file or glob is required")
    return cfg
