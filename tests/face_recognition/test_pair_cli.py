"""`backdoorlab pair fit | score`: a pairing between two tiny trained recognizers, fitted on a folder of
face images or an array dataset of people neither saw, written, loaded back and used to score faces;
the closed form refused for unequal sizes before any work, stale weights and non-pairings refused."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_experiments import flat, invoke
from PIL import Image
from safetensors.numpy import load_file
from typer.testing import CliRunner

from backdoorlab.data.synthetic.identities import SyntheticIdentitySpec
from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.run import execute
from backdoorlab.tasks.face_recognition import FaceRecognitionTask

from .test_task import config

OTHER = {"name": "mobilefacenet", "kwargs": {"width": 4, "embedding_dim": 16, "input_size": 32}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two IResNets and a MobileFaceNet (16-d) trained on the tiny identities; unseen faces as PNGs and arrays."""
    root = tmp_path_factory.mktemp("pairing")
    cache = root / "cache"
    models = {"iresnet": config(cache, name="a"), "iresnet2": config(cache, name="b", seed=1),
              "mobilefacenet": config(cache, name="c", model=OTHER)}  # fmt: skip
    runs = {k: execute(validate_config(c), runs_dir=root / "runs", progress=False).run_dir for k, c in models.items()}
    unseen = FaceRecognitionTask().synthesize(SyntheticIdentitySpec.tiny(seed=11, identities=12, mean_images=6))
    runs["arrays"] = unseen.save(root / "unseen_arrays")
    folder = root / "unseen_png" / "00000"
    folder.mkdir(parents=True)
    pixels = (unseen.images.transpose(0, 2, 3, 1) if unseen.images.shape[1] == 3 else unseen.images)
    for i, image in enumerate(np.asarray(pixels)):
        Image.fromarray(np.asarray(image, np.uint8)).save(folder / f"{i:05d}.png")
    runs["png"] = root / "unseen_png"
    runs["root"] = root
    return runs


def test_fit_then_score_across_architectures(runner: CliRunner, pair: dict[str, Path]) -> None:
    out = pair["root"] / "pairing_affine"
    result = invoke(runner, "pair", "fit", pair["iresnet"], pair["mobilefacenet"], "--faces", pair["png"],
                    "--out", out, "--fnmr", "0.1", "--steps", "50")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "pairing.json").read_text())
    assert record["dims"] == {"probe": 32, "reference": 16}
    assert record["fit_faces"] + record["calibration_faces"] == len(list((pair["png"] / "00000").glob("*.png")))
    weights = load_file(str(out / "translator.safetensors"))
    assert weights["weight"].shape == (16, 32) and weights["bias"].shape == (16,)
    csv_path = pair["root"] / "scores.csv"
    result = invoke(runner, "pair", "score", out, "--images", pair["png"], "--out", csv_path)
    assert result.exit_code == 0, result.output
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == record["fit_faces"] + record["calibration_faces"]
    assert rows[0]["image"].endswith("00000.png")
    for row in rows:  # the flag is the recorded threshold applied to the score
        assert int(row["flagged"]) == (float(row["score"]) >= record["threshold"])
    flagged = sum(int(r["flagged"]) for r in rows)
    assert f"{flagged} of {len(rows)} faces flagged" in flat(result.output)


def test_closed_form_on_equal_sizes_from_an_array_folder(runner: CliRunner, pair: dict[str, Path]) -> None:
    out = pair["root"] / "pairing_procrustes"
    result = invoke(runner, "pair", "fit", pair["iresnet"], pair["iresnet2"], "--faces", pair["arrays"],
                    "--out", out, "--translator", "procrustes")  # fmt: skip
    assert result.exit_code == 0, result.output
    weight = load_file(str(out / "translator.safetensors"))["weight"]
    np.testing.assert_allclose(weight @ weight.T, np.eye(len(weight)), atol=1e-6)  # a rotation
    assert np.linalg.det(weight) == pytest.approx(1.0, abs=1e-6)


def test_closed_form_with_unequal_sizes_is_refused(runner: CliRunner, pair: dict[str, Path]) -> None:
    out = pair["root"] / "refused"
    result = invoke(runner, "pair", "fit", pair["iresnet"], pair["mobilefacenet"], "--faces", pair["png"],
                    "--out", out, "--translator", "procrustes")  # fmt: skip
    assert result.exit_code == 2
    assert "equal embedding sizes (probe 32-d, reference 16-d)" in flat(result.output)
    assert not out.exists()


def test_a_pairing_refuses_weights_that_changed(runner: CliRunner, pair: dict[str, Path], tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    shutil.copytree(pair["iresnet"], probe)
    out = tmp_path / "pairing"
    result = invoke(runner, "pair", "fit", probe, pair["iresnet2"], "--faces", pair["arrays"], "--out", out,
                    "--translator", "procrustes")  # fmt: skip
    assert result.exit_code == 0, result.output
    shutil.copy(pair["iresnet2"] / "model.safetensors", probe / "model.safetensors")  # retrained in place
    result = invoke(runner, "pair", "score", out, "--images", pair["arrays"])
    assert result.exit_code == 2
    assert "no longer holds the weights the pairing was fitted on" in flat(result.output)


def test_not_a_pairing_and_no_faces_are_refused(runner: CliRunner, pair: dict[str, Path], tmp_path: Path) -> None:
    result = invoke(runner, "pair", "score", tmp_path, "--images", pair["arrays"])
    assert result.exit_code == 2
    assert "is not a pairing" in flat(result.output)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke(runner, "pair", "fit", pair["iresnet"], pair["iresnet2"], "--faces", empty, "--out", tmp_path / "p")
    assert result.exit_code == 2
    assert "no .png/.jpg images" in flat(result.output)
    result = invoke(runner, "pair", "fit", pair["iresnet"], pair["iresnet2"], "--faces", pair["arrays"],
                    "--out", tmp_path / "p", "--fnmr", "1.5")  # fmt: skip
    assert result.exit_code == 2
    assert "--fnmr must be in (0, 1)" in flat(result.output)
