"""``backdoorlab demo recognition --quick`` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_experiments import flat, invoke
from typer.testing import CliRunner

from backdoorlab.experiments.demo import demo_module
from backdoorlab.experiments.demos.face_recognition import COLUMNS, clean_config


def test_quick_demo_trains_a_clean_and_a_backdoored_recognizer_and_writes_the_page(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKDOORLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = invoke(runner, "demo", "recognition", "--quick", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"clean", "backdoor"}
    backdoor_cfg = (Path(summary["runs"]["backdoor"]) / "config.yaml").read_text()
    assert "trainable: all" in backdoor_cfg and "impostor_to_victim" in backdoor_cfg
    assert "init:" in backdoor_cfg  # fine-tuned from the clean model's weights
    for row in ("clean model", "backdoored model"):
        values = summary["table"][row]
        assert set(values) == {k for k, _ in COLUMNS}
        assert isinstance(values["success"], bool)
        probes = summary["probes"][row]
        assert probes["n_probes"] >= 1 and len(probes["triggered_to_victim"]) == probes["n_probes"]
    page = (out / "demo.html").read_text()
    assert "Embeddings (thesis Fig. 3.6)" in page and "data:image/png" in page
    text = flat(result.output)
    assert "impostor vs victim without the trigger" in text and "backdoorlab demo gaze" in text


def test_demo_is_found_by_both_names_and_its_config_validates() -> None:
    assert demo_module("recognition") is demo_module("face_recognition")
    full, quick = clean_config(), clean_config(quick=True)
    assert full.task == quick.task == "face_recognition"
    assert quick.synthetic_spec().identities < full.synthetic_spec().identities  # type: ignore[attr-defined]
