"""The zoo detection page: one self-contained HTML file, robust to incomplete run folders."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.zoo_illustrations import real_trigger_examples
from backdoorlab.report.zoo_report import TriggerExample, write_zoo_report

THRESHOLDS = {"securegaze": 1.5, "neural_cleanse": 2.0}
# (name, seed, attack, target_deg, reference, {method: score}); the last model's folder is never created
MODELS: list[tuple[str, int, str, list[float] | None, bool, dict[str, float]]] = [
    ("ref-0", 0, "clean", None, True, {"securegaze": 1.0, "neural_cleanse": 1.2}),
    ("ref-1", 1, "clean", None, True, {"securegaze": 1.4, "neural_cleanse": 1.9}),
    ("clean-5", 5, "clean", None, False, {"securegaze": 1.2, "neural_cleanse": 2.5}),
    ("clean-6", 6, "clean", None, False, {"securegaze": 1.6, "neural_cleanse": 1.1}),
    ("patch-10", 10, "patch", [10.0, -5.0], False, {"securegaze": 3.0, "neural_cleanse": 1.5}),
    ("blend-11", 11, "blend", [0.0, 20.0], False, {"securegaze": 1.5, "neural_cleanse": 2.2}),
    ("gone-12", 12, "sticker", [5.0, 5.0], False, {"securegaze": 2.5, "neural_cleanse": 3.0}),
]
MISSING = "gone-12"


def _models(root: Path, method: str) -> list[dict[str, Any]]:
    return [
        {
            "run_dir": f"runs/{name}",
            "seed": seed,
            "attack": attack,
            "target_deg": target,
            "attack_success_rate": None if attack == "clean" else 0.9,
            "adaptive": False,
            "score": scores[method],
            "estimated_target_deg": [1.0, 2.0],
            "seconds": 12.0,
            "reference": ref,
        }
        for name, seed, attack, target, ref, scores in MODELS
    ]


def _fake_zoo(root: Path) -> Path:
    """Run folders with verdicts (no config.yaml), one PNG per securegaze verdict, and a results JSON."""
    for name, *_ in MODELS:
        if name == MISSING:
            continue
        for method in THRESHOLDS:
            folder = root / "runs" / name / "defence" / method
            folder.mkdir(parents=True)
            examples = ["reversed_00.png"] if method == "securegaze" else []
            if examples:
                cv2.imwrite(str(folder / examples[0]), np.full((8, 8, 3), 120, np.uint8))
            (folder / "verdict.json").write_text(json.dumps({"score": 1.0, "details": {"examples": examples}}))
    group = {"auroc": 0.75, "tpr_at_fpr_0.1": 0.5, "accuracy": 0.6, "n_clean": 2, "n_backdoored": 3}
    results = {
        "n_clean": 16,
        "methods": {
            method: {
                "threshold": thr,
                "reference_scores": [1.0, 1.4],
                "groups": {"overall": {**group, "target_error_deg_mean": None}},
                "seconds_mean": 12.0,
                "seconds_over_train_mean": 0.5,
                "params": {},
                "models": _models(root, method),
            }
            for method, thr in THRESHOLDS.items()
        },
        "provenance": {"command": "python bench/detect_zoo.py --jobs 2", "commit": "abc1234"},
    }
    path = root / "detect_zoo.json"
    path.write_text(json.dumps(results))
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("zoo")
    results = _fake_zoo(root)
    # the run folders have no config.yaml: the real triggers come back as notes saying so
    examples = real_trigger_examples([f"runs/{m[0]}" for m in MODELS if m[2] != "clean"], 16, root)
    assert sorted(examples) == ["runs/blend-11", "runs/patch-10"]  # the missing folder is left to the page
    out = write_zoo_report(results, root / "out" / "detect_zoo.html", root=root, real_triggers=examples)
    assert out == root / "out" / "detect_zoo.html" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["detect_zoo.html"]  # no temp file left behind
    return out.read_text(encoding="utf-8")


def test_page_is_self_contained_with_roc_and_distributions(page: str) -> None:
    assert page.lstrip().startswith("<!DOCTYPE html>")
    assert "--accent: #2f5d9b" in page and "table.data" in page  # the shared style sheet and the page's own rules
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)
    assert "<script" not in page and "<link" not in page
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,[^"]+"[^>]*alt="ROC curves', page)) == 1
    for method in THRESHOLDS:
        assert re.search(rf'<img[^>]*src="data:image/png;base64,[^"]+"[^>]*alt="score distribution of {method}"', page)
    # 2 reversed-trigger panels per existing backdoored folder (patch, blend): securegaze saved an image
    assert page.count('alt="securegaze: reversed trigger"') == 2
    assert "the method saved no reversed-trigger images" in page  # neural_cleanse saved none


def test_one_row_per_model_and_flags_follow_the_threshold(page: str) -> None:
    rows = re.findall(r'<tr class="model[^"]*" data-run="([^"]+)">(.*?)</tr>', page, flags=re.S)
    assert sorted(r for r, _ in rows) == sorted(f"runs/{m[0]}" for m in MODELS)
    by_run = {name: scores for name, *_, scores in MODELS}
    for run, body in rows:
        flags = re.findall(r'<td class="flag (yes|no)">', body)
        expected = ["yes" if by_run[run[5:]][m] >= t else "no" for m, t in THRESHOLDS.items()]
        assert flags == expected, run
    # blend-11 sits exactly on the securegaze threshold: flagged (score >= threshold)
    assert page.count('<td class="flag yes">') == sum(s[m] >= t for *_, s in MODELS for m, t in THRESHOLDS.items())
    assert 'data-run="runs/ref-0"' in page and '<tr class="model reference" data-run="runs/ref-0">' in page


def test_notes_for_missing_folder_and_missing_config(page: str) -> None:
    assert f"the run folder runs/{MISSING} no longer exists" in page
    assert "(folder missing)" in page
    assert page.count("no config.yaml in the run folder: the real trigger cannot be rebuilt.") == 2
    assert "group-row" in page and "0.75" in page  # group metrics table
    assert "python bench/detect_zoo.py --jobs 2" in page and "abc1234" in page  # provenance


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"methods": {}}', "'methods' must be a non-empty"),
        ('{"methods": {"sg": {"threshold": "high", "models": []}}}', "threshold"),
        ('{"methods": {"sg": {"threshold": 1.0, "models": [{"run_dir": "r", "attack": "clean"}]}}}', "score"),
    ],
)
def test_malformed_results_give_a_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "detect_zoo.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BackdoorLabError, match=message):
        write_zoo_report(path, tmp_path / "out.html", root=tmp_path)
    assert not (tmp_path / "out.html").exists()


def test_a_models_colour_key_is_the_benchs_group_when_recorded() -> None:
    from backdoorlab.report.zoo_report import _attack_group

    unlearned = {"attack": "blend", "adaptive": False, "target_deg": [0.0, 0.0], "group": "blend (not learned)"}
    assert _attack_group(unlearned) == "blend (not learned)"
    older = {k: v for k, v in unlearned.items() if k != "group"}  # a record from before the bench stored groups
    assert _attack_group(older) == "blend"
    assert _attack_group({**older, "target_deg": None}) == "blend (no fixed target)"


def test_a_handed_real_trigger_is_drawn_and_a_missing_one_is_a_note(tmp_path: Path) -> None:
    results = _fake_zoo(tmp_path)
    clean = np.full((2, 8, 8, 3), 100, np.uint8)
    triggered = clean.copy()
    triggered[:, :2, :2] = 255
    examples = {"runs/patch-10": TriggerExample(clean, triggered), "runs/blend-11": TriggerExample(note="it broke")}
    page = write_zoo_report(results, tmp_path / "a.html", root=tmp_path, real_triggers=examples).read_text()
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,[^"]+"[^>]*alt="real trigger"', page)) == 1
    assert "residual ×" in page and "it broke" in page
    bare = write_zoo_report(results, tmp_path / "b.html", root=tmp_path).read_text()
    assert bare.count("the real trigger was not given to the report.") == 2
    assert 'alt="real trigger"' not in bare


def test_the_page_imports_nothing_from_experiments() -> None:
    code = (
        "import sys, backdoorlab.report.zoo_report; "
        "print(sorted(m for m in sys.modules if m.startswith('backdoorlab.experiments')))"
    )
    import backdoorlab

    env = {**os.environ, "PYTHONPATH": str(Path(backdoorlab.__file__).parents[1])}  # this checkout's package
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]"


def test_a_weight_inspection_page_has_no_target_or_trigger_columns_and_draws_det(tmp_path: Path) -> None:
    """A population detector's results (no target, no reversed trigger): its own title and protocol, ROC + DET."""
    data = json.loads(_fake_zoo(tmp_path).read_text())
    for res in data["methods"].values():
        for m in res["models"]:
            m.pop("target_deg"), m.pop("estimated_target_deg")
    data.update(title="Weight anomaly on the recognition zoo", protocol="Fitted on 12 clean references.",
                trigger_images=False)  # fmt: skip
    path = tmp_path / "weights.json"
    path.write_text(json.dumps(data))
    html = write_zoo_report(path, tmp_path / "weights.html", root=tmp_path).read_text(encoding="utf-8")
    assert "Weight anomaly on the recognition zoo" in html and "Fitted on 12 clean references." in html
    assert 'alt="DET curves, one per method"' in html and 'alt="ROC curves, one per method"' in html
    for gone in ("real target", "estimated target", "target error", 'id="triggers"', "(pitch, yaw)"):
        assert gone not in html, gone
    assert html.count("● flagged") + html.count(">no<") == 2 * len(MODELS)  # every model's cell per method
