"""Five-point face alignment to the ArcFace template: similarity fit, aligned crops, roll angle.

A recogniser such as ArcFace sees a face only after it has been warped so that its five
landmarks (left eye, right eye, nose tip, left mouth corner, right mouth corner; image
left first, :mod:`backdoorlab.data.instances`) land as close as possible, in the least
squares sense, to a fixed template. The warp is a *similarity*: rotation, one uniform
scale and a translation (4 degrees of freedom), never a reflection or a shear.

* :data:`ARCFACE_TEMPLATE_112`: the published five-point template of the 112x112
  ArcFace crop. :func:`template` scales it uniformly to another square size; note that
  this is *not* insightface's rule for sizes divisible by 128 (which scales by
  size/128 and shifts x by 8 * size/128), only a proportional resize of the 112 frame.
* :func:`similarity_transform`: Umeyama's (1991) closed-form least-squares similarity,
  with the reflection case excluded (the rotation is forced to determinant +1).
* :func:`align_faces`: one ``cv2.warpAffine`` per face, bilinear, black outside the
  image, as insightface's ``norm_crop``. All five points are used, visible or not.
* :func:`rotation_degrees`: the angle of a transform's linear part, in degrees in
  (-180, 180], measured as ``atan2(m[1, 0], m[0, 0])``. Image y points down, so a
  positive angle turns the x axis towards the y axis: *clockwise on screen*. (OpenCV's
  ``getRotationMatrix2D(angle)`` is counter-clockwise on screen: its matrix has
  rotation_degrees ``-angle``.)

Matrices are 2x3 float64 ``[A | t]`` mapping a source pixel (x, y) to
``A @ (x, y) + t``, pixel centres at integer coordinates (cv2's convention).
"""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_SIZE = 112
#: ArcFace's 112x112 reference landmarks (x, y): left eye, right eye, nose, left mouth, right mouth
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template(size: int = ARCFACE_SIZE) -> np.ndarray:
    """The (5, 2) template for a ``size`` x ``size`` crop: the 112 template scaled by size/112."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return ARCFACE_TEMPLATE_112 * (size / ARCFACE_SIZE)


def similarity_transform(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) best mapping ``src_pts`` onto ``dst_pts``.

    Least squares over the N >= 2 point pairs (N, 2), solved in closed form (Umeyama
    1991): with centred point sets, the SVD ``U S V^T`` of their cross-covariance gives
    the rotation ``U D V^T`` and the scale ``trace(S D) / var(src)``, where
    ``D = diag(1, +-1)`` flips the last axis exactly when ``U V^T`` would be a
    reflection. The result is therefore always a proper rotation (determinant > 0):
    a mirrored point set is fitted by the best rotation, not reproduced.

    Raises:
        ValueError: for mismatched shapes, fewer than two points, non-finite values, or
            source points that all coincide (no scale or rotation is defined).
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"point sets must both be (N, 2), got {src.shape} and {dst.shape}")
    if len(src) < 2:
        raise ValueError("a similarity needs at least two point pairs")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("points must be finite")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / len(src)
    if var_s <= 1e-12 * max(1.0, float(np.abs(src).max())) ** 2:
        raise ValueError("source points coincide: the similarity is undefined")
    cov = dc.T @ sc / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_s)
    out = np.empty((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out


def alignment_matrices(landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """(K, 2, 3): for each face's (5, 2) landmarks, the similarity onto :func:`template` (size)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must be (K, 5, 2), got {lm.shape}")
    dst = template(size)
    return np.stack([similarity_transform(face, dst) for face in lm]) if len(lm) else np.zeros((0, 2, 3))


def align_faces(
    images: np.ndarray,
    landmarks: np.ndarray,
    size: int = ARCFACE_SIZE,
    image_index: np.ndarray | None = None,
    border_value: int = 0,
) -> np.ndarray:
    """Aligned ``size`` x ``size`` crops (K, size, size, C) of the K faces given by ``landmarks`` (K, 5, 2).

    ``images`` is one image (H, W, C) or a batch (B, H, W, C), any dtype cv2 warps
    (uint8 typically; the crops keep it). Face k is cut from ``images[image_index[k]]``;
    without ``image_index`` all faces come from the single image, or, for a batch,
    face k from image k (then K must equal B). Bilinear interpolation, pixels outside
    the image filled with ``border_value``.
    """
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
        default = np.zeros(len(landmarks), np.int64)
    elif imgs.ndim == 4:
        default = np.arange(len(imgs), dtype=np.int64)
    else:
        raise ValueError(f"images must be (H, W, C) or (B, H, W, C), got {imgs.shape}")
    matrices = alignment_matrices(landmarks, size)
    if image_index is None:
        if len(default) != len(matrices):
            raise ValueError(f"{len(matrices)} faces for {len(imgs)} images: pass image_index")
        image_index = default
    idx = np.asarray(image_index, dtype=np.int64).reshape(-1)
    if len(idx) != len(matrices) or (len(idx) and (idx.min() < 0 or idx.max() >= len(imgs))):
        raise ValueError(f"image_index must give one image in [0, {len(imgs)}) per face")
    out = np.zeros((len(matrices), size, size, imgs.shape[3]), dtype=imgs.dtype)
    for k, (m, i) in enumerate(zip(matrices, idx, strict=True)):
        crop = cv2.warpAffine(
            np.ascontiguousarray(imgs[i]),
            m,
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border_value,
        )
        out[k] = crop.reshape(size, size, -1)
    return out


def rotation_degrees(matrix: np.ndarray) -> np.ndarray | float:
    """Rotation angle of a 2x3 (or (K, 2, 3)) similarity, degrees in (-180, 180]; positive = clockwise on screen."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[-2:] not in ((2, 3), (2, 2)):
        raise ValueError(f"expected (..., 2, 3) matrices, got {m.shape}")
    angle = np.degrees(np.arctan2(m[..., 1, 0], m[..., 0, 0]))
    angle = np.where(angle <= -180.0, angle + 360.0, angle)
    return float(angle) if angle.ndim == 0 else angle


def wrap_degrees(angle: np.ndarray | float) -> np.ndarray | float:
    """An angle difference folded into (-180, 180]."""
    out = 180.0 - np.mod(180.0 - np.asarray(angle, dtype=np.float64), 360.0)
    return float(out) if out.ndim == 0 else out


__all__ = [
    "ARCFACE_SIZE",
    "ARCFACE_TEMPLATE_112",
    "align_faces",
    "alignment_matrices",
    "rotation_degrees",
    "similarity_transform",
    "template",
    "wrap_degrees",
]
