"""Typed defence settings, the one registry of defences, and the conformance of every registered defence."""

from __future__ import annotations

import pytest

from backdoorlab.defenses.conformance import check_defence_class
from backdoorlab.defenses.securegaze import SecureGaze, SecureGazeUnlearning
from backdoorlab.errors import ConfigError
from backdoorlab.experiments.defence_config import defence_config, load_defence_config, nest, parse_params
from backdoorlab.experiments.defend import build_detector, build_mitigator
from backdoorlab.registry import DEFENCES


@pytest.mark.parametrize("method", DEFENCES.names())
def test_every_registered_defence_conforms(method: str) -> None:
    entry = DEFENCES.get(method)
    assert entry.classes  # a method offers at least one shape
    for shape, cls in entry.classes.items():
        assert cls.shape == shape and cls.name == method
        check_defence_class(cls, entry.configs[shape])


def test_the_registry_holds_the_built_in_methods_by_shape() -> None:
    assert {"securegaze", "neural_cleanse", "fine_tuning", "fine_pruning", "lsa_reversal", "flicker"} <= set(
        DEFENCES.names()
    )
    assert DEFENCES.get("securegaze").classes == {"detection": SecureGaze, "mitigation": SecureGazeUnlearning}


def test_an_unknown_method_lists_the_registered_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"^unknown detection method 'strip'; registered: lsa_reversal, neural_cleanse, securegaze$"
    ):
        build_detector("strip")
    with pytest.raises(
        ConfigError, match=r"'fine_tuning' offers mitigation\); registered: lsa_reversal, neural_cleanse, securegaze"
    ):
        build_detector("fine_tuning")
    with pytest.raises(ConfigError, match=r"unknown mitigation method 'neural_cleanse' .*fine_pruning, fine_tuning"):
        build_mitigator("neural_cleanse")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"tune": {"lr": -1}}, r"securegaze\.tune\.lr: Input should be greater than 0 \(got -1\)"),
        ({"tune.lr": "fast"}, r"securegaze\.tune\.lr: Input should be a valid number"),
        ({"tune": {"momentum": 0.9}}, r"unknown key 'securegaze\.tune\.momentum'"),
        ({"stepz": 3}, r"unknown key 'securegaze\.stepz'"),
        ({"steps": 2.5}, r"securegaze\.steps: Input should be a valid integer"),
        ({"clean_targets": "teacher"}, r"securegaze\.clean_targets: Input should be 'model' or 'label'"),
        ({"scan_shapes": [[0.2, 1.5]]}, r"securegaze\.scan_shapes\.0\.1: Input should be less than or equal to 1"),
        ({"tune": 3}, r"securegaze\.tune: Input should be a valid dictionary"),
    ],
)
def test_bad_settings_name_their_dotted_key(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        defence_config("securegaze", "mitigation", settings)


def test_detector_settings_refuse_the_mitigators_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'securegaze\.tune'"):
        build_detector("securegaze", {"tune.lr": 1e-3})
    with pytest.raises(ConfigError, match=r"unknown key 'securegaze\.paired'"):
        build_detector("securegaze", {"paired": False})


def test_yaml_param_shorthand_and_flat_dicts_give_the_same_settings_and_hash(tmp_path) -> None:
    path = tmp_path / "defence.yaml"
    path.write_text("method: securegaze\nsteps: 150\ntune: {lr: 2.0e-4, epochs: 3}\n")
    from_yaml = load_defence_config("mitigation", path)
    from_params = load_defence_config(
        "mitigation", None, "securegaze", parse_params(["steps=150", "tune.lr=2e-4", "tune.epochs=3"])
    )
    flat = defence_config("securegaze", "mitigation", {"steps": 150, "tune.lr": 2e-4, "tune.epochs": 3})
    assert from_yaml == from_params == flat
    assert from_yaml.settings_hash() == from_params.settings_hash() == flat.settings_hash()
    assert from_yaml.settings_hash() != defence_config("securegaze", "mitigation").settings_hash()
    # the hash is of what is computed: where it runs is not part of it
    assert load_defence_config("mitigation", path, device="cpu").settings_hash() == from_yaml.settings_hash()
    # a --param overrides one key of a file's section, keeping the others
    over = load_defence_config("mitigation", path, params={"tune.epochs": 5})
    assert (over.tune.lr, over.tune.epochs, over.steps) == (2e-4, 5, 150)
    # the dump has every default filled in, and reads back to the same settings
    dump = from_yaml.dump()
    assert dump["method"] == "securegaze" and dump["tune"]["batch_size"] == 32 and dump["budget"] == 0.03
    assert defence_config("securegaze", "mitigation", dump) == from_yaml
    with pytest.raises(ConfigError, match="method 'securegaze' does not match --method 'fine_tuning'"):
        load_defence_config("mitigation", path, "fine_tuning")


def test_build_from_flat_dicts_as_the_bench_calls_it() -> None:
    fixer = build_mitigator("securegaze", {"steps": 3, "paired": False, "tune.epochs": 2}, "cpu")
    assert isinstance(fixer, SecureGazeUnlearning) and fixer.detector.steps == 3 and not fixer.paired
    assert fixer.settings.epochs == 2 and fixer.device == "cpu" and fixer.detector.device == "cpu"
    assert build_detector("securegaze", {"device": "cuda"}, "cpu").device == "cuda"  # params win over the argument


def test_nest_merges_dotted_and_nested_keys_and_refuses_a_value_used_as_a_section() -> None:
    assert nest({"tune.lr": 1, "tune": {"epochs": 2}, "a": 3}) == {"tune": {"lr": 1, "epochs": 2}, "a": 3}
    with pytest.raises(ConfigError, match="'steps' is a value, not a section"):
        nest({"steps": 3, "steps.x": 1})
