"""``backdoorlab demo face_detection --quick`` end to end through the CLI, and the demo dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_experiments import flat, invoke
from typer.testing import CliRunner

from backdoorlab.experiments.demo import demo_module, demo_modules
from backdoorlab.experiments.demos.face_detection import COLUMNS, demo_configs

# the attack columns measured on each model (the clean model's are the baselines)
ATTACKS_MEASURED = {"clean model": ("fga_asr", "lsa_asr"), "FGA model": ("fga_asr",), "LSA model": ("lsa_asr",)}


def test_quick_demo_trains_three_models_and_writes_the_table_the_summary_and_the_page(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKDOORLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = invoke(runner, "demo", "face_detection", "--quick", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"clean", "fga", "lsa"}
    for run_dir in summary["runs"].values():
        assert (Path(run_dir) / "model.safetensors").is_file() and (Path(run_dir) / "report.html").is_file()
    assert set(summary["table"]) == set(ATTACKS_MEASURED)
    for row, measured in ATTACKS_MEASURED.items():
        values = summary["table"][row]
        assert set(values) <= {k for k, _ in COLUMNS} and {"ap50_easy", "ap50_hard", "nme"} <= set(values)
        for key in ("ap50_easy", "ap50_hard"):  # None: no face of that level in the tiny test split
            assert values[key] is None or 0 <= values[key] <= 1
        for key in measured:
            assert isinstance(values[key], float) and 0 <= values[key] <= 1, (row, key)
    assert {"fga on clean model", "fga on FGA model", "lsa on clean model", "lsa on LSA model"} == set(
        summary["attacks"]
    )
    assert summary["seconds"]["total_s"] > 0 and summary["scale"]["epochs"] == 1
    page = (out / "demo.html").read_text()
    for title in ("Results", "Face Generation Attack", "Landmark Shift Attack", "ArcFace-aligned"):
        assert title in page
    assert page.count("data:image/png;base64,") >= 3
    text = flat(result.output)
    for needle in (
        "AP50 easy",
        "FGA ASR",
        "LSA ASR",
        "crop rot. deg",
        "LSA model",
        "demo.html",
        "backdoorlab demo gaze",
    ):
        assert needle in text, needle


def test_the_dispatcher_finds_each_demo_by_name_and_the_gaze_demo_by_default() -> None:
    assert {"gaze", "face_detection"} <= set(demo_modules())
    default = demo_module(None)
    assert default.NAME == "gaze" and str(default.DEFAULT_OUT) == "runs/demo"
    assert str(demo_module("face_detection").DEFAULT_OUT) == "runs/demo_face_detection"
    assert demo_module("detection") is demo_module("face_detection")  # `backdoorlab demo detection`


def test_an_unknown_demo_is_one_line_naming_the_known_ones(runner: CliRunner) -> None:
    result = invoke(runner, "demo", "nope")
    assert result.exit_code == 2 and "unknown demo 'nope'" in result.output and "face_detection" in result.output


def test_the_demo_configs_share_data_model_and_schedule_and_differ_by_their_attack() -> None:
    for quick in (False, True):
        configs = demo_configs(quick)
        assert list(configs) == ["clean", "fga", "lsa"] and configs["clean"].attack is None
        for key in ("fga", "lsa"):
            cfg = configs[key]
            assert cfg.data == configs["clean"].data and cfg.train == configs["clean"].train
            assert cfg.model == configs["clean"].model and cfg.attack is not None
        assert configs["fga"].attack.relabel["name"] == "fake_face"  # type: ignore[union-attr]
        assert configs["lsa"].attack.relabel["name"] == "rotate_landmarks"  # type: ignore[union-attr]


def test_the_page_lists_the_run_time_monitors_registered_for_the_task_and_has_no_section_without_them() -> None:
    from backdoorlab.defenses.base import RuntimeMonitor
    from backdoorlab.defenses.needs import Needs
    from backdoorlab.experiments.demos.face_detection import monitor_section
    from backdoorlab.registry import DEFENCES

    class FakeMonitor(RuntimeMonitor):
        """Flags scenes the test says are odd."""

        name = "fake_face_monitor_for_the_demo_test"
        needs = Needs(tasks=("face_detection",))

    before = monitor_section("face_detection")
    DEFENCES.register(FakeMonitor)
    try:
        section = monitor_section("face_detection")
        assert section is not None and FakeMonitor.name in section["html"] and "Flags scenes" in section["html"]
        other = monitor_section("gaze")
        assert other is None or FakeMonitor.name not in other["html"]
    finally:
        DEFENCES.unregister(FakeMonitor.name)
    assert before is None or FakeMonitor.name not in before["html"]
