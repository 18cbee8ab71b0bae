"""What wrong landmarks do downstream: the aligned crop a recogniser would see, versus the right one.

For each matched face, the face is aligned twice to the ArcFace template
(:mod:`backdoorlab.data.alignment`): once with the predicted landmarks, once with the
true ones. Reported per face:

* ``rotation_deg``: ``rotation(M_pred) - rotation(M_true)`` folded into (-180, 180],
  where ``M`` maps the image onto the template and angles are positive clockwise on
  screen. A landmark-shift attack that turns all five points by ``phi`` about any
  centre (clockwise positive, y down) gives exactly ``-phi`` here: a similarity fit is
  equivariant, so the predicted alignment is the true one composed with the inverse
  rotation, and the crop the recogniser sees is the true crop turned by ``-phi``.
* ``scale_ratio``: the ratio of the two alignments' scales (1 = same face size).
* ``ssim``: the mean SSIM of the two crops (uint8 crops scaled to [0, 1], 7x7 uniform
  window, skimage's defaults; :func:`backdoorlab.metrics.image_quality.ssim`): 1 for
  identical crops, lower the more the recogniser's input changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backdoorlab.data.alignment import ARCFACE_SIZE, align_faces, alignment_matrices, rotation_degrees, wrap_degrees
from backdoorlab.metrics.image_quality import ssim


@dataclass(frozen=True)
class AlignmentDamage:
    """Per face (K rows), in the order the landmarks were given."""

    rotation_deg: np.ndarray  #: (K,) rotation of the predicted alignment minus the true one's
    scale_ratio: np.ndarray  #: (K,) scale of the predicted alignment over the true one's
    ssim: np.ndarray  #: (K,) SSIM between the crop from predicted and from true landmarks
    pred_crops: np.ndarray  #: (K, size, size, C)
    true_crops: np.ndarray  #: (K, size, size, C)


def _scale(matrices: np.ndarray) -> np.ndarray:
    return np.sqrt(np.abs(np.linalg.det(matrices[:, :, :2])))


def alignment_damage(
    images: np.ndarray,
    pred_landmarks: np.ndarray,
    true_landmarks: np.ndarray,
    size: int = ARCFACE_SIZE,
    image_index: np.ndarray | None = None,
) -> AlignmentDamage:
    """Compare alignment with predicted vs true landmarks (K, 5, 2) of the same K matched faces.

    ``images`` and ``image_index`` are as in :func:`backdoorlab.data.alignment.align_faces`
    (one image, or a batch with one image per face or an explicit index). Crops must be
    at least 7x7 for SSIM; uint8 images are scaled by 1/255, float images are taken to
    be in [0, 1].
    """
    pred = np.asarray(pred_landmarks, dtype=np.float64)
    true = np.asarray(true_landmarks, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"predicted landmarks {pred.shape} and true landmarks {true.shape} differ in shape")
    m_pred, m_true = alignment_matrices(pred, size), alignment_matrices(true, size)
    pred_crops = align_faces(images, pred, size, image_index)
    true_crops = align_faces(images, true, size, image_index)
    if len(pred) == 0:
        scores = np.zeros(0)
    else:
        scale = 255.0 if pred_crops.dtype == np.uint8 else 1.0
        a = torch.from_numpy(pred_crops.astype(np.float64) / scale).permute(0, 3, 1, 2)
        b = torch.from_numpy(true_crops.astype(np.float64) / scale).permute(0, 3, 1, 2)
        scores = ssim(a, b).numpy()
    return AlignmentDamage(
        rotation_deg=np.asarray(wrap_degrees(rotation_degrees(m_pred) - rotation_degrees(m_true))).reshape(-1),
        scale_ratio=_scale(m_pred) / _scale(m_true) if len(pred) else np.zeros(0),
        ssim=scores,
        pred_crops=pred_crops,
        true_crops=true_crops,
    )


__all__ = ["AlignmentDamage", "alignment_damage"]
