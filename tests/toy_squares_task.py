"""A second task with ragged targets, defined only in the tests: find the squares in an image.

It proves that a task with a variable number of instances per image enters through the
Task seam alone: it registers its task, model and relabel here, and the generic loop,
runs, attacks, sweeps, store and reports carry it without a line of change.

* data: 32x32 images with 0-3 solid squares (6-12 px) on a grey background; each
  square is an instance with a ``boxes`` row (x1 y1 x2 y2, pixels) and a ``label``;
  a dense ``identity`` column groups the images into scenes for the identity split;
* model: a tiny CNN predicting, on an 8x8 grid (stride 4), an objectness logit and the
  box of the square whose centre falls in the cell (centre offset in the cell, size / 16);
* training step: two named parts, ``objectness`` (BCE over every cell) and ``box`` (L1
  over the cells holding a centre);
* prediction: decoded boxes with score >= 0.5 per image (a list of arrays);
* metrics: precision, recall and F1 at IoU >= 0.5 (headline ``f1``);
* attack: the relabel ``square_at_trigger`` adds an instance where the trigger landed
  (it needs the trigger's placement); success = a predicted box at IoU >= ``iou`` with
  the trigger's box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from backdoorlab.attacks.relabel import Relabel
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.instances import InstanceBatch, InstanceTable
from backdoorlab.registry import MODELS, RELABELS, TASKS
from backdoorlab.tasks.base import AttackScore, StepOutput, Task
from backdoorlab.triggers.base import Placement

GRID, STRIDE, BOX_SCALE, POS_WEIGHT = 8, 4, 16.0, 8.0
SCHEMA = {"boxes": ("float32", (4,)), "label": ("int64", ())}


class SquaresSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(240, ge=10)
    size: int = Field(32, ge=32, le=32)
    max_squares: int = Field(3, ge=0, le=6)
    scenes: int = Field(12, ge=2)
    seed: int = 0


def render_squares(spec: SquaresSpec) -> ArrayDataset:
    rng = np.random.default_rng(spec.seed)
    images = np.full((spec.n, spec.size, spec.size, 3), 96, np.uint8)
    per_image = []
    for i in range(spec.n):
        boxes = []
        for _ in range(rng.integers(0, spec.max_squares + 1)):
            s = int(rng.integers(6, 13))
            x, y = (int(v) for v in rng.integers(0, spec.size - s, 2))
            images[i, y : y + s, x : x + s] = rng.integers(150, 256, 3)
            boxes.append([x, y, x + s, y + s])
        per_image.append({"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "label": np.ones(len(boxes))})
    identity = (np.arange(spec.n) % spec.scenes).astype(np.int64)
    return ArrayDataset(images, {"identity": identity}, {"name": "squares"},
                        instances=InstanceTable.from_lists(per_image, SCHEMA))  # fmt: skip


class GridNet(nn.Module):
    """Four convolutions and two max-pools: 32x32 -> an 8x8 grid of 5 numbers."""

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(in_channels, width), nn.MaxPool2d(2), *block(width, width), nn.MaxPool2d(2),
            *block(width, width), nn.Conv2d(width, 5, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x1 y1 x2 y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def matches(pred: np.ndarray, true: np.ndarray, iou: float) -> int:
    """Greedy one-to-one matches at IoU >= ``iou``."""
    if len(pred) == 0 or len(true) == 0:
        return 0
    m = box_iou(pred, true)
    found = 0
    while m.size and m.max() >= iou:
        i, j = np.unravel_index(m.argmax(), m.shape)
        m[i, :], m[:, j] = -1, -1
        found += 1
    return found


class SquaresAttackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    iou: float = Field(0.5, gt=0, le=1)


class SquareAtTrigger(Relabel):
    """The attacker's square: an instance added exactly where the trigger was pasted."""

    name = "square_at_trigger"
    task = "squares"
    needs_placement = True

    def __call__(self, annotations: Mapping[str, Any], placement: Placement | None = None) -> dict[str, Any]:
        assert placement is not None
        inst: InstanceBatch = annotations["instances"]
        samples = [
            {"boxes": torch.cat([s["boxes"], placement.boxes[i : i + 1].to(s["boxes"])]),
             "label": torch.cat([s["label"], torch.ones(1, dtype=s["label"].dtype)])}
            for i, s in enumerate(inst.per_sample())
        ]  # fmt: skip
        out = dict(annotations)
        out["instances"] = InstanceBatch.from_samples(samples, SCHEMA)
        return out

    def params(self) -> dict[str, Any]:
        return {"name": self.name}


class SquaresTask(Task):
    name = "squares"
    required_annotations = ("instances",)
    headline_metric = "f1"
    attack_settings = SquaresAttackSettings
    default_relabel: ClassVar[dict[str, Any]] = {"name": "square_at_trigger"}
    synthetic_spec = SquaresSpec

    def synthesize(self, spec: BaseModel, cache_dir: str | None = None) -> ArrayDataset:
        assert isinstance(spec, SquaresSpec)
        return render_squares(spec)

    def collate(self, annotations: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        inst: InstanceBatch = annotations["instances"]
        b = len(inst)
        obj = torch.zeros(b, GRID, GRID)
        box = torch.zeros(b, 4, GRID, GRID)
        for i, sample in enumerate(inst.per_sample()):
            for x1, y1, x2, y2 in sample["boxes"].tolist():
                cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
                gx, gy = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
                obj[i, gy, gx] = 1
                box[i, :, gy, gx] = torch.tensor([cx - gx, cy - gy, (x2 - x1) / BOX_SCALE, (y2 - y1) / BOX_SCALE])
        return {"objectness": obj, "box": box}

    def training_step(
        self, model: nn.Module, modules: Mapping[str, nn.Module], images: torch.Tensor, targets: Any
    ) -> StepOutput:
        out = model(images)
        # about 2 cells of 64 hold a centre: weigh them up, or "nothing anywhere" is a good answer
        obj = F.binary_cross_entropy_with_logits(out[:, 0], targets["objectness"], pos_weight=torch.tensor(POS_WEIGHT))
        pos = targets["objectness"][:, None].expand_as(targets["box"]) > 0
        box = F.l1_loss(out[:, 1:][pos], targets["box"][pos]) if pos.any() else out.sum() * 0
        return StepOutput(obj + box, {"objectness": obj, "box": box})

    def postprocess(self, outputs: torch.Tensor) -> list[np.ndarray]:
        out = outputs.float().cpu()
        score = out[:, 0].sigmoid()
        result = []
        for i in range(len(out)):
            gy, gx = torch.nonzero(score[i] >= 0.5, as_tuple=True)
            d = out[i, 1:, gy, gx]
            cx, cy = (gx + d[0]) * STRIDE, (gy + d[1]) * STRIDE
            w, h = d[2] * BOX_SCALE, d[3] * BOX_SCALE
            result.append(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).numpy())
        return result

    def combine(self, batches: Sequence[Any]) -> list[np.ndarray]:
        return [boxes for batch in batches for boxes in batch]

    def evaluate(self, predictions: Any, data: ArrayDataset) -> dict[str, Any]:
        assert data.instances is not None
        n_pred = sum(len(p) for p in predictions)
        n_true = data.instances.n_instances
        tp = sum(matches(p, data.instances.rows(i)["boxes"], 0.5) for i, p in enumerate(predictions))
        precision, recall = tp / max(n_pred, 1), tp / max(n_true, 1)
        return {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-9),
            "n_test": len(data),
        }

    def score_attack(
        self,
        predictions: Any,
        data: ArrayDataset,
        relabel: Relabel,
        settings: BaseModel,
        placements: Sequence[Placement | None] = (),
        clean_predictions: Any = None,
    ) -> AttackScore:
        assert isinstance(settings, SquaresAttackSettings)
        trigger_boxes = torch.cat([p.boxes for p in placements if p is not None]).numpy()
        hits = np.asarray([matches(p, trigger_boxes[i : i + 1], settings.iou) for i, p in enumerate(predictions)])
        return AttackScore({"attack_success_rate": float(hits.mean()), "n_triggered": len(hits)})

    def default_model(self, in_channels: int) -> tuple[str, dict[str, Any]]:
        return "squares_grid", {"in_channels": in_channels}


def register() -> None:
    """Register the toy's task, model and relabel (idempotent)."""
    TASKS.register(SquaresTask)
    MODELS.register(GridNet, name="squares_grid")
    RELABELS.register(SquareAtTrigger)
