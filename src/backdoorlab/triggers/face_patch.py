"""A patch stuck on one face of a scene, placed from its landmarks so it follows the face.

The Landmark Shift Attack (Le Roux et al. 2025) puts its trigger *inside* a face (on a
cheek or the forehead) and teaches the detector to rotate that face's landmarks. In a
scene with several faces the trigger must pick one, and stay on it as the face moves,
turns and rolls, like the gaze task's white-tape sticker does on a face crop. This
trigger reads the per-image instance table (boxes, 5 landmarks in RetinaFace order,
visibility), chooses one eligible face per image (the largest, or a seeded random one),
and pastes a square whose side is a fraction of that face's box width, centred on an
anchor computed from the landmarks:

* ``cheek``: the midpoint of the image-left eye and mouth corner, pushed away from the
  nose tip by ``CHEEK_PUSH`` of their distance (onto the cheek, off the nose);
* ``forehead``: above the eyes' midpoint by ``FOREHEAD_RISE`` of the eye-to-mouth
  distance, along the face's own vertical (so it follows roll).

A face is eligible when all five landmarks are visible and its box is at least
``min_face_px`` wide. An image with no eligible face is left unchanged (its placement
box is NaN, its instance index -1): a relabel then has nothing to move. The square is
axis-aligned (it does not rotate with the face), and is clipped into the image.
:class:`~backdoorlab.triggers.base.Placement` records the face it went on
(``instances``), so the relabel moves exactly that face.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from backdoorlab.errors import ConfigError
from backdoorlab.triggers._random import per_sample_uniform
from backdoorlab.triggers.base import (
    Placement,
    Tensor,
    Trigger,
    number,
    pattern_name,
)
from backdoorlab.triggers.patch import PatternSource

CHEEK_PUSH = 0.35
FOREHEAD_RISE = 0.55
ANCHORS = ("cheek", "forehead")


def face_anchor(landmarks: Tensor, anchor: str) -> Tensor:
    """(M, 2) anchor points of faces from their (M, 5, 2) landmarks (RetinaFace order)."""
    eye_l, eye_r, nose, mouth_l, mouth_r = landmarks.unbind(1)
    if anchor == "cheek":
        mid = (eye_l + mouth_l) / 2
        return mid + CHEEK_PUSH * (mid - nose)
    eyes, mouth = (eye_l + eye_r) / 2, (mouth_l + mouth_r) / 2
    return eyes + FOREHEAD_RISE * (eyes - mouth)


class FacePatchTrigger(PatternSource, Trigger):
    """Paste a pattern on one face per image, at a landmark anchor, sized by the face.

    Args:
        pattern: "white", "checkerboard", or a path to an image file.
        size: side of the square as a fraction of the chosen face's box width, in (0, 1].
        anchor: "cheek" or "forehead" (see the module docstring).
        face: "largest" eligible face, or a seeded "random" one.
        min_face_px: faces narrower than this are never chosen (too small to carry it).
        opacity: 1 pastes the pattern; below 1 blends it with the face (alpha).
        seed: drives the random choice of face.
        pattern_pixels: the file's pixels as stored with a run.
    """

    name = "face_patch"
    localized = True
    requires = ("instances",)

    def __init__(
        self,
        pattern: str = "white",
        size: float = 0.25,
        anchor: Literal["cheek", "forehead"] = "cheek",
        face: Literal["largest", "random"] = "largest",
        min_face_px: float = 24.0,
        opacity: float = 1.0,
        seed: int = 0,
        pattern_pixels: Tensor | None = None,
    ) -> None:
        pattern = pattern_name(pattern, self.name)
        size, opacity = number(size, "size", self.name), number(opacity, "opacity", self.name)
        min_face_px = number(min_face_px, "min_face_px", self.name)
        if not 0 < size <= 1:
            raise ConfigError(f"face_patch size must be in (0, 1] (a fraction of the face width), got {size}")
        if not 0 <= opacity <= 1:
            raise ConfigError(f"face_patch opacity must be in [0, 1], got {opacity}")
        if anchor not in ANCHORS:
            raise ConfigError(f"face_patch anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
        if face not in ("largest", "random"):
            raise ConfigError(f"face_patch face must be 'largest' or 'random', got {face!r}")
        if min_face_px < 2:
            raise ConfigError(f"face_patch min_face_px must be at least 2, got {min_face_px}")
        self.pattern, self.size, self.anchor, self.face = pattern, float(size), anchor, face
        self.min_face_px, self.opacity, self.seed = float(min_face_px), float(opacity), int(seed)
        self._set_source(pattern, pattern_pixels)

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pattern": self.pattern,
            "size": self.size,
            "anchor": self.anchor,
            "face": self.face,
            "min_face_px": self.min_face_px,
            "opacity": self.opacity,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ geometry
    def squares(self, annotations: dict[str, Any], indices: np.ndarray, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Per sample: (x, y, side) long of the square (side 0 = no eligible face), and the chosen face (-1)."""
        inst = annotations["instances"]
        u = per_sample_uniform(self.seed, indices, 1)[:, 0]
        squares = torch.zeros(len(inst), 3, dtype=torch.long)
        chosen = torch.full((len(inst),), -1, dtype=torch.long)
        for i, sample in enumerate(inst.per_sample()):
            boxes, lms = sample["boxes"].float().cpu(), sample["landmarks"].float().cpu()
            width = boxes[:, 2] - boxes[:, 0]
            ok = sample["visible"].cpu().all(1) & (width >= self.min_face_px)
            if not ok.any():
                continue
            eligible = torch.nonzero(ok)[:, 0]
            if self.face == "largest":
                area = width * (boxes[:, 3] - boxes[:, 1])
                j = int(eligible[area[eligible].argmax()])
            else:
                j = int(eligible[min(int(u[i] * len(eligible)), len(eligible) - 1)])
            side = max(2, min(h, w, round(self.size * float(width[j]))))
            cx, cy = face_anchor(lms[j : j + 1], self.anchor)[0].tolist()
            # pixel centres sit at integers: the square's pixels x0..x0+side-1 are centred on cx
            x0 = min(max(round(cx - (side - 1) / 2), 0), w - side)
            y0 = min(max(round(cy - (side - 1) / 2), 0), h - side)
            squares[i] = torch.tensor([x0, y0, side])
            chosen[i] = j
        return squares, chosen

    def placement(
        self, images: Tensor, triggered: Tensor, annotations: dict[str, Tensor], indices: np.ndarray
    ) -> Placement:
        """The pasted squares exactly, and which face each went on."""
        _, _, h, w = images.shape
        squares, chosen = self.squares(annotations, indices, h, w)
        x0, y0, side = squares.unbind(1)
        boxes = torch.stack([x0, y0, x0 + side, y0 + side], 1).float()
        boxes[side == 0] = float("nan")
        yy = torch.arange(h)[None, :, None]
        xx = torch.arange(w)[None, None, :]
        masks = (yy >= y0[:, None, None]) & (yy < (y0 + side)[:, None, None])
        masks = masks & (xx >= x0[:, None, None]) & (xx < (x0 + side)[:, None, None])
        dev = images.device
        return Placement(boxes.to(dev), masks.to(dev), chosen.to(dev))

    def apply(self, images: Tensor, annotations: dict[str, Tensor], indices: np.ndarray) -> Tensor:
        _, c, h, w = images.shape
        squares, _ = self.squares(annotations, indices, h, w)
        out = images.clone()
        for i, (x0, y0, side) in enumerate(squares.tolist()):
            if side == 0:
                continue
            p = self.square_pattern(c, side).to(device=images.device, dtype=images.dtype)
            region = out[i, :, y0 : y0 + side, x0 : x0 + side]
            mask = self.square_mask(side)  # a shaped pattern: only its shape is pasted
            region.copy_(self.paste(region, p, None if mask is None else mask.to(images.device, images.dtype)))
        return out
