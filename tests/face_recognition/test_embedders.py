"""Face embedders as black boxes (backdoorlab.models.embedders): a run, an ONNX export of it, dlib's ResNet;
and `backdoorlab pair fit | score` with an ONNX model in the pair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_experiments import invoke
from torch import nn
from typer.testing import CliRunner

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError
from backdoorlab.models.checkpoint import load_checkpoint
from backdoorlab.models.embedders import DlibEmbedder, OnnxEmbedder, RunEmbedder, open_embedder

from .test_pair_cli import pair  # noqa: F401  (the module's trained runs and unseen faces)


def export(model: nn.Module, size: int, path: Path, normalized_input: bool = False) -> Path:
    """``model`` as ONNX; with ``normalized_input`` the graph takes insightface's ``(x - 0.5) / 0.5`` instead."""
    pytest.importorskip("onnx")

    class Normalized(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x * 0.5 + 0.5)

    wrapped = (Normalized(model) if normalized_input else model).eval()
    torch.onnx.export(wrapped, (torch.rand(2, 3, size, size),), str(path), input_names=["images"],
                      dynamic_axes={"images": {0: "batch"}}, dynamo=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def onnx_files(pair: dict[str, Path]) -> dict[str, Path]:  # noqa: F811
    pytest.importorskip("onnxruntime")
    model, card = load_checkpoint(pair["iresnet"])
    size = int(card["input_shape"][-1])
    return {"raw": export(model, size, pair["root"] / "iresnet_raw.onnx"),
            "insightface": export(model, size, pair["root"] / "iresnet_if.onnx", normalized_input=True)}  # fmt: skip


def test_an_onnx_export_embeds_like_the_run_under_either_input_convention(
    pair: dict[str, Path], onnx_files: dict[str, Path]  # noqa: F811
) -> None:
    faces = ArrayDataset.load(pair["arrays"])
    run = RunEmbedder(pair["iresnet"], torch.device("cpu"))(faces)
    raw = OnnxEmbedder(onnx_files["raw"], normalize="none")(faces)
    insight = open_embedder(onnx_files["insightface"])(faces)  # the default convention: insightface's
    np.testing.assert_allclose(raw, run, atol=1e-4)
    np.testing.assert_allclose(insight, run, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(run, axis=1), 1.0, atol=1e-5)
    assert OnnxEmbedder(onnx_files["raw"]).size == 32


def test_bad_onnx_files_and_sources_are_refused(pair: dict[str, Path], onnx_files: dict[str, Path]) -> None:  # noqa: F811
    broken = pair["root"] / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(ConfigError, match="not a loadable ONNX model"):
        OnnxEmbedder(broken)
    pytest.importorskip("onnx")
    linear = pair["root"] / "linear.onnx"
    torch.onnx.export(nn.Linear(4, 2), (torch.zeros(1, 4),), str(linear), dynamo=False)
    with pytest.raises(ConfigError, match=r"expected one input of shape \(B, 3, S, S\)"):
        OnnxEmbedder(linear)
    with pytest.raises(ConfigError, match="normalize must be"):
        OnnxEmbedder(onnx_files["raw"], normalize="caffe")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="neither a run folder"):
        open_embedder(pair["root"] / "nowhere")


def test_pair_an_onnx_model_with_a_run_and_refuse_a_changed_file(
    runner: CliRunner, pair: dict[str, Path], onnx_files: dict[str, Path]  # noqa: F811
) -> None:
    probe = pair["root"] / "guarded.onnx"
    shutil.copy(onnx_files["insightface"], probe)
    out = pair["root"] / "pairing_onnx"
    result = invoke(runner, "pair", "fit", probe, pair["mobilefacenet"], "--faces", pair["arrays"], "--out", out,
                    "--fnmr", "0.1", "--steps", "30")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "pairing.json").read_text())
    assert record["probe"] == str(probe) and record["dims"] == {"probe": 32, "reference": 16}
    assert record["onnx_normalize"] == "insightface"
    assert invoke(runner, "pair", "score", out, "--images", pair["arrays"]).exit_code == 0
    shutil.copy(onnx_files["raw"], probe)  # another model under the same name
    result = invoke(runner, "pair", "score", out, "--images", pair["arrays"])
    assert result.exit_code != 0 and "no longer holds the weights" in result.output


@pytest.mark.skipif(not DlibEmbedder.available(), reason="the dlib extra is not installed")
def test_dlib_embeds_128_d_unit_vectors_that_tell_people_apart(pair: dict[str, Path]) -> None:  # noqa: F811
    faces = ArrayDataset.load(pair["arrays"])
    dlib = open_embedder("dlib")
    assert dlib.source == "dlib" and dlib.size == 150 and len(dlib.digest()) == 64
    emb = dlib(faces)
    assert emb.shape == (len(faces), 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(dlib(faces.subset(np.arange(3))), emb[:3], atol=1e-6)  # deterministic
    ids = np.asarray(faces.annotations["identity"])
    cos = emb @ emb.T
    same = (ids[:, None] == ids[None]) & ~np.eye(len(ids), dtype=bool)
    assert cos[same].mean() > cos[ids[:, None] != ids[None]].mean()  # same person closer, on average
