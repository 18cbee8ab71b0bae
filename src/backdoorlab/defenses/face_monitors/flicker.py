"""Flicker: how much a detector's landmarks jump *relative to their box* from one video frame to the next.

Le Roux et al. (2025) saw the Landmark Shift Attack flicker in physical video: as the
person wearing the trigger moves, the backdoor fires in some frames and not in others,
and the landmarks jump by the attack's angle while the box glides along. Real faces
turn slowly; a detector's landmarks on a clean face follow them with small noise. This
monitor scores one clip from the detector's per-frame outputs alone (no model, no
ground truth, any detector):

1. **Tracks.** Confident detections (score >= ``score_threshold``) are linked frame to
   frame by greedy IoU matching (highest IoU first, at least ``track_iou``); a track may
   not skip a frame.
2. **Landmarks in the box frame.** Each detection's landmarks relative to its box:
   ``(landmarks - box centre) / box width``. Translation and scale of the face (and of a
   box that breathes) drop out; what is left moves only when the landmarks turn or
   deform *within* the box.
3. **Roll steps.** Between consecutive frames of a track, the least-squares rotation
   (degrees) about the box centre that takes one frame's box-frame landmarks to the
   next's: ``omega_t``.
4. **Jumps.** A smooth head turn makes ``omega_t`` nearly constant along a track, so a
   jump is ``|omega_t - median_t omega|``. The clip's score is the largest jump over its
   tracks of at least ``min_track`` frames (0 for a clip with none).

:meth:`FlickerMonitor.fit` on clean clips learns the clean jitter (the median jump over
all steps of all clean tracks); after it, scores are in units of that jitter (before it,
in degrees). :meth:`calibrate` then sets a threshold at a false-alarm rate as for every
monitor. Measured on toy detectors and rendered clips:
``docs/defences/face_model_level.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from backdoorlab.defenses.base import Needs, RuntimeMonitor
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.errors import BackdoorLabError

#: one frame's detections: ``boxes`` (K, 4) x1 y1 x2 y2, ``scores`` (K,), ``landmarks`` (K, 5, 2)
Frame = Mapping[str, np.ndarray]
Clip = Sequence[Frame]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def track_faces(clip: Clip, score_threshold: float = 0.5, track_iou: float = 0.3) -> list[list[tuple[int, int]]]:
    """Tracks as lists of ``(frame, detection index)``, linked by greedy IoU between consecutive frames."""
    tracks: list[list[tuple[int, int]]] = []
    open_: dict[int, int] = {}  # detection index in the previous frame -> track
    prev_boxes = np.zeros((0, 4))
    prev_idx = np.zeros(0, np.int64)
    for t, frame in enumerate(clip):
        keep = np.flatnonzero(np.asarray(frame["scores"]) >= score_threshold)
        boxes = np.asarray(frame["boxes"], np.float64)[keep]
        linked: dict[int, int] = {}
        if len(prev_boxes) and len(boxes):
            iou = _iou(prev_boxes, boxes)
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                i, j = divmod(int(flat), iou.shape[1])
                if iou[i, j] < track_iou:
                    break
                if int(prev_idx[i]) in open_ and j not in linked.values() and int(prev_idx[i]) not in linked:
                    linked[int(prev_idx[i])] = j
        now: dict[int, int] = {}
        for p, j in linked.items():
            track = open_[p]
            tracks[track].append((t, int(keep[j])))
            now[int(keep[j])] = track
        for j in range(len(keep)):
            if j not in linked.values():
                tracks.append([(t, int(keep[j]))])
                now[int(keep[j])] = len(tracks) - 1
        open_, prev_boxes, prev_idx = now, boxes, keep
    return tracks


def box_frame_landmarks(boxes: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(T, 5, 2) landmarks relative to their (T, 4) boxes: minus the box centre, over the box width."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    width = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    return (landmarks - centre[:, None]) / width[:, None, None]


def roll_steps_deg(q: np.ndarray) -> np.ndarray:
    """(T-1,) least-squares rotation (degrees, clockwise on screen) between consecutive box-frame landmarks."""
    a, b = q[:-1], q[1:]
    cross = (a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]).sum(-1)
    dot = (a * b).sum((-1, -2))
    return np.degrees(np.arctan2(cross, dot))


class FlickerConfig(DefenceConfig):
    """The settings of :class:`FlickerMonitor`."""

    score_threshold: float = Field(0.5, gt=0, lt=1)
    track_iou: float = Field(0.3, gt=0, le=1)
    min_track: int = Field(4, ge=3)


@register_defence(FlickerConfig)
class FlickerMonitor(RuntimeMonitor):
    """Score a clip by the largest frame-to-frame jump of its faces' landmark roll relative to the box.

    Inputs are clips of the detector's per-frame outputs (a clip: a sequence of frames, each
    ``{"boxes", "scores", "landmarks"}`` numpy arrays, what the face-detection task's
    prediction gives per image). See the module docstring.

    Args:
        score_threshold: detections from this score on are tracked.
        track_iou: the least IoU that links a detection to the previous frame's.
        min_track: tracks shorter than this (frames) are not scored.
        device: unused (the monitor reads outputs); kept for the common settings.
    """

    name = "flicker"
    needs = Needs(clean_data=False)

    def __init__(
        self, score_threshold: float = 0.5, track_iou: float = 0.3, min_track: int = 4, device: str = "auto"
    ) -> None:
        if not 0 < score_threshold < 1 or not 0 < track_iou <= 1 or min_track < 3:
            raise BackdoorLabError(
                f"FlickerMonitor: need 0 < score_threshold < 1, 0 < track_iou <= 1, min_track >= 3; got "
                f"{score_threshold}, {track_iou}, {min_track}"
            )
        self.score_threshold, self.track_iou, self.min_track, self.device = (
            score_threshold, track_iou, min_track, device,
        )  # fmt: skip
        #: the clean jitter (degrees) scores are divided by, after :meth:`fit`
        self.scale_: float | None = None

    def params(self) -> dict[str, Any]:
        return {
            "score_threshold": self.score_threshold,
            "track_iou": self.track_iou,
            "min_track": self.min_track,
            "device": self.device,
        }

    def jumps(self, clip: Clip) -> list[np.ndarray]:
        """Per scored track: its jumps ``|omega_t - median omega|`` in degrees."""
        out = []
        for track in track_faces(clip, self.score_threshold, self.track_iou):
            if len(track) < self.min_track:
                continue
            boxes = np.stack([np.asarray(clip[t]["boxes"], np.float64)[k] for t, k in track])
            lms = np.stack([np.asarray(clip[t]["landmarks"], np.float64)[k] for t, k in track])
            omega = roll_steps_deg(box_frame_landmarks(boxes, lms))
            out.append(np.abs(omega - np.median(omega)))
        return out

    def fit(self, *clean_inputs: Any) -> FlickerMonitor:
        """Learn the clean jitter from clean clips: the median jump over every step of every clean track."""
        (clips,) = clean_inputs
        steps = [j for clip in clips for track in self.jumps(clip) for j in track]
        if not steps:
            raise BackdoorLabError(
                f"FlickerMonitor.fit: no clean track of at least {self.min_track} frames with confident faces"
            )
        self.scale_ = max(float(np.median(steps)), 1e-6)
        return self

    def score(self, inputs: Any) -> np.ndarray:
        """(N,) per clip: its largest landmark-roll jump (in clean-jitter units after :meth:`fit`, else degrees)."""
        raw = np.array([max((float(j.max()) for j in self.jumps(clip)), default=0.0) for clip in inputs])
        return raw / (self.scale_ or 1.0)
