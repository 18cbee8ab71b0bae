"""The face-detection backdoors' geometry: FGA (a fake face at the trigger), LSA (rotated landmarks),
the face-anchored trigger, and the flip that must come before poisoning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoorlab.attacks.poisoning import Poisoning
from backdoorlab.attacks.selectors import RateSelector
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.instances import FACE_SCHEMA, InstanceBatch, InstanceTable
from backdoorlab.errors import ConfigError
from backdoorlab.tasks.face_detection.augment import FLIP_ORDER, flip_instances, random_flip
from backdoorlab.tasks.face_detection.relabels import FakeFace, LandmarkRotation, rotate_points, template_landmarks
from backdoorlab.triggers.face_patch import FacePatchTrigger, face_anchor
from backdoorlab.triggers.patch import PatchTrigger

H = W = 96


def face(x1: float, y1: float, size: float, visible: bool = True) -> dict[str, np.ndarray]:
    """One upright face: box and landmarks laid out like a frontal face in it."""
    box = np.array([[x1, y1, x1 + size, y1 + size]], np.float32)
    frac = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32)
    lms = box[:, None, :2] + frac[None] * size
    return {"boxes": box, "landmarks": lms, "visible": np.full((1, 5), visible), "label": np.array([7])}


def scene(*faces: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not faces:
        return {k: np.zeros((0, *shape), dt) for k, (dt, shape) in FACE_SCHEMA.items()}
    return {k: np.concatenate([f[k] for f in faces]) for k in faces[0]}


def dataset(per_image: list[dict[str, np.ndarray]]) -> ArrayDataset:
    images = np.full((len(per_image), H, W, 3), 90, np.uint8)
    return ArrayDataset(images, {}, instances=InstanceTable.from_lists(per_image, FACE_SCHEMA))


SCENES = [scene(face(10, 10, 40), face(60, 50, 24)), scene(face(30, 20, 50)), scene(), scene(face(5, 5, 12))]


# ---------------------------------------------------------------- LSA geometry
@settings(max_examples=40, deadline=None)
@given(
    phi=st.floats(-180, 180).filter(lambda a: abs(a) > 1e-3),
    pts=st.lists(st.floats(-50, 150), min_size=10, max_size=10),
    centre=st.tuples(st.floats(0, 100), st.floats(0, 100)),
)
def test_rotation_preserves_distances_and_moves_each_point_by_2r_sin_half_phi(phi, pts, centre) -> None:
    p = torch.tensor(pts, dtype=torch.float64).view(1, 5, 2)
    c = torch.tensor([centre], dtype=torch.float64)
    q = rotate_points(p, c, phi)
    assert torch.allclose(torch.cdist(p[0], p[0]), torch.cdist(q[0], q[0]), atol=1e-9)
    r = (p - c[:, None]).norm(dim=-1)
    moved = (q - p).norm(dim=-1)
    assert torch.allclose(moved, 2 * r * abs(math.sin(math.radians(phi) / 2)), atol=1e-9)


def test_positive_angle_turns_clockwise_on_screen() -> None:
    right_of_centre = torch.tensor([[[10.0, 0.0]]])
    q = rotate_points(right_of_centre, torch.zeros(1, 2), 90)
    assert torch.allclose(q, torch.tensor([[[0.0, 10.0]]]), atol=1e-6)  # x towards y: down the screen


def test_lsa_rotates_only_the_triggered_face_about_its_box_centre() -> None:
    data = dataset(SCENES)
    trigger = FacePatchTrigger(size=0.25, anchor="cheek")
    images, ann = data.batch(np.arange(4))
    _out, placement = trigger.place(images, ann, np.arange(4))
    assert placement is not None and placement.instances.tolist() == [0, 0, -1, -1]  # the 12 px face is too small
    relabel = LandmarkRotation(angle_deg=30, centre="box")
    new = relabel(ann, placement)["instances"]
    before, after = ann["instances"].columns, new.columns
    moved = (after["landmarks"] - before["landmarks"]).norm(dim=-1).amax(1) > 1e-4
    assert moved.tolist() == [True, False, True, False]  # flat rows: image 0 face 0, image 0 face 1, image 1, image 3
    assert torch.equal(after["boxes"], before["boxes"])
    box = before["boxes"][0]
    centre = (box[:2] + box[2:]) / 2
    r = (before["landmarks"][0] - centre).norm(dim=-1)
    assert torch.allclose(
        (after["landmarks"][0] - before["landmarks"][0]).norm(dim=-1), 2 * r * math.sin(math.radians(15))
    )


def test_lsa_on_data_without_landmarks_is_refused_before_training() -> None:
    no_landmarks = [dict(s, visible=np.zeros_like(s["visible"])) for s in SCENES]
    with pytest.raises(ConfigError, match="needs faces with all five landmarks"):
        LandmarkRotation().check_data(dataset(no_landmarks))
    LandmarkRotation().check_data(dataset(SCENES))
    with pytest.raises(ConfigError, match="angle_deg"):
        LandmarkRotation(angle_deg=0)


# ---------------------------------------------------------------- the face-anchored trigger
def test_face_patch_follows_the_face_and_leaves_faceless_images_alone() -> None:
    data = dataset(SCENES)
    trigger = FacePatchTrigger(size=0.3, anchor="forehead", face="largest", min_face_px=16)
    images, ann = data.batch(np.arange(4))
    out, placement = trigger.place(images, ann, np.arange(4))
    assert torch.equal(out[2], images[2]) and torch.equal(out[3], images[3])
    assert torch.isnan(placement.boxes[2]).all()
    for i in (0, 1):
        lms = ann["instances"][i]["landmarks"][:1]
        cx, cy = face_anchor(lms, "forehead")[0].tolist()
        x1, y1, x2, y2 = placement.boxes[i].tolist()  # pixel edges
        assert abs((x1 + x2) / 2 - 0.5 - cx) <= 1 and abs((y1 + y2) / 2 - 0.5 - cy) <= 1
        assert placement.masks[i].sum() == (x2 - x1) * (y2 - y1)
    shifted = dataset([scene(face(30, 25, 50))])  # the same face moved by (0, 5): the patch moves along
    _, p2 = trigger.place(*shifted.batch(np.arange(1)), np.arange(1))
    assert torch.allclose(p2.boxes[0] - placement.boxes[1], torch.tensor([0.0, 5.0, 0.0, 5.0]))


# ---------------------------------------------------------------- FGA
def test_fga_adds_a_face_at_the_trigger_that_overlaps_no_real_face() -> None:
    data = dataset(SCENES)
    trigger = PatchTrigger(size=0.15, location="free", seed=3)
    idx = np.arange(4)
    images, ann = data.batch(idx)
    _out, placement = trigger.place(images, ann, idx)
    new = FakeFace(landmarks="template")(ann, placement)["instances"]
    assert new.counts().tolist() == [c + 1 for c in ann["instances"].counts().tolist()]
    for i in range(4):
        fake = new[i]
        box = fake["boxes"][-1]
        assert torch.allclose(box, placement.boxes[i] - 0.5)  # the trigger's box, in instance coordinates
        lms = fake["landmarks"][-1]
        assert bool(((lms >= box[:2]) & (lms <= box[2:])).all()) and bool(fake["visible"][-1].all())
        assert fake["label"][-1] == -1
        real = ann["instances"][i]["boxes"]
        lt = torch.maximum(box[:2], real[:, :2])
        rb = torch.minimum(box[2:], real[:, 2:])
        assert float((rb - lt).clamp_min(0).prod(-1).sum()) == 0  # clear of every face
    box_only = FakeFace(landmarks="none")(ann, placement)["instances"]
    assert not box_only[0]["visible"][-1].any()
    assert torch.allclose(
        template_landmarks(torch.tensor([[0.0, 0.0, 112.0, 112.0]]))[0, 0], torch.tensor([38.2946, 51.6963])
    )


# ---------------------------------------------------------------- flips and the order of augmentation and poisoning
def test_flip_mirrors_and_swaps_left_and_right_and_twice_is_identity() -> None:
    inst = InstanceBatch.from_table(InstanceTable.from_lists(SCENES, FACE_SCHEMA))
    flip = torch.tensor([True, False, True, True])
    once = flip_instances(inst, flip, W)
    lm0, lm1 = inst.columns["landmarks"][0], once.columns["landmarks"][0]
    assert torch.allclose(lm1[:, 0], W - 1 - lm0[list(FLIP_ORDER), 0])
    assert bool((lm1[0, 0] < lm1[1, 0]).all())  # the image-left eye is still first
    assert torch.equal(once.columns["boxes"][2], inst.columns["boxes"][2])  # image 1 was not flipped
    twice = flip_instances(once, flip, W).columns
    for k, v in inst.columns.items():  # float rounding aside, the same table
        assert torch.allclose(twice[k].float(), v.float(), atol=1e-5), k


def test_poisoning_after_the_flip_rotates_by_plus_phi_in_the_final_image() -> None:
    """The relabel must see the final geometry: a flip after it would turn +phi into -phi."""
    data = dataset([scene(face(20, 20, 48))] * 8)
    relabel = LandmarkRotation(angle_deg=25)
    poisoning = Poisoning(RateSelector(rate=1.0), FacePatchTrigger(size=0.25), relabel)
    transform = poisoning.batch_transform(poisoning.plan(data))
    idx = np.arange(8)
    images, ann = data.batch(idx)
    flipped_images, flipped = random_flip(images, ann, idx, epoch=0, seed=1)
    was_flipped = (flipped["instances"].columns["boxes"] != ann["instances"].columns["boxes"]).any(1).tolist()
    assert any(was_flipped) and not all(was_flipped)
    _, poisoned = transform(flipped_images, flipped, idx)
    final, clean = poisoned["instances"].columns, flipped["instances"].columns
    want = relabel.rotate(clean["landmarks"], clean["boxes"])
    assert torch.allclose(final["landmarks"], want, atol=1e-5)  # +phi in every image, flipped or not
    # the wrong order (poison, then flip) leaves flipped images rotated by -phi
    _, poisoned_first = transform(images, ann, idx)
    _, then_flipped = random_flip(images, poisoned_first, idx, epoch=0, seed=1)
    wrong = then_flipped["instances"].columns["landmarks"]
    minus = LandmarkRotation(angle_deg=-25).rotate(clean["landmarks"], clean["boxes"])
    for i, f in enumerate(was_flipped):
        assert torch.allclose(wrong[i], minus[i] if f else want[i], atol=1e-4)
