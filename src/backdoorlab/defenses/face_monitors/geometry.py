"""``geometry``: does each face's five-point configuration fit its box, and the way the face is turned?

Per kept face (see :mod:`.common` for inputs, kept faces and the per-image maximum), three
kinds of evidence, each learned on the wrapped detector's own detections of clean images
in :meth:`GeometryMonitor.fit` (no labels needed):

* ``box``: the landmarks relative to their box, ``(l - box centre) / (w, h)`` (10 numbers);
* ``template``: ``log`` of the RMS residual of the best similarity fit of the ArcFace
  template to the landmarks (in template units: independent of size and roll). A rigid
  rotation leaves it unchanged, so it cannot see the Landmark Shift Attack (LSA) alone,
  but it sees shapes no face has, and a configuration *too* close to the template (the
  Face Generation Attack's fake face is labelled with the template itself) sits in the
  low tail;
* ``roll``: the landmark roll (the angle of that similarity fit) minus a roll read from
  the pixels of the face crop by a small CNN (:class:`~.common.CropNet`, two outputs,
  ``cos`` and ``sin`` of the roll). It is trained in ``fit`` on crops of the clean faces,
  each also turned by random angles within ``+-max_rotation_deg`` with the target turned
  alike, so it has to read the orientation from the face and not from the box. Why a
  learned regressor and not image moments: the second moments of a face crop give an
  axis that the background, the hair and a near-round face make arbitrary, and they
  cannot tell 0 from 180 degrees; the regressor costs one tiny forward pass per face.

LSA turns the landmarks about the box centre while the face in the pixels does not
turn: the ``roll`` disagreement is then the attack's angle, and the configuration
moves within its box. Scored as one robust Mahalanobis distance: the ``box`` and
``template`` features (11 numbers) through a minimum-covariance-determinant Gaussian
(scikit-learn ``MinCovDet``) fitted on all clean faces, and the roll disagreement as
one more independent coordinate, divided by its robust spread (1.4826 x MAD) measured
on held-out clean faces the regressor was not trained on (on its training faces it is
optimistic). Face score = ``sqrt(d_gauss^2 + (roll_gap / spread)^2)`` over the chosen
``features``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.covariance import MinCovDet
from torch import nn

from backdoorlab.data.alignment import wrap_degrees
from backdoorlab.defenses.base import Needs
from backdoorlab.defenses.face_monitors.common import (
    CropNet,
    FaceMonitor,
    FaceScores,
    as_images,
    augmented_crops,
    base_params,
    check_enough_faces,
    crop_faces,
    crop_matrices,
    flatten,
    run_crop_net,
    template_fit,
    train_crop_net,
)
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig

Feature = Literal["box", "template", "roll"]
FEATURES: tuple[Feature, ...] = ("box", "template", "roll")
MAD_TO_SIGMA = 1.4826


def box_features(boxes: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(F, 10) landmarks relative to their box: ``(l - centre) / (w, h)``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = (b[:, :2] + b[:, 2:]) / 2
    wh = np.clip(b[:, 2:] - b[:, :2], 1.0, None)
    return ((np.asarray(landmarks, np.float64) - centre[:, None]) / wh[:, None]).reshape(len(b), 10)


def shape_features(boxes: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((F, 11) box features + log template residual, (F,) landmark roll in degrees)."""
    roll, resid = template_fit(landmarks)
    return np.concatenate([box_features(boxes, landmarks), np.log(resid + 1e-3)[:, None]], 1), roll


def roll_from_output(out: np.ndarray) -> np.ndarray:
    """Degrees from the regressor's (cos, sin) outputs."""
    return np.degrees(np.arctan2(out[:, 1], out[:, 0])) if len(out) else np.zeros(0)


class GeometryConfig(DefenceConfig):
    """The settings of :class:`GeometryMonitor` (see its docstring)."""

    features: list[Feature] = Field(default_factory=lambda: list(FEATURES), min_length=1)
    score_threshold: float = Field(0.5, gt=0, lt=1)
    min_face_px: float = Field(12.0, ge=0)
    crop_size: int = Field(32, ge=16, le=128)
    margin: float = Field(1.2, ge=1.0, le=3.0)
    copies: int = Field(4, ge=1, le=32)
    max_rotation_deg: float = Field(45.0, ge=0, le=180)
    steps: int = Field(400, ge=1)
    lr: float = Field(3e-3, gt=0)
    width: int = Field(16, ge=4, le=128)
    holdout: float = Field(0.3, gt=0, lt=1)
    min_faces: int = Field(20, ge=5)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


@register_defence(GeometryConfig)
class GeometryMonitor(FaceMonitor):
    """Flag images with a face whose landmarks disagree with their box or with the face's turn in the pixels.

    Args:
        model: the deployed detector (or :meth:`wrap` it later).
        features: which evidence enters the score: ``box``, ``template``, ``roll`` (module docstring).
        score_threshold: faces from this detector score on are checked (the attacks' success threshold).
        min_face_px: faces whose box is narrower are not checked: their five points are a few pixels
            apart, too noisy to judge, and too small for a recogniser to align anyway.
        crop_size: side of the crops the roll regressor reads.
        margin: crop side as a multiple of the box's longer side.
        copies: crops per clean face when training the regressor (the first upright, the others turned).
        max_rotation_deg: largest turn of a training crop.
        steps, lr, width: the regressor's Adam steps (batches of 64), learning rate and base width.
        holdout: share of clean faces kept out of the regressor's training, to measure the roll gap's spread.
        min_faces: fewest clean faces ``fit`` accepts.
        batch_size: images per detector forward pass.
        seed: regressor initialisation, augmentation and the hold-out draw.
        device: where the detector runs ("auto", "cpu", "cuda"); the regressor stays on the CPU.
    """

    name = "geometry"
    needs = Needs(clean_data=True, tasks=("face_detection",))

    def __init__(
        self,
        model: nn.Module | None = None,
        features: list[Feature] | tuple[Feature, ...] = FEATURES,
        score_threshold: float = 0.5,
        min_face_px: float = 12.0,
        crop_size: int = 32,
        margin: float = 1.2,
        copies: int = 4,
        max_rotation_deg: float = 45.0,
        steps: int = 400,
        lr: float = 3e-3,
        width: int = 16,
        holdout: float = 0.3,
        min_faces: int = 20,
        batch_size: int = 64,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        super().__init__(model, score_threshold, min_face_px, batch_size, device)
        unknown = set(features) - set(FEATURES)
        if unknown or not features:
            raise ValueError(f"features must be a non-empty subset of {FEATURES}; got {list(features)}")
        self.features = [f for f in FEATURES if f in features]
        self.crop_size, self.margin, self.copies = int(crop_size), float(margin), int(copies)
        self.max_rotation_deg, self.steps, self.lr, self.width = float(max_rotation_deg), int(steps), float(lr), width
        self.holdout, self.min_faces, self.seed = float(holdout), int(min_faces), int(seed)
        self.gauss_: MinCovDet | None = None
        self.roll_net_: CropNet | None = None
        self.roll_spread_: float | None = None
        self.fit_report_: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            **base_params(self),
            "crop_size": self.crop_size,
            "margin": self.margin,
            "copies": self.copies,
            "max_rotation_deg": self.max_rotation_deg,
            "steps": self.steps,
            "lr": self.lr,
            "width": self.width,
            "holdout": self.holdout,
            "min_faces": self.min_faces,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ fit
    def fit(self, *clean_inputs: Any) -> GeometryMonitor:
        """Learn clean configurations and train the roll regressor on the detector's faces in clean images."""
        (images,) = clean_inputs
        tensor, uint8 = as_images(images)
        return self.fit_detections(uint8, *flatten(self.detect(tensor)))

    def fit_detections(
        self, uint8: np.ndarray, index: np.ndarray, boxes: np.ndarray, lms: np.ndarray
    ) -> GeometryMonitor:
        """:meth:`fit` from given clean faces: image index (F,), boxes (F, 4), landmarks (F, 5, 2) in ``uint8``."""
        check_enough_faces(len(boxes), self.min_faces, type(self).__name__)
        feats, roll = shape_features(boxes, lms)
        cols = self._gauss_columns()
        self.gauss_ = MinCovDet(random_state=self.seed).fit(feats[:, cols]) if cols else None
        self.fit_report_ = {"n_faces": len(boxes), "n_images": len(uint8)}
        if "roll" in self.features:
            self._fit_roll(uint8, index, boxes, lms, roll)
        return self

    def _gauss_columns(self) -> list[int]:
        cols = list(range(10)) if "box" in self.features else []
        return cols + ([10] if "template" in self.features else [])

    def _fit_roll(self, uint8: np.ndarray, index: np.ndarray, boxes: np.ndarray, lms: np.ndarray, roll: np.ndarray):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(boxes))
        n_out = max(2, round(self.holdout * len(boxes)))
        held, train = order[:n_out], order[n_out:]
        crops, points = augmented_crops(
            uint8, index[train], boxes[train], lms[train], self.crop_size, self.margin, self.copies,
            self.max_rotation_deg, rng,
        )  # fmt: skip
        target_roll = np.radians(template_fit(points)[0])
        torch.manual_seed(self.seed)
        net = CropNet(2, self.width)
        self.roll_net_ = train_crop_net(
            net, crops, np.stack([np.cos(target_roll), np.sin(target_roll)], 1), self.steps, self.lr, 64, self.seed
        )
        gap = self._roll_gap(uint8, index[held], boxes[held], roll[held])
        mad = float(np.median(np.abs(gap - np.median(gap))))
        self.roll_spread_ = max(MAD_TO_SIGMA * mad, 1.0)  # at least a degree: landmarks are not finer than that
        # how well the regressor reads turned faces it never saw (the held-out faces, turned +-30 degrees)
        turned = []
        for angle in (-30.0, 30.0):
            m = crop_matrices(boxes[held], self.crop_size, self.margin, np.full(len(held), angle))
            pred = roll_from_output(run_crop_net(self.roll_net_, crop_faces(uint8, index[held], m, self.crop_size)))
            turned.append(np.abs(wrap_degrees(roll[held] - angle - pred)))
        self.fit_report_.update(
            roll_train_faces=len(train),
            roll_heldout_faces=len(held),
            roll_gap_median_abs_deg=float(np.median(np.abs(gap))),
            roll_gap_spread_deg=self.roll_spread_,
            roll_turned_heldout_mae_deg=float(np.mean(np.concatenate(turned))),
        )

    def _roll_gap(self, uint8: np.ndarray, index: np.ndarray, boxes: np.ndarray, roll: np.ndarray) -> np.ndarray:
        """(F,) landmark roll minus the roll the regressor reads from the upright crop, degrees in (-180, 180]."""
        assert self.roll_net_ is not None
        crops = crop_faces(uint8, index, crop_matrices(boxes, self.crop_size, self.margin), self.crop_size)
        return np.asarray(wrap_degrees(roll - roll_from_output(run_crop_net(self.roll_net_, crops))), np.float64)

    # ---------------------------------------------------------------- score
    def face_scores(self, inputs: Any) -> FaceScores:
        tensor, uint8 = as_images(inputs)
        needed = (["gauss_"] if self._gauss_columns() else []) + (["roll_net_"] if "roll" in self.features else [])
        self._check_fitted(*needed)
        index, boxes, lms = flatten(self.detect(tensor))
        return self.score_faces(uint8, index, boxes, lms)

    def score_faces(self, uint8: np.ndarray, index: np.ndarray, boxes: np.ndarray, lms: np.ndarray) -> FaceScores:
        """The per-face scores of given detections (``uint8`` (N, H, W, 3) images they were found in)."""
        feats, roll = shape_features(boxes, lms)
        total = np.zeros(len(boxes))
        parts: dict[str, np.ndarray] = {"landmark_roll_deg": roll, "template_residual": np.exp(feats[:, 10]) - 1e-3}
        if self.gauss_ is not None and len(boxes):
            d2 = self.gauss_.mahalanobis(feats[:, self._gauss_columns()])
            parts["shape_distance"] = np.sqrt(d2)
            total += d2
        if "roll" in self.features:
            gap = self._roll_gap(uint8, index, boxes, roll) if len(boxes) else np.zeros(0)
            assert self.roll_spread_ is not None
            parts["roll_gap_deg"] = gap
            total += (gap / self.roll_spread_) ** 2
        return FaceScores(index, boxes, np.sqrt(total), parts)
