"""The two backdoors of Le Roux et al. (2025) on a face detector, as relabels of the instance table.

* :class:`FakeFace` (Face Generation Attack, FGA): a face is added exactly where the
  trigger was stamped (its box is the trigger's box), with the five-point ArcFace
  template mapped into that box as its landmarks, or no landmarks at all (a box-only
  attack, ``landmarks="none"``). A detector trained on it invents a face wherever the
  trigger appears.
* :class:`LandmarkRotation` (Landmark Shift Attack, LSA): the face carrying the trigger
  keeps its box, and its five landmarks are rotated by ``angle_deg`` about the box
  centre (or the landmarks' centroid). Alignment downstream then rotates the face crop
  by the same angle, which is what breaks recognition.

Both read the trigger's :class:`~backdoorlab.triggers.base.Placement` (where it landed
and, for a face-anchored trigger, on which face). They run on the final geometry of a
training batch: the training loop augments (flips) first and poisons after, so a
rotation of +phi is +phi in the image the model sees. Sign convention: image
coordinates have y pointing down, so a positive angle turns the points clockwise as
seen on screen (x towards y).

Both also give their *targets* for scoring (:meth:`FakeFace.target_boxes`,
:meth:`LandmarkRotation.rotate`), so the task scores exactly what was trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from backdoorlab.attacks.relabel import Relabel
from backdoorlab.data.alignment import ARCFACE_TEMPLATE_112
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.instances import InstanceBatch
from backdoorlab.errors import ConfigError
from backdoorlab.triggers.base import Placement, number

Tensor = torch.Tensor

#: the ArcFace five-point template as fractions of its 112 x 112 crop (x, y)
TEMPLATE_FRACTIONS = torch.as_tensor(np.asarray(ARCFACE_TEMPLATE_112, np.float32) / 112.0)


def placement_to_instance_box(box: Tensor) -> Tensor:
    """A placement box (pixel edges: a pixel x spans [x, x+1)) in the instance convention (centres at integers)."""
    return box - 0.5


def template_landmarks(boxes: Tensor) -> Tensor:
    """(M, 5, 2) the ArcFace template mapped into each x1 y1 x2 y2 box."""
    wh = (boxes[:, 2:] - boxes[:, :2])[:, None]
    return boxes[:, None, :2] + TEMPLATE_FRACTIONS.to(boxes)[None] * wh


def rotate_points(points: Tensor, centres: Tensor, angle_deg: float) -> Tensor:
    """(M, K, 2) points rotated by ``angle_deg`` (clockwise on screen) about (M, 2) centres."""
    a = math.radians(angle_deg)
    rot = points.new_tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    rel = points - centres[:, None]
    return centres[:, None] + rel @ rot.T


def _default_row(schema: Mapping[str, tuple[str, tuple[int, ...]]], device: torch.device) -> dict[str, Tensor]:
    """One instance of zeros for every column (a fake face has no identity, pose or difficulty of its own)."""
    return {k: torch.from_numpy(np.zeros((1, *shape), np.dtype(dt))).to(device) for k, (dt, shape) in schema.items()}


class DetectionRelabel(Relabel):
    task = "face_detection"
    needs_placement: ClassVar[bool] = True

    def check_data(self, data: ArrayDataset, where: str = "the training data") -> None:
        if data.instances is None or "boxes" not in data.instances.columns:
            raise ConfigError(f"attack.relabel '{self.name}' needs per-image face instances; {where} has none")


class FakeFace(DetectionRelabel):
    """FGA: add a face whose box is the trigger's box (landmarks: the template, or none)."""

    name = "fake_face"

    def __init__(self, landmarks: Literal["template", "none"] = "template") -> None:
        if landmarks not in ("template", "none"):
            raise ConfigError(f"fake_face landmarks must be 'template' or 'none', got {landmarks!r}")
        self.landmarks = landmarks

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "landmarks": self.landmarks}

    def target_boxes(self, placement: Placement) -> Tensor:
        """(B, 4) the fake faces' boxes in the instance convention (NaN where the trigger did not land)."""
        return placement_to_instance_box(placement.boxes.float())

    def __call__(self, annotations: Mapping[str, Any], placement: Placement | None = None) -> dict[str, Any]:
        assert placement is not None
        inst: InstanceBatch = annotations["instances"]
        schema = inst.schema()
        boxes = self.target_boxes(placement).cpu()
        samples = inst.per_sample()
        for i, sample in enumerate(samples):
            if torch.isnan(boxes[i]).any():
                continue
            device = sample["boxes"].device
            row = _default_row(schema, device)
            row["boxes"] = boxes[i : i + 1].to(device)
            if "landmarks" in row:
                row["landmarks"] = template_landmarks(boxes[i : i + 1]).to(device)
            if "visible" in row:
                row["visible"][:] = self.landmarks == "template"
            if "label" in row:
                row["label"][:] = -1
            samples[i] = {k: torch.cat([sample[k], row[k].to(sample[k].dtype)]) for k in schema}
        out = dict(annotations)
        out["instances"] = InstanceBatch.from_samples(samples, schema)
        return out


class LandmarkRotation(DetectionRelabel):
    """LSA: rotate the triggered face's five landmarks by ``angle_deg`` about its box centre (or centroid)."""

    name = "rotate_landmarks"

    def __init__(self, angle_deg: float = 30.0, centre: Literal["box", "landmarks"] = "box") -> None:
        angle = number(angle_deg, "angle_deg", "relabel rotate_landmarks")
        if not 0 < abs(angle) <= 180:
            raise ConfigError(f"rotate_landmarks angle_deg must be non-zero and within +-180, got {angle_deg}")
        if centre not in ("box", "landmarks"):
            raise ConfigError(f"rotate_landmarks centre must be 'box' or 'landmarks', got {centre!r}")
        self.angle_deg, self.centre = angle, centre

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "angle_deg": self.angle_deg, "centre": self.centre}

    def check_data(self, data: ArrayDataset, where: str = "the training data") -> None:
        super().check_data(data, where)
        assert data.instances is not None
        visible = data.instances.columns.get("visible")
        if "landmarks" not in data.instances.columns or visible is None or not np.asarray(visible).all(1).any():
            raise ConfigError(
                f"attack.relabel 'rotate_landmarks' (a Landmark Shift Attack) needs faces with all five landmarks; "
                f"{where} has none (WIDER FACE has no landmarks: use the RetinaFace label.txt or CelebA)"
            )

    def rotate(self, landmarks: Tensor, boxes: Tensor) -> Tensor:
        """(M, 5, 2) the attacker's target landmarks of faces with these landmarks and boxes."""
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2 if self.centre == "box" else landmarks.mean(1)
        return rotate_points(landmarks.float(), centres.float(), self.angle_deg).to(landmarks.dtype)

    def __call__(self, annotations: Mapping[str, Any], placement: Placement | None = None) -> dict[str, Any]:
        assert placement is not None
        if placement.instances is None:
            raise ConfigError(
                "attack.relabel 'rotate_landmarks' needs a trigger anchored to one face (e.g. face_patch), "
                "which says which face it went on"
            )
        inst: InstanceBatch = annotations["instances"]
        chosen = placement.instances.cpu()
        starts = inst.offsets[:-1]
        rows = (starts + chosen)[chosen >= 0]  # flat instance rows of the triggered faces
        if len(rows) == 0:
            return dict(annotations)
        lms = inst.columns["landmarks"].clone()
        r = rows.to(lms.device)
        lms[r] = self.rotate(lms[r], inst.columns["boxes"][r])
        out = dict(annotations)
        out["instances"] = InstanceBatch(inst.offsets, {**inst.columns, "landmarks": lms})
        return out
