"""Run configs: strict validation with dotted key names, --set overrides, stable hashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_experiments import write_yaml

from backdoorlab.errors import ConfigError
from backdoorlab.experiments.config import (
    RunConfig,
    apply_overrides,
    load_config,
    parse_override,
    validate_config,
)
from backdoorlab.experiments.demos.gaze import demo_config


def test_defaults_validate() -> None:
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert cfg.task == "gaze" and cfg.model.name == "gaze_cnn" and cfg.data.source == "synthetic"
    assert cfg.train.epochs == 12 and cfg.train.schedule == "cosine"
    # the dump of a config is itself a valid config with the same hash
    assert validate_config(yaml.safe_load(cfg.to_yaml())).config_hash() == cfg.config_hash()


def test_an_empty_file_is_refused_not_read_as_all_defaults(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml is empty"):
        load_config(p)
    p.write_text("name: defaults\n")  # all defaults, said out loud
    assert load_config(p) == RunConfig(name="defaults")


def test_packaged_demo_config_validates() -> None:
    full, quick = demo_config(), demo_config(quick=True)
    assert full.name == "demo-clean-gaze" and full.data.synthetic["size"] == 64
    assert quick.name == "demo-quick" and quick.data.synthetic["size"] == 32 and quick.train.epochs == 1
    # the quick merge keeps the keys it does not override
    assert quick.data.synthetic["kind"] == "face" and quick.train.lr == full.train.lr


def test_yaml_file_values_are_used(tmp_path: Path) -> None:
    p = write_yaml(
        tmp_path / "c.yaml",
        {"name": "abc", "train": {"epochs": 3, "lr": 0.01}, "data": {"synthetic": {"size": 32}}},
    )
    cfg = load_config(p)
    assert cfg.name == "abc" and cfg.train.epochs == 3 and cfg.train.lr == 0.01
    assert cfg.data.synthetic["size"] == 32
    assert cfg.train.batch_size == 64  # untouched default


@pytest.mark.parametrize(
    ("raw", "dotted"),
    [
        ({"epochs": 3}, "epochs"),
        ({"train": {"epochz": 3}}, "train.epochz"),
        ({"data": {"synthetic": {"sise": 32}}}, "data.synthetic.sise"),
        ({"model": {"name": "gaze_cnn", "width": 8}}, "model.width"),
    ],
)
def test_unknown_key_names_the_dotted_path(tmp_path: Path, raw: dict[str, Any], dotted: str) -> None:
    p = write_yaml(tmp_path / "c.yaml", raw)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert f"unknown key '{dotted}'" in msg
    assert str(p) in msg


def test_all_errors_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"train": {"epochz": 1, "lr": -1}, "seedd": 0})
    msg = str(info.value)
    assert "train.epochz" in msg and "train.lr" in msg and "seedd" in msg


@pytest.mark.parametrize(
    ("raw", "dotted", "got"),
    [
        ({"train": {"epochs": "many"}}, "train.epochs", "'many'"),
        ({"train": {"epochs": 0}}, "train.epochs", "0"),
        ({"train": {"lr": 100}}, "train.lr", "100"),
        ({"train": {"schedule": "linear"}}, "train.schedule", "'linear'"),
        ({"model": {"name": "vgg"}}, "model.name", "'vgg'"),
        ({"data": {"synthetic": {"size": 8}}}, "data.synthetic.size", "8"),
        ({"device": "gpu"}, "device", "'gpu'"),
        ({"train": [1, 2]}, "train", "[1, 2]"),
    ],
)
def test_ill_typed_value_names_the_key_and_the_value(raw: dict[str, Any], dotted: str, got: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(raw, "my.yaml")
    msg = str(info.value)
    assert f"my.yaml: {dotted}: " in msg
    assert f"(got {got})" in msg


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 81, "sp ace"])
def test_run_name_cannot_escape_the_runs_folder(name: str) -> None:
    with pytest.raises(ConfigError, match="name"):
        validate_config({"name": name})


@pytest.mark.parametrize("source", ["mpiigaze", "mpiifacegaze", "ethxgaze", "folder"])
def test_real_sources_need_a_path(source: str) -> None:
    with pytest.raises(ConfigError, match=rf"data\.path is required when data\.source is '{source}'"):
        validate_config({"data": {"source": source}})
    cfg = validate_config({"data": {"source": source, "path": "/somewhere"}})
    assert cfg.data.path == "/somewhere"


# ---------------------------------------------------------------- overrides


def test_overrides_nested_and_yaml_typed(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "c.yaml", {"train": {"epochs": 5, "lr": 0.01}})
    cfg = load_config(
        p,
        [
            "train.epochs=2",
            "train.schedule=constant",
            "data.synthetic.size=32",
            "model.kwargs={width: 8, feature_dim: 16}",
            "data.mask_eyes=true",
            "seed=0x10",
        ],
    )
    assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == 0.01  # sibling kept
    assert cfg.train.schedule == "constant"
    assert cfg.data.synthetic["size"] == 32
    assert cfg.model.kwargs == {"width": 8, "feature_dim": 16}
    assert cfg.data.mask_eyes is True
    assert cfg.seed == 16


def test_overrides_apply_in_order_and_do_not_mutate_input() -> None:
    raw = {"train": {"epochs": 5}}
    out = apply_overrides(raw, ["train.epochs=1", "train.epochs=3", "new.section.deep=x"])
    assert out == {"train": {"epochs": 3}, "new": {"section": {"deep": "x"}}}
    assert raw == {"train": {"epochs": 5}}


def test_override_creates_missing_and_null_sections(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\nname: x\n")  # train: null
    cfg = load_config(p, ["train.epochs=4", "data.synthetic.identities=7"])
    assert cfg.train.epochs == 4 and cfg.data.synthetic["identities"] == 7


def test_override_value_keeps_equals_signs() -> None:
    assert parse_override("name=a=b") == (["name"], "a=b")
    assert parse_override(" train.lr = 0.5") == (["train", "lr"], 0.5)
    # PyYAML reads 1e-3 as a string; the float field still gets a number
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 0.001
    assert parse_override("data.path=") == (["data", "path"], None)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs", "must look like key.path=value"),
        ("=3", "empty key"),
        ("...=3", "empty key"),
        ("train.epochs=[1,", "not valid YAML"),
        ("name.sub=1", "'name' is not a section"),
        ("train.epochs.deep=1", "'epochs' is not a section"),
    ],
)
def test_malformed_override(tmp_path: Path, override: str, match: str) -> None:
    p = write_yaml(tmp_path / "c.yaml", {"name": "x", "train": {"epochs": 2}})
    with pytest.raises(ConfigError, match=match):
        load_config(p, [override])


def test_override_with_unknown_or_ill_typed_key_is_still_validated() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epochz'"):
        load_config(None, ["train.epochz=3"])
    with pytest.raises(ConfigError, match=r"train\.epochs: .*\(got 'many'\)"):
        load_config(None, ["train.epochs=many"])


# ---------------------------------------------------------------- file problems


def test_non_mapping_yaml(tmp_path: Path) -> None:
    for text in ["- a\n- b\n", "just a string\n", "42\n"]:
        p = tmp_path / "c.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match="top level must be a mapping"):
            load_config(p)
    with pytest.raises(ConfigError, match="got list"):
        validate_config([1, 2])


def test_invalid_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochs: 3\nname: [\n")
    with pytest.raises(ConfigError, match=r"c\.yaml is not valid YAML"):
        load_config(p)


def test_binary_file_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    with pytest.raises(ConfigError, match=r"c\.yaml"):
        load_config(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- hashing


def test_config_hash_stable_under_key_order(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("name: r\nseed: 1\ntrain: {epochs: 3, lr: 0.01}\ndata: {test_identities: 2}\n")
    b.write_text("data: {test_identities: 2}\ntrain: {lr: 0.01, epochs: 3}\nseed: 1\nname: r\n")
    ha, hb = load_config(a).config_hash(), load_config(b).config_hash()
    assert ha == hb
    assert len(ha) == 12 and int(ha, 16) >= 0
    # explicit defaults hash like omitted ones: the hash is over the resolved config
    assert load_config(a, ["train.batch_size=64"]).config_hash() == ha


@pytest.mark.parametrize("override", ["seed=2", "train.epochs=4", "train.lr=0.02", "data.synthetic.size=48"])
def test_config_hash_changes_with_a_value(tmp_path: Path, override: str) -> None:
    a = write_yaml(tmp_path / "a.yaml", {"seed": 1, "train": {"epochs": 3, "lr": 0.01}})
    assert load_config(a).config_hash() != load_config(a, [override]).config_hash()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    if "grid" in raw or "runs" in raw:  # a sweep: every point must be a valid run
        from backdoorlab.experiments.sweep import expand, load_sweep

        planned = expand(*load_sweep(path), str(path))  # as the CLI does: the file's own paths resolve beside it
        assert len(planned) >= 2
        if path.parent.name == "zoo" and path.name == "gaze.yaml":  # the minimum zoo: 10 clean + 10 backdoored
            assert sum(r.config.attack is None for r in planned) >= 10
            assert sum(r.config.attack is not None for r in planned) >= 10
        if path.name == "gaze_resnet18.yaml":  # the ResNet-18 slice: every model a ResNet-18, every trigger type
            assert {r.config.model.name for r in planned} == {"resnet18"}
            triggers = {r.config.attack.trigger["name"] for r in planned if r.config.attack}
            assert triggers >= {"patch", "blend", "wanet", "sticker"}
        if path.name in ("gaze_holdout.yaml", "gaze_unseen.yaml"):  # held out: no shared attack, no shared seed
            others = ["gaze.yaml"] if path.name == "gaze_holdout.yaml" else ["gaze.yaml", "gaze_holdout.yaml"]
            tuning = [r for name in others for r in expand(*load_sweep(path.parent / name), str(path.parent / name))]
            seen = [r.config.attack for r in tuning if r.config.attack]
            held = [r.config.attack for r in planned if r.config.attack]
            assert held and all(a.trigger != b.trigger and a.relabel != b.relabel for a in held for b in seen)
            assert not {r.config.seed for r in planned} & {r.config.seed for r in tuning}
        if path.name == "gaze_unseen.yaml":  # every target off-centre, every trigger unlike white tape
            targets = [a.relabel.get("target_deg") for a in held if a.relabel["name"] == "target"]
            assert targets and all(max(abs(v) for v in t) >= 10 for t in targets)
            patches = [a.trigger for a in held if a.trigger["name"] == "patch"]
            assert all(t.get("pattern", "white") != "white" or t.get("opacity", 1) < 1 for t in patches)
        return
    cfg = load_config(path)
    if path.name.startswith("backdoor_"):
        assert cfg.attack is not None


def test_clean_config_hash_is_unchanged_by_the_attack_section() -> None:
    """Pinned: the hash of the default config from before attacks existed (store lookups key on it)."""
    assert RunConfig().config_hash() == "8404b70f73ae"
    assert RunConfig(attack={"trigger": {"name": "patch"}}).config_hash() != "8404b70f73ae"


def test_relative_paths_in_a_file_resolve_against_that_file_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: one rule for every path a config holds (the file's folder; the cwd for --set)."""
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    cfg = write_yaml(
        cfg_dir / "run.yaml",
        {
            "data": {"source": "folder", "path": "../data/scenes", "cache_dir": "cache"},
            "attack": {"trigger": {"name": "patch", "pattern": "tape.png"}},
        },
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # no such pattern file: validation of the trigger fails, but only after the path resolved
    with pytest.raises(ConfigError, match=str(cfg_dir / "tape.png")):
        load_config(cfg)
    raw = yaml.safe_load(cfg.read_text())
    raw["attack"]["trigger"]["pattern"] = "checkerboard"  # a built-in name is not a path
    write_yaml(cfg, raw)
    loaded = load_config(cfg)
    assert loaded.data.path == str(tmp_path / "data" / "scenes")
    assert loaded.data.cache_dir == str(cfg_dir / "cache")
    assert loaded.attack is not None and loaded.attack.trigger["pattern"] == "checkerboard"
    # typed on the command line: the working directory
    loaded = load_config(cfg, ["data.path=mine", "data.cache_dir=/abs/cache"])
    assert loaded.data.path == str(elsewhere / "mine")
    assert loaded.data.cache_dir == "/abs/cache"
    monkeypatch.chdir(tmp_path)
    assert load_config(cfg).config_hash() == load_config(cfg_dir / ".." / "configs" / "run.yaml").config_hash()
