"""What the face-detection run-time monitors share: inputs, the wrapped detector, crops, per-face scores.

Every monitor here wraps one deployed detector (``model``, a registered ``retinaface``),
runs it on the images it is shown, keeps the faces the system would act on (score >=
``score_threshold``, box side >= ``min_face_px``), gives each kept face a suspicion
score, and scores an image by its **most suspicious face** (the maximum; an image
without a kept face scores 0, the lowest a face can score). A face recogniser behind
the detector is fooled by one bad face, so one is enough to flag the image.

Inputs (:func:`as_images`): uint8 (N, H, W, 3) numpy or torch arrays, float (N, 3, H, W)
tensors in [0, 1] (the project's batch convention), or an
:class:`~backdoorlab.data.arrays.ArrayDataset` (its images).

Crops (:func:`crop_faces`): a square around each box, ``margin`` times the box's
longer side, warped to ``size`` x ``size`` pixels with cv2 (bilinear, black outside the
image), optionally turned by an angle about the box centre; the 2x3 matrix that maps
image pixels to crop pixels comes with each crop, so points follow exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from backdoorlab.data.alignment import ARCFACE_TEMPLATE_112, rotation_degrees, similarity_transform
from backdoorlab.data.arrays import ArrayDataset, images_to_tensor, tensor_to_images
from backdoorlab.defenses.base import RuntimeMonitor
from backdoorlab.errors import BackdoorLabError
from backdoorlab.tasks.face_detection import FaceDetectionTask

Tensor = torch.Tensor
Detections = list[dict[str, np.ndarray]]

#: the five-point template as fractions of its square crop, the reference shape of a face
TEMPLATE = np.asarray(ARCFACE_TEMPLATE_112, np.float64) / 112.0
#: landmark indices after a horizontal flip (left eye <-> right eye, left mouth <-> right mouth)
FLIP_ORDER = np.array([1, 0, 2, 4, 3])


def as_images(inputs: Any) -> tuple[Tensor, np.ndarray]:
    """(float (N, 3, H, W) in [0, 1], uint8 (N, H, W, 3)) from any accepted input (module docstring)."""
    if isinstance(inputs, ArrayDataset):
        inputs = inputs.images
    if isinstance(inputs, np.ndarray):
        if inputs.ndim != 4 or inputs.shape[-1] != 3 or inputs.dtype != np.uint8:
            raise BackdoorLabError(f"images must be uint8 (N, H, W, 3); got {inputs.dtype} {inputs.shape}")
        arr = np.ascontiguousarray(inputs)
        return images_to_tensor(arr), arr
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim == 4 and inputs.dtype == torch.uint8 and inputs.shape[-1] == 3:
            arr = inputs.cpu().numpy()
            return images_to_tensor(arr), arr
        if inputs.ndim == 4 and inputs.is_floating_point() and inputs.shape[1] == 3:
            t = inputs.detach().float().cpu()
            return t, tensor_to_images(t)
    raise BackdoorLabError(
        "a face monitor scores uint8 (N, H, W, 3) images, float (N, 3, H, W) tensors in [0, 1] or an ArrayDataset; "
        f"got {type(inputs).__name__} {getattr(inputs, 'shape', '')}"
    )


def detect(model: nn.Module, images: Tensor, batch_size: int = 64, device: str = "cpu") -> Detections:
    """The detector's faces on float (N, 3, H, W) images: per image ``boxes``, ``scores``, ``landmarks`` (numpy)."""
    batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    return FaceDetectionTask().predict_batches(model, batches, device)


def keep_faces(dets: Detections, score_threshold: float, min_face_px: float) -> Detections:
    """Only the faces with score >= ``score_threshold`` whose box's shorter side is >= ``min_face_px``."""
    out = []
    for d in dets:
        b = np.asarray(d["boxes"], np.float64).reshape(-1, 4)
        side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        keep = (np.asarray(d["scores"]) >= score_threshold) & (side >= min_face_px)
        out.append({k: np.asarray(v, np.float64)[keep] for k, v in d.items()})
    return out


def flatten(dets: Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image index (F,), boxes (F, 4), landmarks (F, 5, 2)) of all faces of all images."""
    index = np.concatenate([np.full(len(d["boxes"]), i, np.int64) for i, d in enumerate(dets)] or [np.zeros(0, int)])
    boxes = np.concatenate([d["boxes"].reshape(-1, 4) for d in dets] or [np.zeros((0, 4))])
    lms = np.concatenate([d["landmarks"].reshape(-1, 5, 2) for d in dets] or [np.zeros((0, 5, 2))])
    return index, boxes.astype(np.float64), lms.astype(np.float64)


def image_max(face_scores: np.ndarray, image_index: np.ndarray, n_images: int) -> np.ndarray:
    """(N,) the largest face score of each image, 0 for images without a face."""
    out = np.zeros(n_images, np.float64)
    if len(face_scores):
        np.maximum.at(out, image_index, np.asarray(face_scores, np.float64))
    return out


def box_size(boxes: np.ndarray) -> np.ndarray:
    """(F,) ``sqrt(w * h)`` of each box (the landmark metrics' ``"box"`` normaliser), at least 1 px."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.sqrt(np.clip(b[:, 2] - b[:, 0], 1.0, None) * np.clip(b[:, 3] - b[:, 1], 1.0, None))


def landmark_nme(a: np.ndarray, b: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(F,) mean point distance between two (F, 5, 2) landmark sets over ``sqrt(w * h)`` of the boxes."""
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1).mean(-1) / box_size(boxes)


def template_fit(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per face: (roll in degrees of the best similarity template -> landmarks, its RMS residual / scale).

    The roll is clockwise on screen (image y down), 0 for an upright face. The residual
    is in template units (the template spans about 0.3 x 0.36 of its unit square), so it
    does not depend on the face's size or roll.
    """
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    roll, resid = np.zeros(len(lm)), np.zeros(len(lm))
    for k, face in enumerate(lm):
        try:
            m = similarity_transform(TEMPLATE, face)
        except ValueError:  # coincident points: no shape at all
            roll[k], resid[k] = 0.0, 1.0
            continue
        fitted = TEMPLATE @ m[:, :2].T + m[:, 2]
        scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        roll[k] = float(rotation_degrees(m))
        resid[k] = float(np.sqrt(((fitted - face) ** 2).sum(-1).mean())) / max(scale, 1e-6)
    return roll, resid


def crop_matrices(boxes: np.ndarray, size: int, margin: float, angles_deg: np.ndarray | None = None) -> np.ndarray:
    """(F, 2, 3) image -> crop maps: the square ``margin`` x the box's longer side about its centre, turned.

    A crop turned by ``angle`` shows the face turned by ``-angle`` relative to the image
    (its points' roll drops by ``angle``): the map rotates the image by ``-angle``.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = (b[:, :2] + b[:, 2:]) / 2
    side = np.maximum(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * margin, 1.0)
    scale = size / side
    a = np.radians(np.zeros(len(b)) if angles_deg is None else np.asarray(angles_deg, np.float64))
    cos, sin = np.cos(-a) * scale, np.sin(-a) * scale
    lin = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)  # (F, 2, 2)
    half = (size - 1) / 2
    t = half - np.einsum("fij,fj->fi", lin, centre)
    return np.concatenate([lin, t[:, :, None]], 2)


def crop_faces(images: np.ndarray, image_index: np.ndarray, matrices: np.ndarray, size: int) -> np.ndarray:
    """uint8 (F, size, size, 3) crops of ``images`` (N, H, W, 3) through each face's 2x3 map."""
    out = np.zeros((len(matrices), size, size, 3), np.uint8)
    for k, (i, m) in enumerate(zip(np.asarray(image_index).tolist(), matrices, strict=True)):
        out[k] = cv2.warpAffine(images[i], m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return out


def apply_affine(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """(F, P, 2) points through per-face (F, 2, 3) maps."""
    return np.einsum("fij,fpj->fpi", matrices[:, :, :2], points) + matrices[:, None, :, 2]


def invert_affine(matrices: np.ndarray) -> np.ndarray:
    """(F, 2, 3) inverses of (F, 2, 3) affine maps."""
    inv = np.linalg.inv(matrices[:, :, :2])
    return np.concatenate([inv, -np.einsum("fij,fj->fi", inv, matrices[:, :, 2])[:, :, None]], 2)


class CropNet(nn.Module):
    """A small CNN from a square RGB crop to ``outputs`` numbers (three stride-2 conv stages, pooled, linear)."""

    def __init__(self, outputs: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, 4 * w, 3, 1, 1), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Linear(4 * w * 4 * 4, outputs)
        self.pool = nn.AdaptiveAvgPool2d(4)  # keeps where things are in the crop (landmarks need it)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.body(x)).flatten(1))


def train_crop_net(
    net: CropNet, crops: np.ndarray, targets: np.ndarray, steps: int, lr: float, batch_size: int, seed: int
) -> CropNet:
    """Fit ``net`` to (crops uint8 (M, S, S, 3), targets (M, D)) with Adam and a smooth-L1 loss; eval mode after."""
    gen = torch.Generator().manual_seed(seed)
    x = images_to_tensor(crops)
    y = torch.as_tensor(targets, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        loss = nn.functional.smooth_l1_loss(net(x[idx]), y[idx], beta=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def run_crop_net(net: CropNet, crops: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(F, D) outputs of ``net`` on uint8 crops."""
    if not len(crops):
        return np.zeros((0, net.head.out_features))
    outs = [net(images_to_tensor(crops[i : i + batch_size])) for i in range(0, len(crops), batch_size)]
    return torch.cat(outs).double().numpy()


@dataclass
class FaceScores:
    """Per-face suspicion of a batch of images, and the parts it is made of (for explanations and tests)."""

    image_index: np.ndarray  # (F,) which image each face is in
    boxes: np.ndarray  # (F, 4)
    scores: np.ndarray  # (F,) higher = more suspicious
    parts: dict[str, np.ndarray]  # name -> (F,) the components

    def per_image(self, n_images: int) -> np.ndarray:
        return image_max(self.scores, self.image_index, n_images)


class FaceMonitor(RuntimeMonitor):
    """A run-time monitor around one face detector (the shared parts; see the module docstring).

    Subclasses implement :meth:`face_scores` (and :meth:`fit`). ``model`` is the deployed
    detector: a constructor argument, or :meth:`wrap` later (a settings file builds the
    monitor without one). It is never changed and never part of :meth:`params`.
    """

    def __init__(
        self, model: nn.Module | None, score_threshold: float, min_face_px: float, batch_size: int, device: str
    ) -> None:
        self.model = model
        self.score_threshold = float(score_threshold)
        self.min_face_px = float(min_face_px)
        self.batch_size = int(batch_size)
        self.device = device
        self.threshold = None

    def wrap(self, model: nn.Module) -> FaceMonitor:
        """Watch ``model`` (returns ``self``)."""
        self.model = model
        return self

    def _device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise BackdoorLabError(f"{type(self).__name__} watches a detector: pass model=... or call wrap(model)")
        return self.model

    def detect(self, images: Tensor) -> Detections:
        """The kept faces (score and size) of the wrapped detector on float (N, 3, H, W) images."""
        model = self._require_model().to(self._device())
        dets = detect(model, images, self.batch_size, self._device())
        return keep_faces(dets, self.score_threshold, self.min_face_px)

    def face_scores(self, inputs: Any) -> FaceScores:
        raise NotImplementedError

    def score(self, inputs: Any) -> np.ndarray:
        """(N,) the suspicion of each image's most suspicious kept face (0 without one)."""
        tensor, _ = as_images(inputs)
        self._require_model()
        return self.face_scores(tensor).per_image(len(tensor))

    def _check_fitted(self, *attrs: str) -> None:
        if any(getattr(self, a, None) is None for a in attrs):
            raise BackdoorLabError(f"{type(self).__name__}.score before fit: fit it on clean images first")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds it took)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def base_params(mon: FaceMonitor) -> dict[str, Any]:
    return {
        "score_threshold": mon.score_threshold,
        "min_face_px": mon.min_face_px,
        "batch_size": mon.batch_size,
        "device": mon.device,
    }


def augmented_crops(
    images: np.ndarray,
    image_index: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    size: int,
    margin: float,
    copies: int,
    max_rotation_deg: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Training crops for a crop network: each face ``copies`` times, turned by a random angle, with its points.

    The first copy is upright; the others are turned uniformly within
    ``+-max_rotation_deg`` and shifted and scaled by up to 5% of the crop, so the network
    has to read the face's orientation and position from the pixels (a network that
    only saw the detector's upright crops could learn the average face in a box).
    Returns (uint8 (M, S, S, 3) crops, (M, 5, 2) landmarks in crop pixels).
    """
    crops, points = [], []
    n = len(boxes)
    for c in range(copies):
        angles = np.zeros(n) if c == 0 else rng.uniform(-max_rotation_deg, max_rotation_deg, n)
        jitter = boxes.copy()
        if c:
            wh = (boxes[:, 2:] - boxes[:, :2])[:, [0, 1, 0, 1]]
            shift = rng.uniform(-0.05, 0.05, (n, 2))[:, [0, 1, 0, 1]] * wh
            grow = rng.uniform(-0.05, 0.05, (n, 1)) * wh * np.array([-1, -1, 1, 1])
            jitter = boxes + shift + grow
        m = crop_matrices(jitter, size, margin, angles)
        crops.append(crop_faces(images, image_index, m, size))
        points.append(apply_affine(landmarks, m))
    return np.concatenate(crops), np.concatenate(points)


def check_enough_faces(n_faces: int, minimum: int, who: str) -> None:
    if n_faces < minimum:
        raise BackdoorLabError(
            f"{who}.fit found {n_faces} faces in the clean images (score and size kept); it needs at least {minimum}"
        )
