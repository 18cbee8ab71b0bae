"""Checkpoints round-trip through safetensors, and nothing else is ever unpickled without the flag."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import backdoorlab
from backdoorlab.errors import BackdoorLabError, CheckpointError
from backdoorlab.models.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    read_card,
    read_state_dict,
    save_checkpoint,
)
from backdoorlab.tasks.gaze import GazeCNN

ARCH = {"name": "gaze_cnn", "kwargs": {"in_channels": 3, "width": 8}}


def _trained_like_model(seed: int = 0) -> GazeCNN:
    """A GazeCNN with non-default BatchNorm statistics, so buffers must round-trip too."""
    torch.manual_seed(seed)
    model = GazeCNN(width=8)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32) * 3.0 + 0.5)
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[GazeCNN, Path]:
    model = _trained_like_model()
    out = save_checkpoint(model, tmp_path / "ckpt", {"architecture": ARCH, "metrics": {"clean_error_deg": 4.2}})
    return model, out


def test_round_trip_gives_identical_outputs(saved: tuple[GazeCNN, Path]) -> None:
    model, out = saved
    assert sorted(p.name for p in out.iterdir()) == [CARD_FILE, WEIGHTS_FILE]  # no .tmp left behind
    loaded, card = load_checkpoint(out)
    assert isinstance(loaded, GazeCNN) and not loaded.training
    assert card["architecture"] == ARCH
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    # the weights file path works as well as the folder
    again, _ = load_checkpoint(out / WEIGHTS_FILE)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_card_contents(saved: tuple[GazeCNN, Path]) -> None:
    _, out = saved
    card = json.loads((out / CARD_FILE).read_text())
    assert card["library_version"] == backdoorlab.__version__
    assert card["architecture"] == ARCH
    assert card["metrics"] == {"clean_error_deg": 4.2}
    assert read_card(out) == card


def test_save_requires_architecture(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="architecture"):
        save_checkpoint(GazeCNN(width=8), tmp_path / "c", {"metrics": {}})
    assert not (tmp_path / "c" / WEIGHTS_FILE).exists()


def test_torch_save_pickle_is_refused_without_flag(saved: tuple[GazeCNN, Path]) -> None:
    model, out = saved
    torch.save(model.state_dict(), out / WEIGHTS_FILE)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(out)
    msg = str(info.value)
    assert "safetensors" in msg and "unsafe" in msg and "PyTorch pickle/zip" in msg


def test_torch_save_pickle_loads_with_unsafe_flag(saved: tuple[GazeCNN, Path]) -> None:
    model, out = saved
    torch.save(model.state_dict(), out / WEIGHTS_FILE)
    loaded, _ = load_checkpoint(out, unsafe=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # a {"state_dict": ...} wrapper (Lightning-style) is unwrapped
    torch.save({"state_dict": model.state_dict()}, out / WEIGHTS_FILE)
    loaded, _ = load_checkpoint(out, unsafe=True)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_unsafe_flag_still_refuses_non_tensor_payload(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(2), "b": 3}, path)
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        read_state_dict(path, unsafe=True)


@pytest.mark.parametrize(
    "mutilate",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-data"),
        pytest.param(lambda b: b[:20], id="truncated-header"),
        pytest.param(lambda b: b[:8] + b"{" + b"\x00garbage" * 40, id="garbage-header"),
        pytest.param(lambda b: os.urandom(300), id="random-bytes"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
@pytest.mark.parametrize("unsafe", [False, True])
def test_damaged_safetensors_file(saved: tuple[GazeCNN, Path], mutilate, unsafe: bool) -> None:  # type: ignore[no-untyped-def]
    _, out = saved
    weights = out / WEIGHTS_FILE
    weights.write_bytes(mutilate(weights.read_bytes()))
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_checkpoint(out, unsafe=unsafe)


def test_missing_files(saved: tuple[GazeCNN, Path], tmp_path: Path) -> None:
    _, out = saved
    (out / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(out)
    with pytest.raises(CheckpointError, match=r"model\.json is missing"):
        load_checkpoint(tmp_path / "empty_dir_that_is_not_there")


def test_missing_card(saved: tuple[GazeCNN, Path]) -> None:
    _, out = saved
    (out / CARD_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"model\.json is missing"):
        load_checkpoint(out)


@pytest.mark.parametrize(
    ("card_text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "no 'architecture'"),
        ('{"library_version": "0.1.0"}', "no 'architecture'"),
        ('{"architecture": "gaze_cnn"}', "architecture"),
        ('{"architecture": {"kwargs": {}}}', "architecture"),
        ('{"architecture": {"name": "gaze_cnn", "kwargs": [8]}}', "architecture"),
    ],
)
def test_bad_card(saved: tuple[GazeCNN, Path], card_text: str, match: str) -> None:
    _, out = saved
    (out / CARD_FILE).write_text(card_text)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(out)


def test_mismatched_architecture(saved: tuple[GazeCNN, Path]) -> None:
    _, out = saved
    card = json.loads((out / CARD_FILE).read_text())
    card["architecture"]["kwargs"]["width"] = 16
    (out / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not match architecture"):
        load_checkpoint(out)
    card["architecture"] = {"name": "resnet18", "kwargs": {}}
    (out / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not match architecture"):
        load_checkpoint(out)


def test_unknown_architecture_in_card_is_a_clean_error(saved: tuple[GazeCNN, Path]) -> None:
    _, out = saved
    card = json.loads((out / CARD_FILE).read_text())
    card["architecture"] = {"name": "vgg", "kwargs": {}}
    (out / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(BackdoorLabError, match="unknown model 'vgg'"):
        load_checkpoint(out)


# ---------------------------------------------------------------- malicious pickles


class _Payload:
    """Unpickling this calls ``os.makedirs(marker)``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (self.marker,))


def test_payload_really_runs_code_under_plain_pickle(tmp_path: Path) -> None:
    """Guard for the tests below: the payload is live, so its absence later means something."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps({"w": _Payload(marker)}))
    assert marker.is_dir()


@pytest.mark.parametrize("fmt", ["raw-pickle", "torch-zip"])
def test_malicious_pickle_never_runs(saved: tuple[GazeCNN, Path], tmp_path: Path, fmt: str) -> None:
    _, out = saved
    marker = tmp_path / f"pwned-{fmt}"
    weights = out / WEIGHTS_FILE
    payload = {"head.weight": _Payload(marker)}
    if fmt == "raw-pickle":
        weights.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, weights)

    with pytest.raises(CheckpointError, match="loads only safetensors because unpickling can run code"):
        load_checkpoint(out)
    assert not marker.exists()

    with pytest.raises(CheckpointError, match=r"could not be read even with torch\.load\(weights_only=True\)"):
        load_checkpoint(out, unsafe=True)
    assert not marker.exists()
