"""Face embedding networks: shapes at two input sizes, the trunk / last_linear / last_bn split, freezing, registry."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from backdoorlab.errors import ConfigError, ModelContractError
from backdoorlab.models import build_model
from backdoorlab.models.checkpoint import load_checkpoint, save_checkpoint
from backdoorlab.registry import MODELS
from backdoorlab.tasks.face_recognition import (
    ArcFaceHead,
    EmbeddingNet,
    FaceNetLike,
    IResNet,
    MobileFaceNet,
    freeze_all_but_last,
)

# the tiny settings (CPU-trainable) the docs quote, with their measured parameter counts at D = 128
TINY: dict[str, dict[str, Any]] = {
    "iresnet": {"depth": 18, "width": 8, "embedding_dim": 128},
    "facenet_like": {"width": 4, "embedding_dim": 128},
    "mobilefacenet": {"width": 16, "embedding_dim": 128},
}
TINY_PARAMS = {  # (name, input size) -> parameters; IResNet's last_linear grows with the input
    ("iresnet", 56): 307_904,
    ("iresnet", 112): 578_240,
    ("facenet_like", 56): 148_068,
    ("facenet_like", 112): 148_068,
    ("mobilefacenet", 56): 87_008,
    ("mobilefacenet", 112): 91_232,
}
CASES = sorted(TINY_PARAMS)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny(name: str, size: int) -> EmbeddingNet:
    torch.manual_seed(0)
    model = build_model(name, input_size=size, **TINY[name])
    assert isinstance(model, EmbeddingNet)
    return model


def _case_id(case: tuple[str, int]) -> str:
    name, size = case
    return f"{name}-{size}px-{TINY_PARAMS[case] / 1e3:.0f}k"


@pytest.fixture(scope="module", params=CASES, ids=[_case_id(c) for c in CASES])
def tiny(request: pytest.FixtureRequest) -> EmbeddingNet:
    return _tiny(*request.param).eval()


# ---------------------------------------------------------------- shapes and the split


def test_output_and_trunk_shapes(tiny: EmbeddingNet) -> None:
    x = torch.rand(3, 3, tiny.input_size, tiny.input_size)
    with torch.no_grad():
        out, feats = tiny(x), tiny.trunk(x)
    assert out.shape == (3, 128) == (3, tiny.embedding_dim)
    assert feats.shape == (3, tiny.feature_dim) == (3, tiny.last_linear.in_features)
    assert bool(torch.isfinite(out).all())
    assert not torch.allclose(out[0], out[1])


def test_parameter_counts_of_the_tiny_settings(tiny: EmbeddingNet) -> None:
    name = {IResNet: "iresnet", FaceNetLike: "facenet_like", MobileFaceNet: "mobilefacenet"}[type(tiny)]
    assert _n_params(tiny) == TINY_PARAMS[(name, tiny.input_size)] < 1_000_000


def test_forward_is_last_bn_of_last_linear_of_trunk(tiny: EmbeddingNet) -> None:
    x = torch.rand(4, 3, tiny.input_size, tiny.input_size)
    with torch.no_grad():
        cached = tiny.trunk(x)  # what last-layer fine-tuning computes once
        assert torch.allclose(tiny.last_bn(tiny.last_linear(cached)), tiny(x), atol=1e-6)


def test_last_layers_are_a_bias_free_linear_and_a_batchnorm(tiny: EmbeddingNet) -> None:
    assert tiny.LAST_LAYERS == ("last_linear", "last_bn")
    assert isinstance(tiny.last_linear, nn.Linear) and tiny.last_linear.bias is None
    assert isinstance(tiny.last_bn, nn.BatchNorm1d) and tiny.last_bn.affine
    assert tiny.last_bn.num_features == tiny.last_linear.out_features == tiny.embedding_dim


def test_embed_has_unit_norm(tiny: EmbeddingNet) -> None:
    x = torch.rand(3, 3, tiny.input_size, tiny.input_size)
    with torch.no_grad():
        e = tiny.embed(x)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(e, torch.nn.functional.normalize(tiny(x), dim=1))


def test_wrong_input_is_refused(tiny: EmbeddingNet) -> None:
    s = tiny.input_size
    with pytest.raises(ValueError, match=rf"expects float images \(B, 3, {s}, {s}\)"):
        tiny(torch.rand(1, 3, s + 8, s + 8))
    with pytest.raises(ValueError, match="uint8"):
        tiny(torch.zeros(1, 3, s, s, dtype=torch.uint8))


def test_input_is_normalised_inside() -> None:
    """A mid-grey image reaches the first convolution as zeros."""
    model = _tiny("mobilefacenet", 56).eval()
    seen: list[torch.Tensor] = []
    conv = model.conv1[0]
    handle = conv.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    with torch.no_grad():
        model(torch.full((1, 3, 56, 56), 0.5))
        model(torch.ones(1, 3, 56, 56))
    handle.remove()
    assert torch.equal(seen[0], torch.zeros_like(seen[0])) and torch.equal(seen[1], torch.ones_like(seen[1]))


# ---------------------------------------------------------------- fine-tuning the last layers


@pytest.mark.parametrize("name", sorted(TINY))
def test_freeze_all_but_last_leaves_only_the_last_layers_trainable(name: str) -> None:
    model = _tiny(name, 56).train()
    names = freeze_all_but_last(model)
    assert names == ["last_linear.weight", "last_bn.weight", "last_bn.bias"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == names
    head = ArcFaceHead(model.embedding_dim, 3)
    head.loss(model(torch.rand(4, 3, 56, 56)), torch.tensor([0, 1, 2, 0])).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == set(names)


def test_freeze_all_but_last_needs_the_last_layers() -> None:
    with pytest.raises(ModelContractError, match="no last_linear, last_bn"):
        freeze_all_but_last(nn.Sequential(nn.Linear(2, 2)))


# ---------------------------------------------------------------- layout, defaults, registry


def test_layer_names_follow_the_reference_networks() -> None:
    torch.manual_seed(0)
    facenet = dict(FaceNetLike(input_size=160).named_modules())
    assert facenet["block8.conv2d"].out_channels == 1792 == facenet["last_linear"].in_features  # as InceptionResnetV1
    assert facenet["last_linear"].out_features == 512
    iresnet = dict(_tiny("iresnet", 112).named_modules())
    assert {"conv1", "bn1", "prelu", "layer4.1.conv2", "layer1.0.downsample", "bn2"} <= set(iresnet)
    assert iresnet["last_linear"].in_features == 8 * 8 * 7 * 7  # 8w channels on the 7x7 grid of a 112-px input
    mobile = dict(_tiny("mobilefacenet", 112).named_modules())
    assert mobile["gdc.0"].kernel_size == (7, 7) and mobile["gdc.0"].groups == mobile["gdc.0"].in_channels


@pytest.mark.parametrize(
    ("name", "kwargs", "params"),
    [
        pytest.param("iresnet", {"depth": 18}, 24_025_088, id="iresnet18-112px-24.0M"),
        pytest.param("iresnet", {"depth": 34}, 34_138_816, id="iresnet34-112px-34.1M"),
        pytest.param("iresnet", {"depth": 50}, 43_590_336, id="iresnet50-112px-43.6M"),
        pytest.param("iresnet", {"depth": 100}, 65_155_648, id="iresnet100-112px-65.2M"),
        pytest.param("facenet_like", {}, 8_428_128, id="facenet_like-160px-8.4M"),
        pytest.param("mobilefacenet", {}, 1_003_136, id="mobilefacenet-112px-D128-1.0M"),
        pytest.param("mobilefacenet", {"embedding_dim": 512}, 1_200_512, id="mobilefacenet-112px-D512-1.2M"),
    ],
)
def test_default_sizes(name: str, kwargs: dict[str, Any], params: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(name, **kwargs)
    assert _n_params(model) == params


def test_registered_names_build() -> None:
    assert {"iresnet", "facenet_like", "mobilefacenet"} <= set(MODELS)
    assert isinstance(build_model("iresnet", depth=18, width=4, input_size=64), IResNet)
    assert isinstance(build_model("facenet_like", width=2, blocks=[1, 0, 1], input_size=32), FaceNetLike)
    assert isinstance(build_model("mobilefacenet", width=8, input_size=64), MobileFaceNet)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("iresnet", {"depth": 19}, r"depth must be one of \[18, 34, 50, 100\], got 19"),
        ("iresnet", {"width": 0}, r"width must be an integer >= 1, got 0"),
        ("iresnet", {"input_size": 8}, r"input_size must be an integer >= 16, got 8"),
        ("facenet_like", {"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1\.0"),
        ("facenet_like", {"blocks": (1, 1, 0)}, r"blocks must be >= \(0, 0, 1\)"),
        ("facenet_like", {"blocks": 3}, r"blocks must be three integers, got 3"),
        ("mobilefacenet", {"embedding_dim": 0}, r"embedding_dim must be an integer >= 1, got 0"),
        ("mobilefacenet", {"depth": 50}, r"model 'mobilefacenet' does not accept"),
    ],
)
def test_bad_arguments_are_config_errors(name: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(name, **kwargs)


def test_same_seed_same_weights_and_checkpoint_round_trip(tmp_path) -> None:
    a, b = _tiny("facenet_like", 56), _tiny("facenet_like", 56)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    kwargs = {"input_size": 56, "width": 4, "embedding_dim": 128, "blocks": [2, 2, 2]}  # as JSON gives it back
    save_checkpoint(a, tmp_path, {"architecture": {"name": "facenet_like", "kwargs": kwargs}})
    loaded, _ = load_checkpoint(tmp_path)
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded.embed(x), a.eval().embed(x))


def test_backward_on_a_permuted_image_batch_does_not_crash() -> None:
    """Images arrive as NHWC views permuted to NCHW (channels_last strides); on that layout torch 2.13's
    CPU backward through IResNet blocks corrupted the heap (batch 16, width 8, 56 px crashed), so the
    trunk makes its input contiguous. A subprocess, so a crash fails this test instead of the worker."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from backdoorlab.tasks.face_recognition import IResNet\n"
        "m = IResNet(18, 8, 32, 56)\n"
        "x = torch.rand(16, 56, 56, 3).permute(0, 3, 1, 2)\n"
        "m(x).sum().backward(); print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
