"""The pictures and the page of the face-detection demo (``backdoorlab demo face_detection``).

The demo's runs are trained and scored by :mod:`backdoorlab.experiments.demos.face_detection`;
this module only draws what they predicted, so it needs no training code:

* :func:`fga_section`: triggered test scenes, the clean model's faces next to the
  FGA-backdoored model's (the fake face on the trigger);
* :func:`lsa_section`: triggered test scenes, the clean model next to the LSA-backdoored
  model (the landmarks of the face carrying the trigger, twisted);
* :func:`alignment_section`: the ArcFace-aligned 112 x 112 crops of those faces, cut with
  the true landmarks, the clean model's and the backdoored model's
  (:func:`~backdoorlab.data.alignment.align_faces`);
* :func:`write_demo_page`: the page (its results table: :func:`backdoorlab.report.run_report.table_section`).

A section is the ``{"title", "metrics"?, "html"?, "images"?}`` mapping of
:func:`backdoorlab.report.run_report.write_run_report`, so a caller adds its own (the
run-time monitors, for instance) by appending to the list it hands to the page.

The scenes shown are the first test scenes on which the trigger landed, in test-set
order: they are not chosen by outcome; the table's rates say how typical they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from markupsafe import escape

from backdoorlab.data.alignment import ARCFACE_SIZE, align_faces
from backdoorlab.data.arrays import ArrayDataset, tensor_to_images
from backdoorlab.metrics.alignment_damage import alignment_damage
from backdoorlab.metrics.average_precision import box_iou
from backdoorlab.report.draw import image_grid, png_data_uri
from backdoorlab.report.run_report import write_run_report
from backdoorlab.tasks.face_detection.relabels import FakeFace, LandmarkRotation, template_landmarks
from backdoorlab.tasks.face_detection.report import draw_scene
from backdoorlab.tasks.face_detection.task import ground_truth
from backdoorlab.triggers.base import Placement, Trigger

Detections = list[dict[str, np.ndarray]]

#: triggered scenes shown per panel
SHOWN_SCENES = 4


@dataclass
class TriggeredScenes:
    """The first ``n`` test scenes the trigger landed on: their indices, triggered pixels and placement."""

    indices: np.ndarray  # (n,) into the test set
    images: np.ndarray  # (n, H, W, C) uint8, triggered
    placement: Placement  # of those n scenes

    @property
    def faces(self) -> np.ndarray:
        """(n,) the face each trigger went on (-1: none, e.g. a scene-level trigger)."""
        p = self.placement.instances
        return np.full(len(self.indices), -1) if p is None else p.cpu().numpy()


def triggered_scenes(data: ArrayDataset, trigger: Trigger, n: int = SHOWN_SCENES) -> TriggeredScenes:
    """Trigger the test set in order and keep the first ``n`` scenes it landed on (a face, for a face trigger)."""
    images, ann = data.batch(np.arange(len(data)))
    triggered, placement = trigger.place(images, ann, np.arange(len(data)))
    if placement is None:
        raise ValueError(f"{trigger!r} gives no placement: the demo draws where the trigger landed")
    landed = ~torch.isnan(placement.boxes.cpu()).any(1)
    if placement.instances is not None:
        landed &= placement.instances.cpu() >= 0
    keep = torch.nonzero(landed)[:n, 0]
    chosen = Placement(
        placement.boxes.cpu()[keep],
        placement.masks.cpu()[keep] if placement.masks.numel() else placement.masks,
        None if placement.instances is None else placement.instances.cpu()[keep],
    )
    return TriggeredScenes(keep.numpy(), tensor_to_images(triggered[keep]), chosen)


def matched_face(pred: Mapping[str, np.ndarray], box: np.ndarray, score: float, iou: float) -> np.ndarray | None:
    """(5, 2) landmarks of the confident detection that best overlaps ``box`` (IoU >= ``iou``), else None.

    The same match as the LSA score (:meth:`FaceDetectionTask.score_attack`).
    """
    keep = np.asarray(pred["scores"]) >= score
    boxes, lms = np.asarray(pred["boxes"])[keep], np.asarray(pred["landmarks"])[keep]
    if not len(boxes):
        return None
    ious = box_iou(np.asarray(box, np.float64)[None], boxes)[0]
    k = int(ious.argmax())
    return lms[k] if ious[k] >= iou else None


def _pairs(left: list[np.ndarray], right: list[np.ndarray]) -> str:
    """One row per scene: the clean model's picture on the left, the backdoored model's on the right."""
    return png_data_uri(image_grid(np.stack([im for pair in zip(left, right, strict=True) for im in pair]), ncols=2))


def fga_section(
    data: ArrayDataset,
    shown: TriggeredScenes,
    relabel: FakeFace,
    clean: Detections,
    backdoored: Detections,
    score: float,
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """FGA: the clean and the backdoored model's faces on triggered scenes, the fake face's box in yellow."""
    gts = ground_truth(data)
    targets = relabel.target_boxes(shown.placement).numpy()
    drawn: dict[str, list[np.ndarray]] = {"clean": [], "backdoored": []}
    for k, i in enumerate(shown.indices):
        extra = (targets[k : k + 1], template_landmarks(torch.as_tensor(targets[k : k + 1])).numpy())
        for name, preds in (("clean", clean), ("backdoored", backdoored)):
            drawn[name].append(draw_scene(shown.images[k], gts[i], preds[i], extra, threshold=score))
    return {
        "title": "Face Generation Attack: a face where the trigger is (left: clean model, right: FGA-backdoored model)",
        "html": _legend(
            f"Green: the true faces; yellow: the trigger's box, where the attacker wants a face; red: the model's "
            f"faces with score >= {score:g}. The first {len(shown.indices)} test scenes, in order."
        ),
        "metrics": metrics,
        "images": [_pairs(drawn["clean"], drawn["backdoored"])],
    }


@dataclass
class LandmarkViews:
    """The faces the LSA trigger went on: true, target and predicted landmarks (None: not detected)."""

    true: np.ndarray  # (n, 5, 2)
    target: np.ndarray  # (n, 5, 2)
    boxes: np.ndarray  # (n, 4)
    predicted: dict[str, list[np.ndarray | None]]  # model -> n landmarks or None


def landmark_views(
    data: ArrayDataset,
    shown: TriggeredScenes,
    relabel: LandmarkRotation,
    predictions: Mapping[str, Detections],
    score: float,
    iou: float,
) -> LandmarkViews:
    gts = ground_truth(data)
    faces = shown.faces
    true = np.stack([gts[i]["landmarks"][j] for i, j in zip(shown.indices, faces, strict=True)])
    boxes = np.stack([gts[i]["boxes"][j] for i, j in zip(shown.indices, faces, strict=True)])
    target = relabel.rotate(torch.as_tensor(true), torch.as_tensor(boxes)).numpy()
    predicted = {
        name: [matched_face(preds[i], boxes[k], score, iou) for k, i in enumerate(shown.indices)]
        for name, preds in predictions.items()
    }
    return LandmarkViews(true, target, boxes, predicted)


def lsa_section(
    data: ArrayDataset,
    shown: TriggeredScenes,
    views: LandmarkViews,
    clean: Detections,
    backdoored: Detections,
    score: float,
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """LSA: the clean and the backdoored model on scenes whose largest face carries the trigger."""
    gts = ground_truth(data)
    drawn: dict[str, list[np.ndarray]] = {"clean": [], "backdoored": []}
    for k, i in enumerate(shown.indices):
        extra = (views.boxes[k : k + 1], views.target[k : k + 1])
        for name, preds in (("clean", clean), ("backdoored", backdoored)):
            drawn[name].append(draw_scene(shown.images[k], gts[i], preds[i], extra, threshold=score))
    return {
        "title": "Landmark Shift Attack: the triggered face's landmarks turned (left: clean model, right: "
        "LSA-backdoored model)",
        "html": _legend(
            "Green: the true faces and landmarks; yellow: the triggered face with the landmarks the attacker wants "
            f"(the true ones rotated); red: the model's faces with score >= {score:g}. The first "
            f"{len(shown.indices)} test scenes whose trigger went on a face, in order."
        ),
        "metrics": metrics,
        "images": [_pairs(drawn["clean"], drawn["backdoored"])],
    }


def alignment_section(shown: TriggeredScenes, views: LandmarkViews, models: Sequence[str]) -> dict[str, Any]:
    """ArcFace-aligned crops of the triggered faces: from the true landmarks, then from each model's.

    Cut from the triggered scene (what a recogniser behind the detector receives); a face a
    model did not detect is a black tile. The rotation of each crop against the true one
    is :func:`~backdoorlab.metrics.alignment_damage.alignment_damage` on the same images.
    """
    blank = np.zeros((ARCFACE_SIZE, ARCFACE_SIZE, shown.images.shape[-1]), np.uint8)
    tiles, rows = [], []
    for k in range(len(shown.indices)):
        tiles.append(align_faces(shown.images[k], views.true[k : k + 1])[0])
        row = [str(int(shown.indices[k]))]
        for name in models:
            lms = views.predicted[name][k]
            if lms is None:
                tiles.append(blank)
                row.append("not detected")
                continue
            tiles.append(align_faces(shown.images[k], lms[None])[0])
            damage = alignment_damage(shown.images[k : k + 1], lms[None], views.true[k : k + 1])
            row.append(f"{float(damage.rotation_deg[0]):+.1f} deg, SSIM {float(damage.ssim[0]):.2f}")
        rows.append(row)
    head = "".join(f"<th>{escape(h)}</th>" for h in ["test scene", *(f"{m} model's crop" for m in models)])
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    html = (
        _legend(
            f"Each row: the crop aligned with the true landmarks, then with the {', then the '.join(models)} model's "
            "landmarks, cut from the triggered scene. Table: each model's crop against the true one (rotation, "
            "positive clockwise on screen; SSIM)."
        )
        + f"<table><tr>{head}</tr>{body}</table>"
    )
    return {
        "title": f"What a recogniser receives: the triggered faces, ArcFace-aligned ({ARCFACE_SIZE} px)",
        "html": html,
        "images": [png_data_uri(image_grid(np.stack(tiles), ncols=1 + len(models)))],
    }


def write_demo_page(path: Path, title: str, summary: Mapping[str, Any], sections: Sequence[Mapping[str, Any]]) -> Path:
    """The self-contained HTML page (summary rows, then the sections in order)."""
    return write_run_report(path, title, summary, sections)


def _legend(text: str) -> str:
    return f"<p>{escape(text)}</p>"
