"""Training augmentation for face detection: horizontal flips that move the annotations too.

A mirrored face is still a face, so a flip doubles the poses a small synthetic set
shows. The annotations move with the pixels: boxes and landmarks are mirrored
(x -> W - 1 - x: instance coordinates put pixel centres at integers), and the
landmarks' left/right points are swapped (image-left eye <-> image-right eye, mouth
corners likewise; the nose stays), with their visibility flags, so the RetinaFace order
"image-left first" holds after the flip. Per-instance ``yaw`` and ``roll`` columns, when
present, change sign.

Whether an image is flipped is a pure function of (seed, epoch, sample index), so a
run repeats exactly. The flip happens before poisoning (see
:meth:`backdoorlab.tasks.base.Task.augment`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from backdoorlab.data.instances import InstanceBatch
from backdoorlab.triggers._random import per_epoch_coin

Tensor = torch.Tensor

#: the RetinaFace landmark order after a horizontal flip
FLIP_ORDER = (1, 0, 2, 4, 3)
SIGNED_COLUMNS = ("yaw", "roll")
_FLIP_STREAM = 0xF11B


def flip_instances(inst: InstanceBatch, flip: Tensor, width: int) -> InstanceBatch:
    """The instances of the images where ``flip`` (B,) bool is set, mirrored in an image ``width`` wide."""
    per_row = torch.repeat_interleave(flip.cpu(), inst.counts())
    if not per_row.any():
        return inst
    cols = dict(inst.columns)
    rows = per_row.to(cols["boxes"].device)
    boxes = cols["boxes"].clone()
    b = boxes[rows]
    boxes[rows] = torch.stack([width - 1 - b[:, 2], b[:, 1], width - 1 - b[:, 0], b[:, 3]], 1)
    cols["boxes"] = boxes
    order = torch.tensor(FLIP_ORDER, device=rows.device)
    if "landmarks" in cols:
        lms = cols["landmarks"].clone()
        mirrored = lms[rows][:, order]
        mirrored[..., 0] = width - 1 - mirrored[..., 0]
        lms[rows] = mirrored
        cols["landmarks"] = lms
    for name in ("visible", "occluded"):
        if name in cols and cols[name].ndim == 2 and cols[name].shape[1] == len(FLIP_ORDER):
            col = cols[name].clone()
            col[rows] = col[rows][:, order]
            cols[name] = col
    for name in SIGNED_COLUMNS:
        if name in cols:
            col = cols[name].clone()
            col[rows] = -col[rows]
            cols[name] = col
    return InstanceBatch(inst.offsets, cols)


def random_flip(
    images: Tensor, annotations: dict[str, Any], indices: Any, epoch: int, seed: int, p: float = 0.5
) -> tuple[Tensor, dict[str, Any]]:
    """Flip each image with probability ``p`` (seeded per sample and epoch), annotations along."""
    if p <= 0:
        return images, annotations
    flip = per_epoch_coin(seed, _FLIP_STREAM, epoch, np.asarray(indices, dtype=np.int64), p)
    if not flip.any():
        return images, annotations
    out = images.clone()
    rows = flip.to(images.device)
    out[rows] = images[rows].flip(-1)
    ann = dict(annotations)
    ann["instances"] = flip_instances(annotations["instances"], flip, images.shape[-1])
    return out, ann
