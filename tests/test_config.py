"""Configuration: defaults, and every mistake is a ConfigError naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcpot.training.config import Config, ConfigError, FingerprintConfig, load_config, parse_config
from hpcpot.training.descriptors import symmetry_functions

SRC = "/some/where/train.toml"


def bad(table: dict, *words: str) -> str:
    """parse_config(table) must raise a ConfigError naming SRC and each of ``words``."""
    with pytest.raises(ConfigError) as exc:
        parse_config(table, SRC)
    msg = str(exc.value)
    assert SRC in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def write(tmp_path: Path, text: str, name: str = "train.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --------------------------------------------------------------------------- defaults


def test_defaults():
    cfg = parse_config({}, SRC)
    assert isinstance(cfg, Config)
    assert cfg.path == SRC
    assert cfg.data.train == [] and cfg.data.validation == []
    assert cfg.data.validation_fraction == 0.1 and cfg.data.seed == 0
    assert cfg.data.split_key == "" and cfg.data.index == ":"
    fp = cfg.fingerprints
    assert fp.cutoff == 6.5 and fp.preset == "auto"
    assert fp.g2_etas is None and fp.g2_offsets == [0.0] and fp.elements == {}
    assert fp.storage == "float32" and fp.cache == ""
    assert cfg.model.hidden == [20, 20] and cfg.model.activation == "tanh" and cfg.model.elements == []
    assert cfg.loss.force_coefficient == 0.3
    assert cfg.optimizer.method == "lbfgs" and cfg.optimizer.max_iterations == 5000
    assert cfg.convergence.energy_rmse == 0.001 and cfg.convergence.force_rmse == 0.1
    assert cfg.convergence.on == "train"
    assert cfg.anneal.enabled is False
    assert cfg.checkpoint.every == 50 and cfg.checkpoint.keep == 2
    assert cfg.output.dir == "run" and cfg.output.overwrite is False
    # preset "default": 20 functions per element for two elements
    sf = symmetry_functions(FingerprintConfig(preset="default"), ["Pt", "O"])
    assert list(sf.n_functions) == [20, 20]
    # sections given but empty are the defaults too
    empty = parse_config({s: {} for s in cfg.to_dict()}, SRC)
    assert empty.to_dict() == cfg.to_dict()
    assert "path" not in cfg.to_dict()


def test_values_are_taken_and_coerced():
    table = {
        "data": {"train": "one.traj", "validation_fraction": 0, "seed": 3},
        "fingerprints": {"cutoff": 5, "g4_zetas": [1, 2.5], "storage": "float32"},
        "model": {"hidden": [10], "activation": "sigmoid"},
        "optimizer": {"method": "bfgs"},
        "output": {"overwrite": True},
    }
    cfg = parse_config(table, SRC)
    assert cfg.data.train == ["one.traj"]  # a single string is a one-element list
    assert cfg.data.validation_fraction == 0.0 and isinstance(cfg.data.validation_fraction, float)
    assert cfg.fingerprints.cutoff == 5.0 and isinstance(cfg.fingerprints.cutoff, float)
    assert cfg.fingerprints.g4_zetas == [1.0, 2.5]
    assert cfg.model.hidden == [10] and cfg.model.activation == "sigmoid"
    assert cfg.optimizer.method == "bfgs" and cfg.output.overwrite is True
    assert cfg.digest() != parse_config({}, SRC).digest()
    assert cfg.digest() == parse_config(table, "other.toml").digest()  # the file name is not part of it
    # the digest covers the problem definition, not e.g. the output folder
    assert cfg.digest() == parse_config({**table, "output": {"dir": "elsewhere"}}, SRC).digest()
    assert cfg.digest() != parse_config({**table, "loss": {"force_coefficient": 0.2}}, SRC).digest()
    # the arithmetic of the network passes is not the problem: a run may resume with the other
    assert cfg.digest() == parse_config({**table, "loss": {**table.get("loss", {}), "precision": "float32"}}, SRC).digest()


# --------------------------------------------------------------------------- errors


def test_unknown_section():
    bad({"modle": {"hidden": [5]}}, "modle", "section")


def test_unknown_key():
    msg = bad({"model": {"hiden": [5]}}, "hiden", "[model]")
    assert "hidden" in msg  # lists the allowed keys
    bad({"data": {"path": "x"}}, "'path'")  # the internal field is not a key
    bad({"fingerprints": {"elements": {"O": {"g2_eta": [1.0]}}}}, "g2_eta", "elements.O")


def test_unknown_key_in_file(tmp_path):
    p = write(tmp_path, '[data]\ntrain = ["a.traj"]\n\n[loss]\nforce_coef = 0.1\n')
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(p) in str(exc.value) and "force_coef" in str(exc.value)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"model": {"hidden": "20"}}, "hidden"),
        ({"model": {"hidden": [20, "20"]}}, "hidden[1]"),
        ({"model": {"hidden": [20, 2.5]}}, "hidden[1]"),
        ({"model": {"hidden": [True]}}, "hidden[0]"),
        ({"data": {"seed": 1.5}}, "seed"),
        ({"data": {"train": 5}}, "train"),
        ({"data": {"validation_fraction": "0.1"}}, "validation_fraction"),
        ({"fingerprints": {"cutoff": True}}, "cutoff"),
        ({"fingerprints": {"g2_etas": 4.0}}, "g2_etas"),
        ({"fingerprints": {"elements": {"O": {"g2_etas": ["a"]}}}}, "g2_etas[0]"),
        ({"fingerprints": {"elements": {"O": [1.0]}}}, "elements.O"),
        ({"fingerprints": {"elements": "O"}}, "elements"),
        ({"output": {"overwrite": 1}}, "overwrite"),
        ({"model": {"activation": 1}}, "activation"),
        ({"data": ["a.traj"]}, "[data]"),
    ],
)
def test_wrong_type(table, key):
    bad(table, key)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("model", "activation", "relu"),
        ("fingerprints", "preset", "amp2"),
        ("fingerprints", "storage", "float16"),
        ("fingerprints", "scaling", "zscore"),
        ("optimizer", "method", "adam"),
        ("convergence", "on", "test"),
        ("loss", "precision", "float16"),
    ],
)
def test_bad_choice(section, key, value):
    msg = bad({section: {key: value}}, key, value)
    assert f"[{section}]" in msg


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("data", "validation_fraction", 1.0),
        ("data", "validation_fraction", -0.1),
        ("fingerprints", "cutoff", 0.0),
        ("fingerprints", "cutoff", -6.5),
        ("model", "hidden", [20, 0]),
        ("loss", "force_coefficient", -0.01),
        ("optimizer", "max_iterations", -1),
        ("checkpoint", "every", -1),
        ("checkpoint", "keep", 0),
        ("checkpoint", "min_interval", -1.0),
        ("checkpoint", "min_interval", float("inf")),
        ("anneal", "steps", 0),
    ],
)
def test_bad_range(section, key, value):
    bad({section: {key: value}}, key, section)


def test_bad_anneal_temperatures():
    bad({"anneal": {"enabled": True, "tmax": 1.0, "tmin": 2.0}}, "tmax", "anneal")
    bad({"anneal": {"enabled": True, "tmax": 10.0, "tmin": 0.0}}, "anneal")
    # not checked when annealing is off
    assert parse_config({"anneal": {"tmax": 1.0, "tmin": 2.0}}, SRC).anneal.enabled is False


def test_invalid_toml_and_missing_file(tmp_path):
    p = write(tmp_path, "[data\ntrain = 1\n")
    with pytest.raises(ConfigError, match="TOML") as exc:
        load_config(p)
    assert str(p) in str(exc.value)
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_config(missing)
    assert str(missing) in str(exc.value)


# --------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "cfgdir"
    sub.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = write(
        sub,
        '[data]\ntrain = ["data/a.traj", "../other/*.extxyz", "/abs/b.traj"]\nvalidation = "val.traj"\n'
        '[fingerprints]\ncache = "fp.h5"\n[output]\ndir = "out"\n',
    )
    monkeypatch.chdir(elsewhere)  # not the config's folder
    for arg in (p, str(p), Path("..") / "cfgdir" / "train.toml"):
        cfg = load_config(arg)
        base = sub.resolve()
        assert cfg.data.train == [str(base / "data/a.traj"), str(base / "../other/*.extxyz"), "/abs/b.traj"]
        assert cfg.data.validation == [str(base / "val.traj")]
        assert cfg.fingerprints.cache == str(base / "fp.h5")
        assert cfg.output.dir == str(base / "out")
    # the default output folder is next to the config too; no cache stays off
    q = write(sub, '[data]\ntrain = "x.traj"\n', "minimal.toml")
    cfg = load_config(q)
    assert cfg.output.dir == str(sub.resolve() / "run")
    assert cfg.fingerprints.cache == ""
    assert cfg.data.train == [str(sub.resolve() / "x.traj")]


def test_missing_train_is_error(tmp_path):
    for text in ("[model]\nhidden = [5]\n", "[data]\nseed = 1\n", "[data]\ntrain = []\n", ""):
        p = write(tmp_path, text)
        with pytest.raises(ConfigError) as exc:
            load_config(p)
        assert str(p) in str(exc.value) and "train" in str(exc.value)


def test_example_config_loads():
    ex = Path(__file__).resolve().parents[1] / "examples" / "o_pt111.toml"
    if not ex.exists():
        pytest.skip(f"{ex} not found")
    cfg = load_config(ex)
    assert len(cfg.data.train) >= 1 and Path(cfg.data.train[0]).is_absolute()
    assert cfg.fingerprints.cutoff == 6.5


# --------------------------------------------------------------------------- per-element fingerprints


def test_per_element_fingerprint_override(tmp_path):
    p = write(
        tmp_path,
        '[data]\ntrain = ["a.traj"]\n\n'
        "[fingerprints]\ncutoff = 6.0\n\n"
        "[fingerprints.elements.O]\ng2_etas = [0.5, 2.0, 9.0]\n",
    )
    cfg = load_config(p)
    assert set(cfg.fingerprints.elements) == {"O"}
    assert cfg.fingerprints.elements["O"].g2_etas == [0.5, 2.0, 9.0]
    assert cfg.fingerprints.elements["O"].g4_zetas is None
    sf = symmetry_functions(cfg.fingerprints, ["Pt", "O"])
    ref = symmetry_functions(FingerprintConfig(cutoff=6.0, preset="default"), ["Pt", "O"])
    d, r = sf.to_dict()["functions"], ref.to_dict()["functions"]
    # Pt unchanged
    assert d["Pt"] == r["Pt"]
    # O: 3 etas x 2 neighbour elements G2, the G4 part as before
    assert list(sf.n_functions) == [6 + 12, 20]
    assert [(f["eta"], f["element"]) for f in d["O"][:6]] == [
        (0.5, "O"), (0.5, "Pt"), (2.0, "O"), (2.0, "Pt"), (9.0, "O"), (9.0, "Pt"),
    ]  # fmt: skip
    assert d["O"][6:] == r["O"][8:]
    assert sf.cutoff == 6.0
    # the padded arrays agree with the dict
    np.testing.assert_array_equal(sf.g2[0, :6, 0], [0.5, 0.5, 2.0, 2.0, 9.0, 9.0])


def test_per_element_override_other_keys_and_preset():
    cfg = parse_config(
        {
            "fingerprints": {
                "preset": "amp",
                "g4_zetas": [1.0],
                "elements": {"Pt": {"g2_offsets": [0.0, 1.5], "g4_gammas": [1.0]}},
            }
        },
        SRC,
    )
    sf = symmetry_functions(cfg.fingerprints, ["O", "Pt"])
    d = sf.to_dict()["functions"]
    # O: amp G2 etas (4 x 2), G4 1 zeta x 2 gammas x 3 pairs
    assert len(d["O"]) == 8 + 6
    # Pt: amp etas x 2 offsets x 2 elements, G4 1 zeta x 1 gamma x 3 pairs
    assert len(d["Pt"]) == 16 + 3
    assert [f["Rs"] for f in d["Pt"][:4]] == [0.0, 0.0, 1.5, 1.5]
    assert all(f["gamma"] == 1.0 for f in d["Pt"][16:])
    np.testing.assert_allclose(sorted({f["eta"] for f in d["Pt"][:16]}), np.logspace(np.log10(0.05), np.log10(5.0), 4))


@pytest.mark.parametrize(
    "table, key",
    [
        ({"fingerprints": {"cutoff": float("nan")}}, "cutoff"),
        ({"fingerprints": {"cutoff": float("inf")}}, "cutoff"),
        ({"optimizer": {"history": 0}}, "history"),
        ({"model": {"hidden": []}}, "hidden"),
        ({"fingerprints": {"g4_zetas": [0.0]}}, "g4_zetas"),
        ({"fingerprints": {"g2_etas": [-1.0]}}, "g2_etas"),
        ({"fingerprints": {"elements": {"O": {"g4_gammas": [2.0]}}}}, "g4_gammas"),
        ({"parallel": {"memory_per_rank": -1.0}}, "memory_per_rank"),
    ],
)
def test_more_bad_ranges_name_the_key(table, key):
    from hpcpot.training.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=key):
        parse_config(table, "run.toml")


def test_override_for_an_element_not_in_the_model_is_an_error():
    from hpcpot.training.config import ConfigError, parse_config
    from hpcpot.training.descriptors import symmetry_functions

    cfg = parse_config({"fingerprints": {"elements": {"Oxygen": {"g2_etas": [1.0]}}}}, "run.toml")
    with pytest.raises(ConfigError, match="Oxygen"):
        symmetry_functions(cfg.fingerprints, ["O", "Pt"])


def test_hand_written_radial_lists_without_preset_complete_the_default_set():
    """Before "auto" was the default, g2 lists completed the "default" set; they still do,
    and an explicit preset = "auto" with them stays an error."""
    assert parse_config({"fingerprints": {"g2_etas": [1.0]}}).fingerprints.preset == "default"
    assert parse_config({"fingerprints": {"elements": {"O": {"g2_offsets": [1.0]}}}}).fingerprints.preset == "default"
    assert parse_config({"fingerprints": {"g4_zetas": [1.0]}}).fingerprints.preset == "auto"
    with pytest.raises(ConfigError, match="g2_etas"):
        parse_config({"fingerprints": {"preset": "auto", "g2_etas": [1.0]}})


def test_validation_values_need_split_key():
    with pytest.raises(ConfigError, match=r"validation_values: needs split_key"):
        parse_config({"data": {"validation_values": ["data_3"]}})
    assert parse_config({"data": {"split_key": "system", "validation_values": "data_3"}}).data.validation_values == ["data_3"]
