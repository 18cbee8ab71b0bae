"""Rendered scene clips (deterministic, smooth, exact per-frame truth, triggers on chosen frames) and the
flicker monitor on known detector outputs: a smooth face scores low, a landmark jump relative to its box high."""

from __future__ import annotations

import numpy as np
import pytest

from backdoorlab.data.synthetic.scene_sequences import ClipMotion, render_scene_clip, trigger_frames
from backdoorlab.data.synthetic.scenes import SyntheticSceneSpec
from backdoorlab.defenses.conformance import check_runtime_monitor
from backdoorlab.defenses.face_monitors.flicker import FlickerMonitor, track_faces
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers.face_patch import FacePatchTrigger

SPEC = SyntheticSceneSpec.tiny(min_face_px=16.0, max_faces=2, empty_fraction=0.0)
MOTION = ClipMotion(n_frames=5)


@pytest.fixture(scope="module")
def clip():
    return render_scene_clip(SPEC, 1, motion=MOTION)


def test_a_clip_is_deterministic_smooth_and_tracks_its_faces(clip) -> None:
    again = render_scene_clip(SPEC, 1, motion=MOTION)
    assert np.array_equal(clip.images, again.images) and len(clip) == 5
    assert list(clip.annotations["frame"]) == list(range(5))
    inst = clip.instances
    labels = [tuple(inst.rows(t)["label"]) for t in range(5)]
    assert len(labels[0]) >= 1 and all(lab == labels[0] for lab in labels)  # the same faces in every frame
    boxes = np.stack([inst.rows(t)["boxes"][0] for t in range(5)])
    steps = np.diff(boxes, axis=0)
    bound = MOTION.max_speed * SPEC.size * 1.5 + 0.5 * MOTION.max_scale_rate * SPEC.size * 3
    assert np.abs(steps).max() <= bound + 2  # moves a little per frame, no teleport
    assert not np.array_equal(clip.images[0], clip.images[-1])


def test_a_trigger_goes_on_the_chosen_frames_only(clip) -> None:
    triggered = trigger_frames(clip, FacePatchTrigger(size=0.3, min_face_px=8, pattern="checkerboard"), [1, 3])
    changed = (triggered.images != clip.images).any((1, 2, 3))
    assert list(changed) == [False, True, False, True, False]
    assert list(triggered.annotations["triggered"]) == list(changed)


def _face(t: int, angle_deg: float, shift: float = 2.0) -> dict[str, np.ndarray]:
    """A face gliding right and growing, its landmarks turned by ``angle_deg`` about the box centre."""
    w = 40 + t
    box = np.array([10 + shift * t, 20, 10 + shift * t + w, 20 + w], float)
    c = (box[:2] + box[2:]) / 2
    base = np.array([[-0.2, -0.1], [0.2, -0.1], [0, 0.05], [-0.15, 0.2], [0.15, 0.2]]) * w
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return {"boxes": box[None], "scores": np.array([0.9]), "landmarks": (c + base @ rot.T)[None]}


def _clip(angles: list[float]) -> list[dict[str, np.ndarray]]:
    return [_face(t, a) for t, a in enumerate(angles)]


def test_flicker_scores_landmark_jumps_relative_to_the_box_not_smooth_motion() -> None:
    smooth = _clip([0.5 * t for t in range(8)])  # a slow roll: 0.5 degrees per frame, box moving and growing
    flicker = _clip([0, 0, 30, 0, 30, 0, 0, 0])  # the backdoor firing in two frames
    mon = FlickerMonitor()
    assert len(track_faces(flicker)) == 1  # one face, linked through all frames
    raw = mon.score([smooth, flicker])
    assert raw[0] == pytest.approx(0.0, abs=1e-6) and raw[1] == pytest.approx(30.0, abs=1e-6)
    noisy = [_clip([0.5 * t + j for t, j in enumerate(np.random.default_rng(s).normal(0, 1, 8))]) for s in range(6)]
    mon.fit(noisy)
    assert mon.scale_ is not None and 0 < mon.scale_ < 3
    check_runtime_monitor(mon, noisy, [flicker, smooth], false_alarm_rate=0.2)
    assert mon.flag([flicker]).all()


def test_unconfident_or_short_tracks_are_not_scored() -> None:
    faint = [{**f, "scores": np.array([0.2])} for f in _clip([0, 30, 0, 30])]
    assert FlickerMonitor().score([faint, _clip([0, 30])]).tolist() == [0.0, 0.0]
    with pytest.raises(BackdoorLabError, match="no clean track"):
        FlickerMonitor().fit([faint])
