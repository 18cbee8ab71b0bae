"""RetinaFace: output shapes against the priors, hookable parts, deterministic init, and a tiny overfit."""

from __future__ import annotations

import pytest
import torch

from backdoorlab.tasks.face_detection.anchors import AnchorSpec, make_priors
from backdoorlab.tasks.face_detection.matching import MultiBoxLoss, box_iou
from backdoorlab.tasks.face_detection.postprocess import decode_detections
from backdoorlab.tasks.face_detection.retinaface import FPN, SSH, MobileNetV1, ResNetBackbone, RetinaFace


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet18"])
@pytest.mark.parametrize("size", [160, 192])
def test_output_shapes_match_the_priors(backbone: str, size: int) -> None:
    torch.manual_seed(0)
    model = RetinaFace(backbone).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    a = AnchorSpec().num_priors(size, size)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "logits": (2, a, 2),
        "boxes": (2, a, 4),
        "landmarks": (2, a, 10),
    }
    assert all(torch.isfinite(v).all() for v in out.values())


def test_a_non_square_canvas_and_three_anchors_per_cell() -> None:
    spec = AnchorSpec(min_sizes=((10, 16, 24), (32, 48, 64), (96, 128, 160)))
    model = RetinaFace(anchors_per_cell=3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 224, 96))
    assert out["logits"].shape == (1, len(make_priors(spec, 224, 96)), 2)


def test_backbones_give_c3_c4_c5_at_strides_8_16_32() -> None:
    x = torch.rand(1, 3, 192, 192)
    for body in (MobileNetV1(), ResNetBackbone(base_width=16)):
        feats = body(x)
        assert [f.shape[-1] for f in feats] == [24, 12, 6]
        assert tuple(f.shape[1] for f in feats) == body.out_channels
    assert MobileNetV1().out_channels == (64, 128, 256)


def test_hookable_parts_and_features() -> None:
    model = RetinaFace().eval()
    assert isinstance(model.fpn, FPN) and all(isinstance(m, SSH) for m in model.ssh)
    assert len(model.class_heads) == len(model.box_heads) == len(model.landmark_heads) == 3
    seen = {}

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen["ssh1"] = output.shape

    handle = model.ssh[1].register_forward_hook(hook)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        feats = model.features(x)
        out = model(x)
        again = model.heads(feats)
    handle.remove()
    assert [tuple(f.shape) for f in feats] == [(1, 64, 20, 20), (1, 64, 10, 10), (1, 64, 5, 5)]
    assert seen["ssh1"] == (1, 64, 10, 10)
    for k in out:
        torch.testing.assert_close(out[k], again[k])


def test_init_is_deterministic_given_the_seed() -> None:
    torch.manual_seed(7)
    a = RetinaFace().state_dict()
    torch.manual_seed(7)
    b = RetinaFace().state_dict()
    torch.manual_seed(8)
    c = RetinaFace().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_parameter_counts() -> None:
    assert sum(p.numel() for p in RetinaFace().parameters()) == 426_608
    assert sum(p.numel() for p in RetinaFace("resnet18").parameters()) == 12_015_648


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown RetinaFace backbone"):
        RetinaFace("vgg16")


def painted_scenes(size: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two grey canvases with skin-coloured rectangles as faces (one with a dark 'eye'), landmarks inside."""
    imgs = torch.full((2, 3, size, size), 0.2)
    boxes = [torch.tensor([[20.0, 30, 70, 90], [90, 40, 120, 75]]), torch.tensor([[40.0, 50, 130, 150]])]
    layout = torch.tensor([[-0.25, -0.1], [0.25, -0.1], [0.0, 0.05], [-0.2, 0.25], [0.2, 0.25]])
    targets = []
    for i, b in enumerate(boxes):
        for x1, y1, x2, y2 in b.long().tolist():
            imgs[i, :, y1:y2, x1:x2] = torch.tensor([0.9, 0.6, 0.4])[:, None, None]
            ey, ex = (y1 + y2) // 2, x1 + (x2 - x1) // 4
            imgs[i, :, ey - 2 : ey + 2, ex - 2 : ex + 2] = 0.0
        centre, wh = (b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]
        landmarks = centre[:, None] + wh[:, None] * layout
        targets.append({"boxes": b, "landmarks": landmarks, "visible": torch.ones(len(b), 5, dtype=torch.bool)})
    return imgs, targets


def test_a_few_dozen_steps_overfit_two_painted_images() -> None:
    torch.manual_seed(0)
    size = 160
    imgs, targets = painted_scenes(size)
    model = RetinaFace()
    priors = make_priors(AnchorSpec(), size, size)
    criterion = MultiBoxLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = criterion(model(imgs), targets, priors)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        losses.append({k: float(v.detach()) for k, v in loss.items()})
    first, last = losses[0], losses[-1]
    assert last["loss"] < 0.05 * first["loss"], (first, last)
    for part in ("loss_cls", "loss_box", "loss_landmarks"):
        assert last[part] < 0.25 * first[part], (part, first, last)
    # the faces are found (batch statistics: 30 steps are too few for BatchNorm's running averages)
    with torch.no_grad():
        dets = decode_detections(model(imgs), priors, score_threshold=0.5)
    for d, t in zip(dets, targets, strict=True):
        assert box_iou(t["boxes"], d["boxes"]).max(1).values.min() > 0.7
