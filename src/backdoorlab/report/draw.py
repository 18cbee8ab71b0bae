"""Drawing helpers for reports: gaze arrows on faces, image grids, PNG encoding.

Everything here takes and returns uint8 RGB numpy arrays (the dataset layout of
:mod:`backdoorlab.data.arrays`), so report code never has to think about OpenCV's BGR
order; the only BGR conversion happens inside :func:`encode_png`.

Arrow colour convention used across reports: green ``(0, 200, 0)`` for ground truth,
red ``(220, 0, 0)`` for the model's prediction, blue for a mitigated model.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import cv2
import numpy as np

from backdoorlab.errors import BackdoorLabError

RGB = tuple[int, int, int]

TRUE_COLOUR: RGB = (0, 200, 0)
PRED_COLOUR: RGB = (220, 0, 0)
MITIGATED_COLOUR: RGB = (30, 90, 230)


def gaze_arrow_endpoints(origins: np.ndarray, pitchyaw: np.ndarray, length: float | np.ndarray) -> np.ndarray:
    """Image-plane end points of gaze arrows starting at ``origins``.

    The arrow is the orthographic projection of the 3D gaze vector onto the image
    plane (drop z), scaled by ``length`` pixels. With the project convention (x right,
    y down, ``x = -cos(pitch) sin(yaw)``, ``y = -sin(pitch)``, see
    :mod:`backdoorlab.geometry`)::

        dx = -length * cos(pitch) * sin(yaw)   # yaw > 0 (gaze to image-left) -> left
        dy = -length * sin(pitch)              # pitch > 0 (looking up)        -> up

    A gaze straight into the camera therefore has a zero-length arrow, which is the
    honest picture: the arrow length shows how far the gaze is from frontal.

    Args:
        origins: (N, 2) pixel coordinates (x, y) where each arrow starts.
        pitchyaw: (N, 2) gaze in radians.
        length: arrow length in pixels for a gaze in the image plane (scalar or (N,)).

    Returns:
        (N, 2) float64 end points (x, y).
    """
    origins = np.asarray(origins, dtype=np.float64).reshape(-1, 2)
    py = np.asarray(pitchyaw, dtype=np.float64).reshape(-1, 2)
    if len(origins) != len(py):
        raise BackdoorLabError(f"gaze_arrow_endpoints: {len(origins)} origins but {len(py)} gaze labels")
    length_arr = np.asarray(length, dtype=np.float64).reshape(-1)
    pitch, yaw = py[:, 0], py[:, 1]
    dx = -length_arr * np.cos(pitch) * np.sin(yaw)
    dy = -length_arr * np.sin(pitch)
    return origins + np.stack([dx, dy], axis=-1)


def _to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 with C in {1, 3} -> (N, H, W, 3); grey is replicated."""
    images = np.asarray(images)
    if images.ndim == 3:  # (N, H, W) grey without a channel axis
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise BackdoorLabError(
            f"expected uint8 images of shape (N, H, W, 1|3); got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def draw_gaze_arrows(
    images: np.ndarray,
    arrows: Sequence[tuple[np.ndarray, RGB]],
    origins: np.ndarray | None = None,
    scale: int = 4,
    length_fraction: float = 0.4,
    thickness: int | None = None,
    outline: RGB | None = (255, 255, 255),
) -> np.ndarray:
    """Upsample faces and draw one gaze arrow per (labels, colour) pair on each.

    Why upsample: the training faces are tiny (e.g. 64x64); an anti-aliased arrow drawn
    at that size is a smudge. Drawing on a ``scale``-times nearest-neighbour enlargement
    keeps the pixels of the face honest while the arrows stay crisp.

    Args:
        images: uint8 (N, H, W, C), C = 3 (RGB) or 1 (grey, converted to RGB).
        arrows: list of ``(pitchyaw (N, 2) radians, (r, g, b))``; drawn in order, so
            the last one ends up on top.
        origins: (N, 2) arrow start in *input* pixel coordinates (x, y); ``None`` uses
            the image centre.
        scale: integer upsampling factor (>= 1).
        length_fraction: arrow length as a fraction of the (upsampled) image's smaller
            side, for a gaze lying in the image plane.
        thickness: line thickness in output pixels; default grows with ``scale``.
        outline: colour of a thin halo under every arrow so it stays visible on busy or
            same-coloured faces; ``None`` for no halo.

    Returns:
        uint8 (N, H*scale, W*scale, 3) RGB.
    """
    if scale < 1 or int(scale) != scale:
        raise BackdoorLabError(f"scale must be a positive integer; got {scale!r}")
    scale = int(scale)
    rgb = _to_rgb(images)
    n, h, w, _ = rgb.shape
    out = np.ascontiguousarray(np.repeat(np.repeat(rgb, scale, axis=1), scale, axis=2))
    if origins is None:
        origins_arr = np.tile(np.array([[w / 2.0, h / 2.0]]), (n, 1))
    else:
        origins_arr = np.asarray(origins, dtype=np.float64).reshape(-1, 2)
        if len(origins_arr) != n:
            raise BackdoorLabError(f"{len(origins_arr)} origins for {n} images")
    # Continuous pixel coordinates: input point (x, y) maps to (x*s, y*s) after upsampling.
    origins_up = origins_arr * scale
    length = length_fraction * min(h, w) * scale
    thick = thickness if thickness is not None else max(1, round(scale / 2))
    shift = 4  # sub-pixel precision for cv2 drawing (coordinates * 2**shift)
    fp = float(1 << shift)
    segments: list[tuple[int, tuple[int, int], tuple[int, int], tuple[int, int, int]]] = []
    for pitchyaw, colour in arrows:
        py = np.asarray(pitchyaw, dtype=np.float64).reshape(-1, 2)
        if len(py) != n:
            raise BackdoorLabError(f"{len(py)} gaze labels for {n} images")
        ends = gaze_arrow_endpoints(origins_up, py, length)
        col = (int(colour[0]), int(colour[1]), int(colour[2]))
        for i in range(n):
            p0 = (round(float(origins_up[i, 0]) * fp), round(float(origins_up[i, 1]) * fp))
            p1 = (round(float(ends[i, 0]) * fp), round(float(ends[i, 1]) * fp))
            if p0 != p1:  # a frontal gaze has no arrow (cv2 would draw a dot)
                segments.append((i, p0, p1, col))
    # Outlines first, for every arrow, so a halo never covers another arrow's colour.
    passes: list[tuple[int, tuple[int, int, int] | None]] = []
    if outline is not None:
        passes.append((thick + 2 * max(1, scale // 3), outline))
    passes.append((thick, None))
    for width, halo in passes:
        for i, p0, p1, col in segments:
            cv2.arrowedLine(
                out[i],
                p0,
                p1,
                halo if halo is not None else col,
                width,
                line_type=cv2.LINE_AA,
                shift=shift,
                tipLength=0.25,
            )
    return out


#: colours of face overlays (RGB): ground truth, prediction, the attacker's target
TRUE_COLOUR, PRED_COLOUR, TARGET_COLOUR = (40, 200, 60), (230, 40, 40), (255, 200, 0)


def draw_faces(
    image: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray | None = None,
    visible: np.ndarray | None = None,
    colour: tuple[int, int, int] = TRUE_COLOUR,
    scale: int = 1,
) -> np.ndarray:
    """A copy of ``image`` (upscaled ``scale`` times, nearest) with boxes and 5-point landmarks drawn.

    ``boxes`` (K, 4) x1 y1 x2 y2 and ``landmarks`` (K, 5, 2) are in the image's pixels
    (pixel centres at integers); ``visible`` (K, 5) hides points that are not. Call
    it again on the result to overlay a second set (e.g. predictions over the truth).
    """
    out = _to_rgb(np.asarray(image)[None])[0]
    if scale > 1:
        out = cv2.resize(out, (out.shape[1] * scale, out.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    out = np.ascontiguousarray(out)

    def px(v: float) -> int:
        return round((v + 0.5) * scale - 0.5)

    for k, box in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        if not np.isfinite(box).all():
            continue
        cv2.rectangle(out, (px(box[0]), px(box[1])), (px(box[2]), px(box[3])), colour, 1, cv2.LINE_AA)
        if landmarks is None:
            continue
        for j, (x, y) in enumerate(np.asarray(landmarks, np.float64)[k]):
            if (visible is not None and not visible[k][j]) or not np.isfinite([x, y]).all():
                continue
            cv2.circle(out, (px(x), px(y)), max(1, scale), colour, -1, cv2.LINE_AA)
    return out


def image_grid(images: np.ndarray, ncols: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile (N, H, W, C) images row-major into one (H', W', C) uint8 picture.

    Unused cells of the last row are filled with ``pad_value`` (white by default, to
    blend with the report background).
    """
    imgs = _to_rgb(images)
    n, h, w, c = imgs.shape
    if ncols < 1:
        raise BackdoorLabError(f"ncols must be >= 1; got {ncols}")
    ncols = min(ncols, max(n, 1))
    nrows = max(1, -(-n // ncols))
    gh = nrows * h + (nrows + 1) * pad
    gw = ncols * w + (ncols + 1) * pad
    grid = np.full((gh, gw, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y0 = pad + r * (h + pad)
        x0 = pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = imgs[i]
    return grid


def encode_png(image: np.ndarray) -> bytes:
    """Encode an RGB (H, W, 3) or grey (H, W[, 1]) uint8 image as PNG bytes."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise BackdoorLabError(f"encode_png needs uint8; got {img.dtype}")
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    elif img.ndim != 2:
        raise BackdoorLabError(f"encode_png: unsupported shape {tuple(img.shape)}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise BackdoorLabError("cv2.imencode failed to encode PNG")
    return buf.tobytes()


def png_data_uri(image: np.ndarray) -> str:
    """``data:image/png;base64,...`` URI, so reports embed images in a single file."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")
