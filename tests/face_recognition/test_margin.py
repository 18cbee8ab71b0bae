"""ArcFace / CosFace margin heads against hand computations, their gradients, class weights and argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from backdoorlab.errors import ConfigError
from backdoorlab.models.checkpoint import load_task_modules, save_task_modules
from backdoorlab.tasks.face_recognition import (
    ArcFaceHead,
    CosFaceHead,
    build_margin_head,
    class_weights_from_counts,
)

S, M = 64.0, 0.5
# three class vectors in the plane at these angles (degrees); rows deliberately not unit length
CLASS_DEG = (0.0, 90.0, 200.0)


def _unit(deg: float, norm: float = 1.0) -> list[float]:
    r = math.radians(deg)
    return [norm * math.cos(r), norm * math.sin(r)]


def _head(cls: type, dtype: torch.dtype = torch.float64, **kw: object) -> ArcFaceHead | CosFaceHead:
    head = cls(2, 3, **kw).to(dtype)
    with torch.no_grad():
        rows = [_unit(a, n) for a, n in zip(CLASS_DEG, (1.0, 3.0, 0.2), strict=True)]
        head.weight.copy_(torch.tensor(rows, dtype=dtype))
    return head


def _embedding(deg: float, dtype: torch.dtype = torch.float64, norm: float = 5.0) -> torch.Tensor:
    return torch.tensor([_unit(deg, norm)], dtype=dtype)


def _angles(deg: float) -> list[float]:
    """Angles (radians, in [0, pi]) between an embedding at ``deg`` and each class vector."""
    out = []
    for a in CLASS_DEG:
        d = abs(deg - a) % 360.0
        out.append(math.radians(min(d, 360.0 - d)))
    return out


def _arcface_target(theta: float, m: float = M) -> float:
    return math.cos(theta + m) if theta + m <= math.pi else math.cos(theta) - m * math.sin(m)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("deg", "label", "branch"),
    [(30.0, 0, "margin"), (30.0, 1, "margin"), (30.0, 2, "fallback"), (-45.0, 0, "margin"), (-45.0, 2, "margin")],
)
def test_arcface_logits_match_hand_computation(deg: float, label: int, branch: str) -> None:
    theta = _angles(deg)
    assert (theta[label] + M > math.pi) == (branch == "fallback")
    logits = _head(ArcFaceHead)(_embedding(deg), torch.tensor([label]))[0]
    expected = [S * (_arcface_target(t) if j == label else math.cos(t)) for j, t in enumerate(theta)]
    assert logits.tolist() == pytest.approx(expected, abs=1e-5)


def test_arcface_float32_matches_hand_computation() -> None:
    logits = _head(ArcFaceHead, torch.float32)(_embedding(30.0, torch.float32), torch.tensor([1]))[0]
    theta = _angles(30.0)
    expected = [S * math.cos(theta[0]), S * math.cos(theta[1] + M), S * math.cos(theta[2])]
    assert logits.tolist() == pytest.approx(expected, abs=1e-4)  # s = 64 times float32 rounding


def test_arcface_fallback_replaces_the_rising_cosine() -> None:
    """Past theta = pi - m, cos(theta + m) rises again; the fallback keeps the logit below cos(theta)."""
    theta = math.radians(170.0)  # class 2 seen from 30 degrees
    logit = _head(ArcFaceHead)(_embedding(30.0), torch.tensor([2]))[0, 2].item()
    assert logit == pytest.approx(S * (math.cos(theta) - M * math.sin(M)), abs=1e-5)
    assert logit < S * math.cos(theta) < S * math.cos(theta + M)  # the raw form would *reward* the margin here
    assert math.cos(theta) <= math.cos(math.pi - M)  # the branch condition, as the head tests it


@pytest.mark.parametrize("m", [0.2, 0.5, 1.0, 1.5])
def test_arcface_target_logit_is_monotone_and_penalised(m: float) -> None:
    head = ArcFaceHead(2, 2, scale=1.0, margin=m).double()
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    phi = head.target_logit(torch.cos(theta))
    assert bool((phi[1:] <= phi[:-1] + 1e-12).all()), "target logit must not increase with the angle"
    assert bool((phi <= torch.cos(theta) + 1e-12).all()), "the margin must never help the true class"
    # the one discontinuity: a step down of cos(m) + m sin(m) - 1 at theta = pi - m
    step = (phi[1:] - phi[:-1]).min().item()
    assert step == pytest.approx(-(math.cos(m) + m * math.sin(m) - 1.0), abs=2e-3)


def test_easy_margin_applies_only_below_90_degrees() -> None:
    head = _head(ArcFaceHead, easy_margin=True)
    near = head(_embedding(60.0), torch.tensor([0]))[0, 0].item()
    far = head(_embedding(120.0), torch.tensor([0]))[0, 0].item()
    assert near == pytest.approx(S * math.cos(math.radians(60.0) + M), abs=1e-5)
    assert far == pytest.approx(S * math.cos(math.radians(120.0)), abs=1e-5)


@pytest.mark.parametrize(("deg", "label"), [(30.0, 0), (30.0, 2), (-45.0, 1)])
def test_cosface_logits_match_hand_computation(deg: float, label: int) -> None:
    theta = _angles(deg)
    logits = _head(CosFaceHead, margin=0.35)(_embedding(deg), torch.tensor([label]))[0]
    expected = [S * (math.cos(t) - (0.35 if j == label else 0.0)) for j, t in enumerate(theta)]
    assert logits.tolist() == pytest.approx(expected, abs=1e-5)


def test_zero_margin_gives_plain_scaled_cosine() -> None:
    e, y = _embedding(30.0), torch.tensor([0])
    plain = [S * math.cos(t) for t in _angles(30.0)]
    assert _head(ArcFaceHead, margin=0.0)(e, y)[0].tolist() == pytest.approx(plain, abs=1e-5)
    assert _head(CosFaceHead, margin=0.0)(e, y)[0].tolist() == pytest.approx(plain, abs=1e-5)


def test_sub_centers_take_the_closest_vector_of_each_class() -> None:
    head = ArcFaceHead(2, 2, scale=S, margin=M, sub_centers=2).double()
    with torch.no_grad():  # rows: class 0 at 0 and 80 degrees, class 1 at 180 and 100 degrees
        head.weight.copy_(torch.tensor([_unit(0), _unit(80), _unit(180), _unit(100)], dtype=torch.float64))
    logits = head(_embedding(70.0), torch.tensor([0]))[0]
    assert logits.tolist() == pytest.approx([S * math.cos(math.radians(10) + M), S * math.cos(math.radians(30))])


def test_cosine_is_the_unpenalised_closed_set_score() -> None:
    head = _head(ArcFaceHead)
    cos = head.cosine(_embedding(30.0))[0]
    assert cos.tolist() == pytest.approx([math.cos(t) for t in _angles(30.0)], abs=1e-12)
    assert int(cos.argmax()) == 0


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("where", ["theta=0", "theta=pi"])
@pytest.mark.parametrize(
    "make", [ArcFaceHead, lambda *a: ArcFaceHead(*a, easy_margin=True), CosFaceHead], ids=["arc", "arc-easy", "cos"]
)
def test_gradients_are_finite_on_and_opposite_the_class_vector(make, where: str, dtype: torch.dtype) -> None:
    head = make(4, 3).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 4, dtype=dtype))
    e = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=dtype) * (1 if where == "theta=0" else -1)
    e.requires_grad_(True)
    loss = head.loss(e, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert e.grad is not None and bool(torch.isfinite(e.grad).all())
    assert head.weight.grad is not None and bool(torch.isfinite(head.weight.grad).all())


@pytest.mark.parametrize("theta", [0.3, 1.0, 2.0, 2.6, 2.8])
def test_arcface_gradient_is_the_full_margin_gradient(theta: float) -> None:
    """d(target logit)/d(theta) = -s sin(theta + m), not arcface_torch's straight-through -s sin(theta)."""
    head = ArcFaceHead(2, 2, scale=S, margin=M).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64))
    angle = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    e = torch.stack([torch.cos(angle), torch.sin(angle)])[None]
    head(e, torch.tensor([0]))[0, 0].backward()
    assert angle.grad is not None
    expected = -S * math.sin(theta + M) if theta + M <= math.pi else -S * math.sin(theta)
    assert angle.grad.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("theta", [1e-7, 1e-5, 1e-3, 1e-2])
def test_arcface_gradient_does_not_blow_up_at_tiny_angles_in_float32(theta: float) -> None:
    head = ArcFaceHead(2, 2, scale=S, margin=M)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    e = torch.tensor([[math.cos(theta), math.sin(theta)]], requires_grad=True)
    head(e, torch.tensor([0]))[0, 0].backward()
    assert e.grad is not None
    # the true gradient has norm s sin(theta + m) / |e|; rounding may shrink it near 0, never inflate it
    assert e.grad.norm().item() <= 1.01 * S * math.sin(theta + M)


def test_half_precision_cosines_get_float32_trigonometry() -> None:
    torch.manual_seed(0)
    head = ArcFaceHead(16, 5)
    e, y = torch.randn(8, 16, requires_grad=True), torch.arange(8) % 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(e, y)
        loss = head.loss(e, y)
    assert logits.dtype == loss.dtype == torch.float32
    loss.backward()
    assert e.grad is not None and bool(torch.isfinite(e.grad).all())
    assert torch.allclose(logits, head(e, y), atol=0.5)  # bf16 cosines (8 bits of mantissa) times s = 64


# ---------------------------------------------------------------- loss and class weights


def _ce(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def test_class_weights_weight_each_sample_by_its_class() -> None:
    e = torch.cat([_embedding(30.0), _embedding(120.0)])
    y = torch.tensor([0, 1])
    plain = _head(ArcFaceHead, scale=4.0)
    weighted = _head(ArcFaceHead, scale=4.0, class_weights=[3.0, 0.5, 1.0])
    per_sample = [_ce(row, label) for row, label in zip(plain(e, y).tolist(), [0, 1], strict=True)]
    assert plain.loss(e, y).item() == pytest.approx(sum(per_sample) / 2, abs=1e-9)
    by_hand = (3.0 * per_sample[0] + 0.5 * per_sample[1]) / (3.0 + 0.5)  # PyTorch's weighted mean
    assert weighted.loss(e, y).item() == pytest.approx(by_hand, abs=1e-9)
    assert weighted.loss(e, y).item() != pytest.approx(plain.loss(e, y).item(), abs=1e-3)


def test_a_zero_class_weight_drops_that_class_from_the_loss() -> None:
    e = torch.cat([_embedding(30.0), _embedding(120.0)])
    head = _head(CosFaceHead, scale=4.0, class_weights=[0.0, 1.0, 1.0])
    only_second = _ce(head(e, torch.tensor([0, 1]))[1].tolist(), 1)
    assert head.loss(e, torch.tensor([0, 1])).item() == pytest.approx(only_second, abs=1e-9)


def test_class_weights_match_torch_weighted_cross_entropy_and_survive_an_all_zero_batch() -> None:
    torch.manual_seed(0)
    w = torch.tensor([2.0, 0.0, 0.5, 1.0])
    head = ArcFaceHead(6, 4, scale=8.0, class_weights=w)
    e, y = torch.randn(10, 6), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 1, 1])
    torch_loss = torch.nn.CrossEntropyLoss(weight=w)(head(e, y), y)
    assert head.loss(e, y).item() == pytest.approx(torch_loss.item(), rel=1e-6)
    only_zero = torch.tensor([1, 1])
    assert head.loss(e[:2], only_zero).item() == 0.0  # torch would give nan here


def test_class_weights_from_counts() -> None:
    w = class_weights_from_counts([10, 20, 40])
    inv = [1 / 10, 1 / 20, 1 / 40]
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([v / (sum(inv) / 3) for v in inv], rel=1e-6)
    assert w.mean().item() == pytest.approx(1.0)
    assert class_weights_from_counts(torch.tensor([7, 7])).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("counts", "match"),
    [([5, 0, 3], r"class 1: 0"), ([5, -2], r"class 1: -2"), ([], "non-empty"), ([[1, 2]], "1-d")],
)
def test_class_weights_from_counts_refuses_bad_counts(counts: list, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        class_weights_from_counts(counts)


def test_margin_loss_trains_a_toy_problem() -> None:
    torch.manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    emb = centers.repeat_interleave(16, 0) + 0.3 * torch.randn(64, 8)
    y = torch.arange(4).repeat_interleave(16)
    head = ArcFaceHead(8, 4, scale=16.0, margin=0.3, class_weights=class_weights_from_counts([16, 16, 16, 16]))
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = head.loss(emb, y).item()
    for _ in range(60):
        opt.zero_grad()
        loss = head.loss(emb, y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    assert (head.cosine(emb).argmax(1) == y).float().mean().item() > 0.95


def test_head_saves_beside_the_model_with_its_class_weights(tmp_path) -> None:
    torch.manual_seed(0)
    head = ArcFaceHead(8, 5, class_weights=class_weights_from_counts([1, 2, 3, 4, 5]))
    save_task_modules({"margin": head}, tmp_path)
    fresh = ArcFaceHead(8, 5, class_weights=torch.ones(5))
    load_task_modules({"margin": fresh}, tmp_path)
    assert torch.equal(fresh.weight, head.weight)
    assert fresh.class_weights is not None and head.class_weights is not None
    assert torch.equal(fresh.class_weights, head.class_weights)


def test_build_margin_head_by_name() -> None:
    assert isinstance(build_margin_head("arcface", 16, 4, margin=0.3), ArcFaceHead)
    assert isinstance(build_margin_head("cosface", 16, 4), CosFaceHead)
    with pytest.raises(ConfigError, match=r"unknown margin head 'sphereface'.*arcface, cosface"):
        build_margin_head("sphereface", 16, 4)
    with pytest.raises(ConfigError, match="easy_margin"):
        build_margin_head("cosface", 16, 4, easy_margin=True)


# ---------------------------------------------------------------- argument and input checks


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (ArcFaceHead, {"scale": 0.0}, r"scale must be in \(0, inf\), got 0\.0"),
        (CosFaceHead, {"scale": -1.0}, r"scale .* got -1\.0"),
        (ArcFaceHead, {"scale": float("nan")}, r"scale must be a finite number, got nan"),
        (ArcFaceHead, {"margin": -0.1}, r"margin must be in \[0, 1\.5708\), got -0\.1"),
        (ArcFaceHead, {"margin": math.pi / 2}, r"margin must be in \[0, 1\.5708\), got 1\.57"),
        (ArcFaceHead, {"margin": 28.6}, r"margin .* got 28\.6"),
        (CosFaceHead, {"margin": 1.0}, r"margin must be in \[0, 1\), got 1\.0"),
        (ArcFaceHead, {"n_classes": 1}, r"n_classes must be an integer >= 2, got 1"),
        (CosFaceHead, {"embedding_dim": 0}, r"embedding_dim must be an integer >= 1, got 0"),
        (ArcFaceHead, {"embedding_dim": 2.5}, r"embedding_dim .* got 2\.5"),
        (ArcFaceHead, {"sub_centers": 0}, r"sub_centers must be an integer >= 1, got 0"),
        (ArcFaceHead, {"class_weights": [1.0, 1.0]}, r"class_weights must have shape \(3,\), got \(2,\)"),
        (CosFaceHead, {"class_weights": [1.0, -1.0, 1.0]}, r"class_weights must be finite, non-negative"),
        (ArcFaceHead, {"class_weights": [0.0, 0.0, 0.0]}, r"not all zero"),
    ],
)
def test_bad_arguments_are_config_errors(cls: type, kwargs: dict, match: str) -> None:
    args = {"embedding_dim": 4, "n_classes": 3, **kwargs}
    with pytest.raises(ConfigError, match=match):
        cls(**args)


def test_bad_inputs_are_value_errors() -> None:
    head = ArcFaceHead(4, 3)
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 4\), got \(2, 5\)"):
        head(torch.rand(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        head(torch.rand(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must be \(2,\) integers"):
        head(torch.rand(2, 4), torch.tensor([0.0, 1.0]))
