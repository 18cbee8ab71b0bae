"""Face detection with five landmarks: RetinaFace's multi-box loss, AP and NME, FGA and LSA scoring.

The task's data are per-image instance tables (:data:`backdoorlab.data.instances.FACE_SCHEMA`
plus, for synthetic scenes, a ``difficulty`` level per face). Training flips images
(before any poisoning, see :mod:`.augment`), matches faces to the model's priors and
minimises :class:`~.matching.MultiBoxLoss`, whose three parts (``loss_cls``,
``loss_box``, ``loss_landmarks``) are logged. Prediction decodes the priors and keeps
faces through NMS (:func:`~.postprocess.decode_detections`); evaluation reports
WIDER-style AP at IoU 0.5 per difficulty, AP at 0.5:0.95, and the landmark NME of
matched faces (:mod:`backdoorlab.metrics.average_precision`,
:mod:`backdoorlab.metrics.landmarks`).

Attack success (``score_attack``, definitions in ``docs/tasks/face_detection.md``):

* Face Generation (relabel ``fake_face``): the share of triggered images in which a
  face is detected with score >= ``score_threshold`` at IoU >= ``iou`` with the
  trigger's box;
* Landmark Shift (relabel ``rotate_landmarks``): among triggered faces that are
  detected (IoU >= ``iou`` with their true box), the share whose predicted landmarks
  lie within an NME of ``nme_tolerance`` of the rotated target *and* nearer to it than
  to the true landmarks; with the mean landmark displacement in pixels and the damage
  downstream (the rotation of the ArcFace-aligned crop and its SSIM against the crop
  aligned with the true landmarks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm import tqdm

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.synthetic.scenes import SyntheticSceneSpec, load_or_synthesize_scenes
from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.metrics.alignment_damage import alignment_damage
from backdoorlab.metrics.average_precision import ap_range, average_precision_by_difficulty, box_iou
from backdoorlab.metrics.landmarks import landmark_errors, nme_per_face
from backdoorlab.tasks.base import AttackScore, RunReport, StepOutput, Task
from backdoorlab.tasks.face_detection.anchors import AnchorSpec, make_priors
from backdoorlab.tasks.face_detection.augment import random_flip
from backdoorlab.tasks.face_detection.matching import MultiBoxLoss
from backdoorlab.tasks.face_detection.postprocess import decode_detections
from backdoorlab.tasks.face_detection.relabels import FakeFace, LandmarkRotation
from backdoorlab.triggers.base import Placement

Tensor = torch.Tensor
Detections = list[dict[str, np.ndarray]]

#: the dense ``split`` codes of a synthetic scene dataset (train and test stacked)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
#: the share of images held out for testing when a dataset has no split of its own
TEST_FRACTION = 0.2
FLIP_PROBABILITY = 0.5
#: the columns the loss reads; the rest of a scene's instance table stays on the CPU
TARGET_COLUMNS = ("boxes", "landmarks", "visible")


class FaceDetectionAttackSettings(BaseModel):
    """How a face-detection attack is scored (part of a run config's ``attack`` section)."""

    model_config = ConfigDict(extra="forbid")
    score_threshold: float = Field(0.5, gt=0, lt=1, description="a detection counts from this face score on")
    iou: float = Field(0.5, gt=0, le=1, description="IoU of a detection with the trigger's (FGA) or face's (LSA) box")
    nme_tolerance: float = Field(
        0.1, gt=0, le=1, description="LSA success: landmarks within this NME (inter-ocular) of the rotated target"
    )


@lru_cache(maxsize=16)
def _priors(spec: AnchorSpec, height: int, width: int, device: str) -> Tensor:
    return make_priors(spec, height, width, device=device)


def model_priors(model: nn.Module, height: int, width: int, device: torch.device | str) -> Tensor:
    """The (A, 4) priors of ``model`` (its ``anchor_spec``) on an ``height`` x ``width`` input."""
    spec = getattr(model, "anchor_spec", None)
    if not isinstance(spec, AnchorSpec):
        raise BackdoorLabError(
            f"{type(model).__name__} has no anchor_spec: the face-detection task needs an anchor-based detector "
            "such as 'retinaface'"
        )
    return _priors(spec, height, width, str(device))


def ground_truth(data: ArrayDataset) -> list[dict[str, np.ndarray]]:
    """Per image: the face instances the metrics read (boxes, landmarks, visible, difficulty, ignore)."""
    if data.instances is None:
        raise BackdoorLabError("the face-detection task needs per-image face instances; this dataset has none")
    out = []
    for i in range(len(data)):
        rows = data.instances.rows(i)
        n = len(rows["boxes"])
        gt = {
            "boxes": np.asarray(rows["boxes"], np.float64),
            "landmarks": np.asarray(rows["landmarks"], np.float64) if "landmarks" in rows else np.zeros((n, 5, 2)),
            "visible": np.asarray(rows["visible"], bool) if "visible" in rows else np.zeros((n, 5), bool),
            "difficulty": np.asarray(rows.get("difficulty", np.zeros(n)), np.int64),
        }
        if "ignore" in rows:
            gt["ignore"] = np.asarray(rows["ignore"], bool)
        out.append(gt)
    return out


def _number(value: float) -> float | None:
    """A metric for metrics.json: nan (nothing to measure) becomes null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _concat_placements(placements: Sequence[Placement | None], n: int) -> Placement:
    found = [p for p in placements if p is not None]
    if not found:
        raise BackdoorLabError("this attack is scored where the trigger landed, and the trigger gave no placement")
    boxes = torch.cat([p.boxes.cpu() for p in found])
    if len(boxes) != n:
        raise BackdoorLabError(f"{len(boxes)} trigger placements for {n} test images")
    chosen = None if found[0].instances is None else torch.cat([p.instances.cpu() for p in found])  # type: ignore[union-attr]
    return Placement(boxes, torch.zeros(0), chosen)


class FaceDetectionTask(Task):
    """RetinaFace-style face detection with five landmarks (boxes, scores, landmarks per image)."""

    name = "face_detection"
    required_annotations = ("instances",)
    headline_metric = "ap50_easy"
    attack_settings = FaceDetectionAttackSettings
    default_relabel: ClassVar[dict[str, Any]] = {"name": "fake_face"}
    attack_summary_metrics = ("attack_success_rate", "landmark_displacement_px", "aligned_rotation_deg")
    synthetic_spec = SyntheticSceneSpec

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self.loss = MultiBoxLoss()

    # ------------------------------------------------------------------ data
    def synthesize(self, spec: BaseModel, cache_dir: str | None = None) -> ArrayDataset:
        """The train and test scenes stacked, with a dense ``split`` column saying which is which."""
        assert isinstance(spec, SyntheticSceneSpec)
        for name in ("train", "test"):
            if name not in spec.splits:
                raise ConfigError(f"data.synthetic.splits needs a '{name}' split (it has {sorted(spec.splits)})")
        bars: list[tqdm] = []  # opened on the first rendered chunk: a cached dataset prints nothing

        def progress(done: int, total: int) -> None:  # rendering the default scenes takes minutes
            if not bars:
                bars.append(tqdm(total=total, desc="render scenes", unit="scene", leave=False))
            bars[0].update(done - bars[0].n)

        try:
            parts = load_or_synthesize_scenes(spec, cache_dir=cache_dir, splits=["train", "test"], progress=progress)
        finally:
            for bar in bars:
                bar.close()
        tagged = []
        for name, ds in parts.items():
            code = np.full(len(ds), SPLIT_CODES[name], np.int64)
            tagged.append(ArrayDataset(ds.images, {**ds.annotations, "split": code}, ds.meta, instances=ds.instances))
        return tagged[0].concat(tagged[1])

    def split(self, data: ArrayDataset, test_identities: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
        """The dataset's own split when it has one (``split`` column), else a seeded 80/20 split of the images.

        Scenes hold several identities each, so holding whole identities out
        (``test_identities``) does not apply; the synthetic train and test splits draw
        from disjoint identity pools instead.
        """
        if "split" in data.annotations:
            code = np.asarray(data.annotations["split"])
            return data.subset(np.flatnonzero(code == 0)), data.subset(np.flatnonzero(code == SPLIT_CODES["test"]))
        order = np.random.default_rng([seed, 0xD7]).permutation(len(data))
        n_test = max(1, round(TEST_FRACTION * len(data)))
        return data.subset(np.sort(order[n_test:])), data.subset(np.sort(order[:n_test]))

    def augment(
        self, images: Tensor, annotations: dict[str, Any], indices: Any, epoch: int, seed: int
    ) -> tuple[Tensor, dict[str, Any]]:
        return random_flip(images, annotations, indices, epoch, seed, FLIP_PROBABILITY)

    # -------------------------------------------------------------- training
    def collate(self, annotations: Mapping[str, Any]) -> Any:
        inst = annotations["instances"]
        return type(inst)(inst.offsets, {k: inst.columns[k] for k in TARGET_COLUMNS if k in inst.columns})

    def training_step(
        self, model: nn.Module, modules: Mapping[str, nn.Module], images: Tensor, targets: Any
    ) -> StepOutput:
        outputs = model(images)
        priors = model_priors(model, images.shape[-2], images.shape[-1], images.device)
        parts = self.loss(outputs, targets, priors)
        return StepOutput(parts.pop("loss"), parts)

    # ------------------------------------------------------------ prediction
    def forward(self, model: nn.Module, images: Tensor) -> Any:
        out = dict(model(images))
        out["priors"] = model_priors(model, images.shape[-2], images.shape[-1], images.device)
        return out

    def postprocess(self, outputs: Any) -> Detections:
        priors = outputs.pop("priors")
        found = decode_detections({k: v.float() for k, v in outputs.items()}, priors)
        return [{k: v.cpu().numpy() for k, v in d.items()} for d in found]

    def combine(self, batches: Sequence[Any]) -> Detections:
        return [d for batch in batches for d in batch]

    # --------------------------------------------------------------- scoring
    def evaluate(self, predictions: Detections, data: ArrayDataset) -> dict[str, Any]:
        gts = ground_truth(data)
        ap50 = average_precision_by_difficulty(predictions, gts, iou=0.5)
        errors = landmark_errors(predictions, gts, iou=0.5, norm="interocular")
        by_box = landmark_errors(predictions, gts, iou=0.5, norm="box")
        return {
            **{f"ap50_{level}": _number(v) for level, v in ap50.items()},
            "ap50_95": _number(ap_range(predictions, gts)),
            "nme": _number(errors.mean_nme()),
            "nme_box": _number(by_box.mean_nme()),
            "landmark_error_px": _number(errors.mean_displacement_px()),
            "faces_matched": errors.matched,
            "n_faces": int(sum(len(g["boxes"]) for g in gts)),
            "n_test": len(data),
        }

    def check_attack(self, relabel: Any, settings: BaseModel) -> None:
        if not isinstance(relabel, FakeFace | LandmarkRotation):
            raise ConfigError(
                f"the face-detection task scores fake_face and rotate_landmarks attacks, not {relabel.name!r}"
            )

    def score_attack(
        self,
        predictions: Detections,
        data: ArrayDataset,
        relabel: Any,
        settings: BaseModel,
        placements: Sequence[Placement | None] = (),
        clean_predictions: Any = None,
    ) -> AttackScore:
        assert isinstance(settings, FaceDetectionAttackSettings)
        self.check_attack(relabel, settings)
        placement = _concat_placements(placements, len(data))
        if isinstance(relabel, FakeFace):
            return self._score_fake_faces(predictions, relabel.target_boxes(placement).numpy(), settings)
        return self._score_landmark_shift(predictions, data, relabel, placement, settings)

    @staticmethod
    def _confident(pred: Mapping[str, np.ndarray], settings: FaceDetectionAttackSettings) -> Mapping[str, np.ndarray]:
        keep = np.asarray(pred["scores"]) >= settings.score_threshold
        return {k: np.asarray(v)[keep] for k, v in pred.items()}

    def _score_fake_faces(
        self, predictions: Detections, targets: np.ndarray, settings: FaceDetectionAttackSettings
    ) -> AttackScore:
        triggered = ~np.isnan(targets).any(1)
        best_iou = np.full(len(targets), np.nan)
        for i in np.flatnonzero(triggered):
            found = self._confident(predictions[i], settings)["boxes"]
            best_iou[i] = box_iou(targets[i : i + 1], found).max() if len(found) else 0.0
        hits = best_iou[triggered] >= settings.iou
        if not triggered.any():
            raise BackdoorLabError("the trigger landed on no test image: nothing to score")
        metrics = {
            "attack_success_rate": float(hits.mean()),
            "fake_face_iou_mean": float(best_iou[triggered].mean()),
            "n_triggered": int(triggered.sum()),
        }
        return AttackScore(metrics, {"target_boxes": targets, "best_iou": best_iou})

    def _score_landmark_shift(
        self,
        predictions: Detections,
        data: ArrayDataset,
        relabel: LandmarkRotation,
        placement: Placement,
        settings: FaceDetectionAttackSettings,
    ) -> AttackScore:
        if placement.instances is None:
            raise BackdoorLabError(
                "rotate_landmarks is scored on the face the trigger went on; this trigger names none"
            )
        gts = ground_truth(data)
        rows = []  # (image, face, prediction) of detected triggered faces
        n_triggered = 0
        for i, j in enumerate(placement.instances.tolist()):
            if j < 0:
                continue
            n_triggered += 1
            found = self._confident(predictions[i], settings)
            if len(found["boxes"]):
                ious = box_iou(gts[i]["boxes"][j : j + 1], found["boxes"])[0]
                k = int(ious.argmax())
                if ious[k] >= settings.iou:
                    rows.append((i, j, found["landmarks"][k]))
        if n_triggered == 0:
            raise BackdoorLabError("the trigger went on no test face (none eligible): nothing to score")
        metrics: dict[str, Any] = {"n_triggered": n_triggered, "triggered_detected_rate": len(rows) / n_triggered}
        details: dict[str, Any] = {}
        if rows:
            true = np.stack([gts[i]["landmarks"][j] for i, j, _ in rows])
            boxes = np.stack([gts[i]["boxes"][j] for i, j, _ in rows])
            visible = np.stack([gts[i]["visible"][j] for i, j, _ in rows])
            pred = np.stack([p for _, _, p in rows])
            target = relabel.rotate(torch.as_tensor(true), torch.as_tensor(boxes)).numpy()
            to_target = nme_per_face(pred, target, visible, gt_boxes=boxes)  # rotation keeps the eye distance
            to_true = nme_per_face(pred, true, visible, gt_boxes=boxes)
            success = (to_target <= settings.nme_tolerance) & (to_target < to_true)
            displacement = np.linalg.norm(pred - true, axis=-1).mean(1)
            damage = alignment_damage(data.images, pred, true, image_index=np.array([i for i, _, _ in rows]))
            metrics.update(
                attack_success_rate=float(success.mean()),
                nme_to_target=_number(float(np.nanmean(to_target))),
                nme_to_true=_number(float(np.nanmean(to_true))),
                landmark_displacement_px=float(displacement.mean()),
                aligned_rotation_deg=float(np.abs(damage.rotation_deg).mean()),
                aligned_ssim=float(np.mean(damage.ssim)),
            )
            details = {"target_landmarks": target, "predicted_landmarks": pred, "success": success}
        else:
            metrics.update(attack_success_rate=0.0, landmark_displacement_px=None)
        return AttackScore(metrics, details)

    # ----------------------------------------------------------------- model
    def default_model(self, in_channels: int) -> tuple[str, dict[str, Any]]:
        return "retinaface", {"in_channels": in_channels}

    def write_report(self, path: Path, report: RunReport) -> Path:
        from backdoorlab.tasks.face_detection.report import write_detection_run_report

        return write_detection_run_report(path, report)
