"""``aux_landmarker``: a second landmarker, asked about the detector's own boxes, cross-checks its five points.

The Landmark Shift Attack (LSA) moves the landmarks of a triggered face while leaving
its box alone. A landmarker that was never trained with the trigger reads the points
from the face's pixels inside that same box, so on a triggered face the two disagree by
about the attack's displacement, and on a clean face by the two landmarkers' usual
error. Face score: the NME between the detector's landmarks and the second
landmarker's, the mean point distance over ``sqrt(w * h)`` of the box (the landmark
metrics' ``"box"`` normaliser; the inter-ocular distance would itself be moved by the
attack). Two second landmarkers (``landmarker``):

* ``"cnn"``: a small CNN (:class:`~.common.CropNet`, 10 outputs) regressing the five
  points from a ``crop_size`` crop of the detector's box, trained in ``fit`` on the
  wrapped detector's own detections of clean images (the defender needs no labels: on
  clean inputs a backdoored detector's landmarks are as good as a clean one's). Each
  clean face is also shown turned by random angles within ``+-max_rotation_deg`` and
  slightly shifted and scaled, with its points moved alike, so the network reads where
  the eyes are rather than where eyes usually are in a box. ``fit_report_`` holds its
  NME against the detector on held-out clean faces.
* ``"dlib"``: dlib's 68-point shape predictor (the optional ``dlib`` extra,
  :class:`~backdoorlab.models.dlib_landmarker.DlibLandmarker`), reduced to the five
  points. dlib's predictor was made for faces of 80 px and more, and synthetic scenes
  hold faces of 10-80 px, so each face is first cut out with a ``dlib_margin`` margin
  and enlarged to ``dlib_face_px`` pixels across (the box goes along); the points are
  mapped back. ``fit`` only checks that dlib is installed (:meth:`DlibLandmarker.available`)
  and raises one error naming the extra when it is not.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from backdoorlab.defenses.base import Needs
from backdoorlab.defenses.face_monitors.common import (
    CropNet,
    FaceMonitor,
    FaceScores,
    apply_affine,
    as_images,
    augmented_crops,
    base_params,
    check_enough_faces,
    crop_faces,
    crop_matrices,
    flatten,
    invert_affine,
    landmark_nme,
    run_crop_net,
    train_crop_net,
)
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.errors import MissingExtraError

Landmarker = Literal["cnn", "dlib"]


class AuxLandmarkerConfig(DefenceConfig):
    """The settings of :class:`AuxLandmarkerMonitor` (see its docstring)."""

    landmarker: Landmarker = "cnn"
    score_threshold: float = Field(0.5, gt=0, lt=1)
    min_face_px: float = Field(12.0, ge=0)
    crop_size: int = Field(32, ge=16, le=128)
    margin: float = Field(1.2, ge=1.0, le=3.0)
    copies: int = Field(4, ge=1, le=32)
    max_rotation_deg: float = Field(40.0, ge=0, le=180)
    steps: int = Field(600, ge=1)
    lr: float = Field(3e-3, gt=0)
    width: int = Field(16, ge=4, le=128)
    holdout: float = Field(0.2, ge=0, lt=1)
    min_faces: int = Field(20, ge=5)
    dlib_face_px: int = Field(96, ge=32, le=512)
    dlib_margin: float = Field(1.6, ge=1.0, le=4.0)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


@register_defence(AuxLandmarkerConfig)
class AuxLandmarkerMonitor(FaceMonitor):
    """Flag images with a face whose landmarks a second landmarker, on the same box, places elsewhere.

    Args:
        model: the deployed detector (or :meth:`wrap` it later).
        landmarker: ``"cnn"`` (trained here in ``fit``) or ``"dlib"`` (the optional extra), module docstring.
        score_threshold: faces from this detector score on are checked.
        min_face_px: faces narrower than this are not checked (see ``geometry``).
        crop_size, margin: the CNN's input crop (side in pixels; side over the box's longer side).
        copies: crops per clean face when training the CNN (the first upright, the others turned and shifted).
        max_rotation_deg: largest turn of a training crop.
        steps, lr, width: the CNN's Adam steps (batches of 64), learning rate and base width.
        holdout: share of clean faces kept out of the CNN's training to report its error (0: train on all).
        min_faces: fewest clean faces ``fit`` accepts (CNN).
        dlib_face_px: width a face is enlarged to before dlib's predictor reads it.
        dlib_margin: the crop handed to dlib, as a multiple of the box's longer side.
        batch_size: images per detector pass.
        seed: the CNN's initialisation, augmentation and hold-out draw.
        device: where the detector runs; the CNN and dlib run on the CPU.
    """

    name = "aux_landmarker"
    needs = Needs(clean_data=True, tasks=("face_detection",))

    def __init__(
        self,
        model: nn.Module | None = None,
        landmarker: Landmarker = "cnn",
        score_threshold: float = 0.5,
        min_face_px: float = 12.0,
        crop_size: int = 32,
        margin: float = 1.2,
        copies: int = 4,
        max_rotation_deg: float = 40.0,
        steps: int = 600,
        lr: float = 3e-3,
        width: int = 16,
        holdout: float = 0.2,
        min_faces: int = 20,
        dlib_face_px: int = 96,
        dlib_margin: float = 1.6,
        batch_size: int = 64,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        super().__init__(model, score_threshold, min_face_px, batch_size, device)
        if landmarker not in ("cnn", "dlib"):
            raise ValueError(f"landmarker must be 'cnn' or 'dlib', got {landmarker!r}")
        self.landmarker = landmarker
        self.crop_size, self.margin, self.copies = int(crop_size), float(margin), int(copies)
        self.max_rotation_deg, self.steps, self.lr, self.width = float(max_rotation_deg), int(steps), float(lr), width
        self.holdout, self.min_faces, self.seed = float(holdout), int(min_faces), int(seed)
        self.dlib_face_px, self.dlib_margin = int(dlib_face_px), float(dlib_margin)
        self.net_: CropNet | None = None
        self._dlib: Any = None
        self.fit_report_: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {
            "landmarker": self.landmarker,
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
            "dlib_face_px": self.dlib_face_px,
            "dlib_margin": self.dlib_margin,
            "seed": self.seed,
        }

    @staticmethod
    def dlib_available() -> bool:
        """Whether the ``dlib`` landmarker can run here (dlib and its model files installed)."""
        from backdoorlab.models.dlib_landmarker import DlibLandmarker

        return DlibLandmarker.available()

    # ------------------------------------------------------------------ fit
    def fit(self, *clean_inputs: Any) -> AuxLandmarkerMonitor:
        (images,) = clean_inputs
        if self.landmarker == "dlib":
            self._load_dlib()
            self.fit_report_ = {}
            return self
        tensor, uint8 = as_images(images)
        return self.fit_detections(uint8, *flatten(self.detect(tensor)))

    def fit_detections(
        self, uint8: np.ndarray, index: np.ndarray, boxes: np.ndarray, lms: np.ndarray
    ) -> AuxLandmarkerMonitor:
        """:meth:`fit` (CNN) from given clean faces: image index (F,), boxes (F, 4), landmarks (F, 5, 2)."""
        check_enough_faces(len(boxes), self.min_faces, type(self).__name__)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(boxes))
        n_out = round(self.holdout * len(boxes))
        held, train = order[:n_out], order[n_out:]
        crops, points = augmented_crops(
            uint8, index[train], boxes[train], lms[train], self.crop_size, self.margin, self.copies,
            self.max_rotation_deg, rng,
        )  # fmt: skip
        torch.manual_seed(self.seed)
        self.net_ = train_crop_net(
            CropNet(10, self.width), crops, points.reshape(len(points), 10) / self.crop_size, self.steps, self.lr, 64,
            self.seed,
        )  # fmt: skip
        self.fit_report_ = {"n_faces": len(boxes), "cnn_train_faces": len(train), "cnn_heldout_faces": len(held)}
        if len(held):
            nme = landmark_nme(self._cnn_points(uint8, index[held], boxes[held]), lms[held], boxes[held])
            self.fit_report_["cnn_heldout_nme_median"] = float(np.median(nme))
            self.fit_report_["cnn_heldout_nme_mean"] = float(np.mean(nme))
        return self

    def _load_dlib(self) -> Any:
        if self._dlib is None:
            if not self.dlib_available():
                raise MissingExtraError(
                    "aux_landmarker with landmarker='dlib' needs the optional dlib extra (dlib and its model files); "
                    "see backdoorlab.models.dlib_landmarker, or use landmarker='cnn'"
                )
            from backdoorlab.models.dlib_landmarker import DlibLandmarker

            self._dlib = DlibLandmarker(predictor="68")
        return self._dlib

    # ---------------------------------------------------------------- score
    def _cnn_points(self, uint8: np.ndarray, index: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        assert self.net_ is not None
        m = crop_matrices(boxes, self.crop_size, self.margin)
        out = run_crop_net(self.net_, crop_faces(uint8, index, m, self.crop_size))
        if not len(out):
            return np.zeros((0, 5, 2))
        return apply_affine(out.reshape(-1, 5, 2) * self.crop_size, invert_affine(m))

    def _dlib_points(self, uint8: np.ndarray, index: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if not len(boxes):
            return np.zeros((0, 5, 2))
        dlib = self._load_dlib()
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        size = round(self.dlib_face_px * self.dlib_margin)
        m = crop_matrices(boxes, size, self.dlib_margin)
        crops = crop_faces(uint8, index, m, size)
        half = self.dlib_face_px * (boxes[:, 2:] - boxes[:, :2]) / np.maximum(side, 1.0)[:, None] / 2
        centre = (size - 1) / 2
        crop_boxes = np.concatenate([centre - half, centre + half], 1)
        pts = dlib.landmarks(list(crops), [b[None] for b in crop_boxes])
        return apply_affine(np.concatenate(pts).astype(np.float64), invert_affine(m))

    def aux_landmarks(self, uint8: np.ndarray, index: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(F, 5, 2) the second landmarker's points for these boxes (image pixels)."""
        if self.landmarker == "dlib":
            return self._dlib_points(uint8, index, boxes)
        self._check_fitted("net_")
        return self._cnn_points(uint8, index, boxes)

    def face_scores(self, inputs: Any) -> FaceScores:
        tensor, uint8 = as_images(inputs)
        if self.landmarker == "cnn":
            self._check_fitted("net_")
        index, boxes, lms = flatten(self.detect(tensor))
        return self.score_faces(uint8, index, boxes, lms)

    def score_faces(self, uint8: np.ndarray, index: np.ndarray, boxes: np.ndarray, lms: np.ndarray) -> FaceScores:
        """Per-face NME between given detections' landmarks and the second landmarker's."""
        aux = self.aux_landmarks(uint8, index, boxes)
        nme = landmark_nme(lms, aux, boxes) if len(boxes) else np.zeros(0)
        nme = np.where(np.isfinite(nme), nme, 1.0)  # a point the predictor could not place: maximally unsure
        return FaceScores(index, boxes, nme, {"aux_landmarks": aux})
