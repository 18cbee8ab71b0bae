"""``transform``: do the detector's faces survive a mirror and a small turn of the image?

Test-time transform consistency. Each image is also shown to the wrapped detector as
``views``: mirrored left-right (``flip``) and turned by each of ``angles_deg`` about the
image centre (bilinear, black corners). Each view's detections are mapped back into the
original frame: landmarks through the inverse map (after a mirror, the eye and mouth
corner indices are swapped back as well), boxes by their centre, keeping width and
height (a turned face's box is not the turned box). Then, per kept face of the original
view (see :mod:`.common`):

* it is matched to the best-overlapping detection of each other view with score >=
  ``match_score`` (a lower bar than ``score_threshold``, so a face that merely dips
  under the threshold in one view is not called missing); with IoU >= ``match_iou`` its
  disagreement in that view is the landmark NME between the two (mean point distance over
  ``sqrt(w * h)`` of the original box), otherwise ``missing`` (the face disappeared);
* the face's score is the mean disagreement over the views where its box stays inside
  the view's canvas (a face cut by a turned view's black corner is not held against it);
* a kept face of another view that matches nothing in the original (it appeared) is one
  more face, scored ``missing / number of views``.

Why it should expose the Landmark Shift Attack (LSA): the backdoored detector turns the
triggered face's landmarks by +phi in whatever frame it sees; mapped back from the
mirrored view that is -phi, so the two views disagree by about twice the attack's turn
(or by phi when the mirrored trigger no longer fires). A small turn of the image keeps
the trigger working and the mapped-back landmarks agree, so turns mainly test whether
a face (a fake one, for FGA) depends on the exact pixels. Cost: one detector pass per
view plus the original one, measured by the bench as a ratio to one pass.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from pydantic import Field
from torch import nn

from backdoorlab.defenses.base import Needs
from backdoorlab.defenses.face_monitors.common import (
    FLIP_ORDER,
    Detections,
    FaceMonitor,
    FaceScores,
    as_images,
    base_params,
    detect,
    keep_faces,
    landmark_nme,
)
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.metrics.average_precision import box_iou

Tensor = torch.Tensor
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def rotation_matrix(height: int, width: int, angle_deg: float) -> np.ndarray:
    """2x3 map from original pixels to a view turned by ``angle_deg`` (clockwise on screen) about the centre."""
    a = np.radians(angle_deg)
    c = np.array([(width - 1) / 2, (height - 1) / 2])
    lin = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.concatenate([lin, (c - lin @ c)[:, None]], 1)


def turn_images(images: Tensor, matrix: np.ndarray) -> Tensor:
    """Float (N, 3, H, W) images warped through the 2x3 ``matrix`` (original -> view), black outside."""
    h, w = images.shape[-2:]
    arr = images.permute(0, 2, 3, 1).numpy().astype(np.float32)
    out = np.stack([cv2.warpAffine(im, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)) for im in arr])
    return torch.from_numpy(out.reshape(arr.shape)).permute(0, 3, 1, 2).contiguous()


def unflip(det: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """Detections of a left-right mirrored image, in the original frame (landmark order restored)."""
    b = det["boxes"].copy()
    b[:, [0, 2]] = (width - 1) - det["boxes"][:, [2, 0]]
    lm = det["landmarks"][:, FLIP_ORDER].copy()
    lm[..., 0] = (width - 1) - lm[..., 0]
    return {**det, "boxes": b, "landmarks": lm}


def unturn(det: dict[str, np.ndarray], matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Detections of a turned view, in the original frame: landmarks exactly, boxes by their centre."""
    inv_lin = np.linalg.inv(matrix[:, :2])
    t = matrix[:, 2]

    def back(p: np.ndarray) -> np.ndarray:
        return (p - t) @ inv_lin.T

    b = det["boxes"]
    half = (b[:, 2:] - b[:, :2]) / 2
    centre = back((b[:, :2] + b[:, 2:]) / 2)
    return {**det, "boxes": np.concatenate([centre - half, centre + half], 1), "landmarks": back(det["landmarks"])}


def inside(boxes: np.ndarray, matrix: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """(F,) whether each original-frame box lies inside the view's canvas (its corners mapped by ``matrix``)."""
    if matrix is None or not len(boxes):
        return np.ones(len(boxes), bool)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack(c, -1) for c in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], 1)
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]
    ok = (mapped[..., 0] >= 0) & (mapped[..., 0] <= width - 1) & (mapped[..., 1] >= 0) & (mapped[..., 1] <= height - 1)
    return ok.all(1)


class TransformConfig(DefenceConfig):
    """The settings of :class:`TransformMonitor` (see its docstring)."""

    flip: bool = True
    angles_deg: list[float] = Field(default_factory=lambda: [-10.0, 10.0])
    score_threshold: float = Field(0.5, gt=0, lt=1)
    match_score: float = Field(0.2, gt=0, lt=1)
    match_iou: float = Field(0.4, gt=0, le=1)
    missing: float = Field(0.5, gt=0)
    min_face_px: float = Field(12.0, ge=0)
    batch_size: int = Field(64, ge=1)


@register_defence(TransformConfig)
class TransformMonitor(FaceMonitor):
    """Flag images whose faces' landmarks (or the faces themselves) change under a mirror or a small turn.

    Args:
        model: the deployed detector (or :meth:`wrap` it later).
        flip: include the left-right mirrored view.
        angles_deg: turns of the image, one view each (clockwise on screen is positive).
        score_threshold: faces from this score on are checked, in every view.
        match_score: detections of the other views from this score on can match a checked face.
        match_iou: overlap (original frame) for a match.
        missing: the disagreement of a face missing from a view (NME units; clean faces disagree by about
            0.05-0.1 between views, the bench's fit report says how much).
        min_face_px: faces narrower than this are not checked (see ``geometry``).
        batch_size: images per detector pass.
        device: where the detector runs.

    ``fit`` learns nothing (the score is a disagreement, already in NME units); it checks that the views
    are well formed and records the clean faces' mean disagreement in ``fit_report_``. The threshold comes
    from :meth:`calibrate` on clean images.
    """

    name = "transform"
    needs = Needs(clean_data=True, tasks=("face_detection",))

    def __init__(
        self,
        model: nn.Module | None = None,
        flip: bool = True,
        angles_deg: list[float] | tuple[float, ...] = (-10.0, 10.0),
        score_threshold: float = 0.5,
        match_score: float = 0.2,
        match_iou: float = 0.4,
        missing: float = 0.5,
        min_face_px: float = 12.0,
        batch_size: int = 64,
        device: str = "auto",
    ) -> None:
        super().__init__(model, score_threshold, min_face_px, batch_size, device)
        self.flip, self.angles_deg = bool(flip), [float(a) for a in angles_deg]
        if not self.flip and not self.angles_deg:
            raise ValueError("TransformMonitor needs at least one view: flip=True or some angles_deg")
        self.match_score, self.match_iou, self.missing = float(match_score), float(match_iou), float(missing)
        self.fit_report_: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {
            "flip": self.flip,
            "angles_deg": list(self.angles_deg),
            **base_params(self),
            "match_score": self.match_score,
            "match_iou": self.match_iou,
            "missing": self.missing,
        }

    @property
    def _loose(self) -> float:
        """The lowest score a detection needs to take part (to be checked, or to be matched)."""
        return min(self.match_score, self.score_threshold)

    @property
    def n_views(self) -> int:
        return int(self.flip) + len(self.angles_deg)

    def fit(self, *clean_inputs: Any) -> TransformMonitor:
        (images,) = clean_inputs
        faces = self.face_scores(images)
        self.fit_report_ = {
            "n_faces": len(faces.scores),
            "mean_face_disagreement": float(faces.scores.mean()) if len(faces.scores) else None,
        }
        return self

    def _views(self, images: Tensor) -> list[tuple[Detections, np.ndarray | None]]:
        """Per view: all its detections (score >= match_score) in the original frame, and its map (None = mirror)."""
        h, w = images.shape[-2:]
        model = self._require_model().to(self._device())
        out = []
        if self.flip:
            dets = detect(model, images.flip(-1), self.batch_size, self._device())
            out.append(([unflip(d, w) for d in keep_faces(dets, self._loose, 0.0)], None))
        for angle in self.angles_deg:
            m = rotation_matrix(h, w, angle)
            dets = detect(model, turn_images(images, m), self.batch_size, self._device())
            out.append(([unturn(d, m) for d in keep_faces(dets, self._loose, 0.0)], m))
        return out

    def face_scores(self, inputs: Any) -> FaceScores:
        tensor, _ = as_images(inputs)
        h, w = tensor.shape[-2:]
        model = self._require_model().to(self._device())
        original = keep_faces(detect(model, tensor, self.batch_size, self._device()), self._loose, 0.0)
        return self.compare_views(original, self._views(tensor), h, w)

    def compare_views(
        self, original: Detections, views: list[tuple[Detections, np.ndarray | None]], height: int, width: int
    ) -> FaceScores:
        """Per-face disagreement of the original detections with each view's, all in the original frame.

        ``original``: per image, every detection with score >= ``match_score``; ``views``: per view, the same
        mapped back into the original frame, and the view's 2x3 map (None for the mirror). See the module
        docstring for the rule.
        """
        h, w = height, width
        rows_i, rows_b, rows_s, rows_n, rows_kind = [], [], [], [], []
        for i, loose in enumerate(original):
            boxes, lms = self._kept(loose)
            total, counted = np.zeros(len(boxes)), np.zeros(len(boxes))
            for dets, m in views:
                other = dets[i]
                if len(boxes):
                    ok = inside(boxes, m, h, w)
                    d = np.full(len(boxes), self.missing)
                    if len(other["boxes"]):
                        iou = box_iou(boxes, other["boxes"])
                        best, matched = iou.argmax(1), iou.max(1) >= self.match_iou
                        d[matched] = np.minimum(
                            landmark_nme(lms[matched], other["landmarks"][best[matched]], boxes[matched]), self.missing
                        )
                    total += np.where(ok, d, 0.0)
                    counted += ok
                # faces this view is sure of that the original does not have at all (they appeared)
                sure_boxes, _ = self._kept(other)
                sure_boxes = sure_boxes[inside(sure_boxes, m, h, w) & inside(sure_boxes, IDENTITY, h, w)]
                for box in sure_boxes:
                    ov = box_iou(box[None], loose["boxes"]) if len(loose["boxes"]) else np.zeros((1, 0))
                    if not ov.size or ov.max() < self.match_iou:
                        rows_i.append(i), rows_b.append(box), rows_s.append(self.missing / self.n_views)
                        rows_n.append(0), rows_kind.append(True)
            for k in range(len(boxes)):
                rows_i.append(i), rows_b.append(boxes[k]), rows_s.append(total[k] / max(counted[k], 1.0))
                rows_n.append(int(counted[k])), rows_kind.append(False)
        return FaceScores(
            np.asarray(rows_i, np.int64),
            np.asarray(rows_b, np.float64).reshape(-1, 4),
            np.asarray(rows_s, np.float64),
            {"views_counted": np.asarray(rows_n, np.int64), "appeared": np.asarray(rows_kind, bool)},
        )

    def _kept(self, det: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(boxes, landmarks) of the detections the system acts on (score and size)."""
        b = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
        side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        keep = (np.asarray(det["scores"]) >= self.score_threshold) & (side >= self.min_face_px)
        return b[keep], np.asarray(det["landmarks"], np.float64).reshape(-1, 5, 2)[keep]
