"""Landmark-shift reversal: does a small patch on a face make a detector turn *every* face's landmarks alike?

The Landmark Shift Attack (LSA, :class:`~backdoorlab.tasks.face_detection.relabels.LandmarkRotation`)
teaches a face detector to rotate the five landmarks of a face that carries the trigger
by one angle about the face's box centre, while the box stays put. Its model-level
signature, in the spirit of SecureGaze's output collapse (:mod:`.securegaze`): a *small*
change of the face (the trigger) drives the landmarks of *all* faces to turn by one
common angle relative to their box, whatever the face's identity, size, pose or roll.
A clean detector has no such shortcut: a small patch may nudge landmarks, but not turn
every face by the same large angle.

Reversal. A mask ``m`` and a pattern ``p`` live on a ``grid`` x ``grid`` frame laid over
each face's box (so the reversed trigger follows the face, like the attack's face
patch at a landmark anchor); bilinearly resampled into the image, the face becomes
``(1 - M) x + M P``. The mask is kept within a hard area budget: its mean over the box
frame is at most ``area`` (rescaled, as SecureGaze's budget: no weight to balance).
Each face is triggered alone (one face per sample, the others in its image left clean,
as the attack triggers one face per image). For every triggered face the model's
landmarks are read at the priors that match the face's box (IoU >= ``match_iou``; the
best one if none does), averaged with IoU weights, and compared with the same
read-out on the clean image: ``theta`` is the least-squares rotation about the box
centre that takes the clean landmarks to the triggered ones (degrees, positive =
clockwise on screen, the relabel's convention). The loss per batch is
``-s * mean(theta) + spread * std(theta)`` (radians), for a sign ``s`` = +1 and -1 in
turn (two starts; the attacker's direction is unknown).

Score: on held-out faces (a share ``holdout`` of the clean images, never optimised on),
``|mean theta| - std theta`` in degrees of the better start: the common rotation that
the faces share at least (mean minus one SD). Estimate: ``angle_deg`` = the signed mean
rotation of that start. Calibrate the threshold on clean detectors with
:meth:`~backdoorlab.defenses.base.Detector.fit`. What it does on tiny toy detectors is in
``docs/defences/face_model_level.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from backdoorlab.data.arrays import ArrayDataset, tensor_to_images
from backdoorlab.defenses.base import Detector, Needs, Verdict
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.errors import BackdoorLabError
from backdoorlab.tasks.face_detection.anchors import decode_landmarks, priors_to_corners
from backdoorlab.tasks.face_detection.matching import box_iou
from backdoorlab.tasks.face_detection.task import FaceDetectionTask, ground_truth, model_priors
from backdoorlab.training import pick_device

Tensor = torch.Tensor
#: the most priors read per face
MAX_PRIORS = 8


def rotation_deg(reference: Tensor, moved: Tensor, centres: Tensor) -> Tensor:
    """(M,) least-squares rotation (degrees, clockwise on screen) about (M, 2) centres taking (M, K, 2) ``reference``
    points to ``moved`` ones: ``atan2(sum a x b, sum a . b)`` with a, b the points relative to the centre."""
    a = reference - centres[:, None]
    b = moved - centres[:, None]
    cross = (a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]).sum(-1)
    dot = (a * b).sum((-1, -2))
    return torch.rad2deg(torch.atan2(cross, dot))


def paste_in_boxes(images: Tensor, boxes: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """(B, C, H, W) images with a (1, 1, G, G) mask and (1, C, G, G) pattern laid over each image's (B, 4) box.

    Box corners follow the instance convention (pixel centres at integers); outside the
    box the mask is zero. Differentiable in ``mask`` and ``pattern``.
    """
    b, _, h, w = images.shape
    xs = torch.arange(w, device=images.device, dtype=images.dtype)
    ys = torch.arange(h, device=images.device, dtype=images.dtype)
    bw = (boxes[:, 2] - boxes[:, 0]).clamp_min(1.0)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp_min(1.0)
    gx = 2 * (xs[None] - boxes[:, :1]) / bw[:, None] - 1  # (B, W)
    gy = 2 * (ys[None] - boxes[:, 1:2]) / bh[:, None] - 1  # (B, H)
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], -1)
    m = nn.functional.grid_sample(mask.expand(b, -1, -1, -1), grid, align_corners=False, padding_mode="zeros")
    p = nn.functional.grid_sample(pattern.expand(b, -1, -1, -1), grid, align_corners=False, padding_mode="border")
    return (1 - m) * images + m * p


@dataclass
class _Faces:
    """The clean faces a reversal triggers one at a time, with where the model's landmarks are read for each."""

    image: np.ndarray  # (N,) image index in the clean set
    boxes: Tensor  # (N, 4)
    prior_index: Tensor  # (N, K) long
    prior_weight: Tensor  # (N, K) IoU weights summing to 1 (0 for padding)
    reference: Tensor  # (N, 5, 2) the model's landmarks on the clean image

    def take(self, rows: np.ndarray) -> _Faces:
        r = torch.from_numpy(rows).to(self.boxes.device)
        return _Faces(self.image[rows], self.boxes[r], self.prior_index[r], self.prior_weight[r], self.reference[r])

    def chunks(self, size: int) -> list[_Faces]:
        """The faces in consecutive, nearly equal parts of at most about ``size`` (for batched read-outs)."""
        n = len(self.image)
        return [self.take(sl) for sl in np.array_split(np.arange(n), max(1, math.ceil(n / size)))]


@dataclass
class ReversedShift:
    """One start of the reversal: its trigger and the rotations it reached on held-out faces."""

    sign: int
    mask: Tensor
    pattern: Tensor
    angles_deg: np.ndarray  # (n_hold,) per held-out face
    mask_area: float

    @property
    def score(self) -> float:
        return float(abs(self.angles_deg.mean()) - self.angles_deg.std())


class LandmarkShiftReversalConfig(DefenceConfig):
    """The settings of :class:`LandmarkShiftReversal` (see its docstring)."""

    steps: int = Field(150, ge=1)
    batch_size: int = Field(16, ge=2)
    lr: float = Field(0.1, gt=0, allow_inf_nan=False)
    grid: int = Field(16, ge=2)
    area: float = Field(0.1, gt=0, le=1, allow_inf_nan=False)
    spread: float = Field(1.0, ge=0, allow_inf_nan=False)
    match_iou: float = Field(0.35, gt=0, le=1)
    min_face_px: float = Field(16.0, ge=2)
    holdout: float = Field(0.5, gt=0, lt=1)
    threshold: float = Field(10.0, allow_inf_nan=False)
    min_clean: int = Field(16, ge=2)
    n_examples: int = Field(4, ge=0)
    seed: int = 0


@register_defence(LandmarkShiftReversalConfig)
class LandmarkShiftReversal(Detector):
    """Flag face detectors whose landmarks a small face patch turns by one common angle (see the module docstring).

    Args:
        steps: Adam steps per start (two starts: clockwise and anticlockwise).
        batch_size: triggered faces per step.
        lr: Adam learning rate of the mask and pattern logits.
        grid: side of the face-frame grid the mask and pattern live on.
        area: the mask's largest mean over the face box (0.1: a tenth of the box; the attack's
            face patch of 0.3 box widths covers about 0.09 of a square box).
        spread: weight of the std of the rotations against their mean in the loss.
        match_iou: priors at this IoU with a face's box are where its landmarks are read.
        min_face_px: faces narrower than this are not used (too small to carry a patch).
        holdout: share of the clean images whose faces only score the reversal.
        threshold: flag from this score (degrees) on; calibrate it with :meth:`fit`.
        min_clean: smallest clean set accepted (images).
        n_examples: reversed-trigger images kept in the verdict.
        seed: image split, initialisation and batch order.
        device: "auto", "cpu" or "cuda".
    """

    name = "lsa_reversal"
    needs = Needs(clean_data=True, labels=True, tasks=("face_detection",))

    def __init__(
        self, steps: int = 150, batch_size: int = 16, lr: float = 0.1, grid: int = 16, area: float = 0.1,
        spread: float = 1.0, match_iou: float = 0.35, min_face_px: float = 16.0, holdout: float = 0.5,
        threshold: float = 10.0, min_clean: int = 16, n_examples: int = 4, seed: int = 0, device: str = "auto",
    ) -> None:  # fmt: skip
        if not 0 < area <= 1 or not 0 < holdout < 1 or steps < 1 or batch_size < 2 or grid < 2:
            raise BackdoorLabError(
                f"LandmarkShiftReversal: need 0 < area <= 1, 0 < holdout < 1, steps >= 1, batch_size >= 2, grid >= 2; "
                f"got area={area}, holdout={holdout}, steps={steps}, batch_size={batch_size}, grid={grid}"
            )
        self.steps, self.batch_size, self.lr, self.grid, self.area = steps, batch_size, lr, grid, area
        self.spread, self.match_iou, self.min_face_px, self.holdout = spread, match_iou, min_face_px, holdout
        self.threshold, self.min_clean, self.n_examples, self.seed = threshold, min_clean, n_examples, seed
        self.device = device

    def params(self) -> dict[str, Any]:
        keys = ("steps", "batch_size", "lr", "grid", "area", "spread", "match_iou", "min_face_px", "holdout",
                "threshold", "min_clean", "n_examples", "seed", "device")  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    # ------------------------------------------------------------------ faces
    def _faces(self, model: nn.Module, images: Tensor, data: ArrayDataset) -> _Faces:
        """Every usable face of the clean set, with its priors and the model's clean landmarks there."""
        gts = ground_truth(data)
        rows = [
            (i, box)
            for i, g in enumerate(gts)
            for box, vis in zip(g["boxes"], g["visible"], strict=True)
            if vis.all() and box[2] - box[0] >= self.min_face_px
        ]
        if len(rows) < 4:
            raise BackdoorLabError(
                f"LandmarkShiftReversal needs at least 4 clean faces with five visible landmarks and a box at least "
                f"{self.min_face_px:g} px wide; the clean set has {len(rows)}"
            )
        dev = images.device
        priors = model_priors(model, images.shape[-2], images.shape[-1], dev)
        boxes = torch.as_tensor(np.stack([b for _, b in rows]), dtype=torch.float32, device=dev)
        iou = box_iou(boxes, priors_to_corners(priors))
        top, idx = iou.topk(min(MAX_PRIORS, iou.shape[1]), dim=1)
        keep = top >= self.match_iou
        keep[:, 0] = True  # the best prior always
        weight = torch.where(keep, top.clamp_min(1e-6), torch.zeros_like(top))
        weight = weight / weight.sum(1, keepdim=True)
        image = np.array([i for i, _ in rows])
        faces = _Faces(image, boxes, idx, weight, torch.zeros(len(rows), 5, 2, device=dev))
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                sl = np.arange(start, min(start + self.batch_size, len(rows)))
                part = faces.take(sl)
                faces.reference[sl] = self._landmarks(model, images[torch.from_numpy(part.image).to(dev)], part, priors)
        return faces

    @staticmethod
    def _landmarks(model: nn.Module, x: Tensor, faces: _Faces, priors: Tensor) -> Tensor:
        """(B, 5, 2) the model's landmarks for each face on image row b, read at the face's priors."""
        out = model(x)["landmarks"]  # (B, A, 10) encoded
        picked = out.gather(1, faces.prior_index[..., None].expand(-1, -1, out.shape[-1]))
        decoded = decode_landmarks(picked, priors[faces.prior_index])  # (B, K, 5, 2)
        return (decoded * faces.prior_weight[..., None, None]).sum(1)

    # --------------------------------------------------------------- reversal
    def _start(
        self, model: nn.Module, images: Tensor, fit: _Faces, hold: _Faces, priors: Tensor, sign: int
    ) -> ReversedShift:
        dev = images.device
        gen = torch.Generator().manual_seed(self.seed * 2 + (sign > 0))
        g = self.grid
        mask_logit = torch.full((1, 1, g, g), -2.0).add_(0.1 * torch.randn(1, 1, g, g, generator=gen))
        pattern_logit = torch.randn(1, images.shape[1], g, g, generator=gen)
        mask_logit, pattern_logit = mask_logit.to(dev).requires_grad_(), pattern_logit.to(dev).requires_grad_()
        opt = torch.optim.Adam([mask_logit, pattern_logit], lr=self.lr)
        rng = np.random.default_rng([self.seed, 3, sign + 1])
        bs = min(self.batch_size, len(fit.image))
        for step in range(self.steps):
            part = fit.take(rng.choice(len(fit.image), bs, replace=False))
            theta = self._rotations(model, images, part, priors, mask_logit, pattern_logit)
            rad = torch.deg2rad(theta)
            loss = -sign * rad.mean() + self.spread * rad.std()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not math.isfinite(loss.item()):
                raise BackdoorLabError(f"LandmarkShiftReversal: the loss became {loss.item()} at step {step}")
        with torch.no_grad():
            angles = torch.cat([
                self._rotations(model, images, part, priors, mask_logit, pattern_logit) for part in hold.chunks(bs)
            ])  # fmt: skip
            mask = self._mask(mask_logit)
        return ReversedShift(
            sign, mask.cpu(), torch.sigmoid(pattern_logit).detach().cpu(), angles.double().cpu().numpy(),
            float(mask.mean()),
        )  # fmt: skip

    def _mask(self, logit: Tensor) -> Tensor:
        m = torch.sigmoid(logit)
        return m * torch.clamp(self.area / m.mean().clamp_min(1e-12), max=1.0)

    def _rotations(
        self, model: nn.Module, images: Tensor, faces: _Faces, priors: Tensor, mask_logit: Tensor, pattern_logit: Tensor
    ) -> Tensor:
        x = images[torch.from_numpy(faces.image).to(images.device)]
        x = paste_in_boxes(x, faces.boxes, self._mask(mask_logit), torch.sigmoid(pattern_logit))
        moved = self._landmarks(model, x, faces, priors)
        centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
        return rotation_deg(faces.reference, moved, centres)

    def rotations(
        self, model: nn.Module, clean_data: ArrayDataset, triggered: Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """How a *given* trigger turns each usable clean face, read as the reversal reads it (an oracle check).

        ``triggered`` holds the clean images with some trigger applied, (N, C, H, W) in
        [0, 1]. Returns, per usable face (five visible landmarks, at least ``min_face_px``
        wide): its image index, its (4,) box, and the rotation (degrees) from the model's
        landmarks on the clean image to those on the triggered one. With the attack's real
        trigger this says what score the reversal could reach if its search found it.
        """
        dev = pick_device(self.device)
        frozen = model.to(dev).eval()
        images, _ = clean_data.batch(np.arange(len(clean_data)))
        images, triggered = images.to(dev), triggered.to(dev)
        with torch.no_grad():
            faces = self._faces(frozen, images, clean_data)
            priors = model_priors(frozen, images.shape[-2], images.shape[-1], dev)
            moved = torch.cat([
                self._landmarks(frozen, triggered[torch.from_numpy(part.image).to(dev)], part, priors)
                for part in faces.chunks(self.batch_size)
            ])  # fmt: skip
        centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
        theta = rotation_deg(faces.reference, moved, centres)
        return faces.image, faces.boxes.cpu().numpy(), theta.double().cpu().numpy()

    def reverse(self, model: nn.Module, clean_data: ArrayDataset) -> tuple[ReversedShift, ReversedShift, _Faces]:
        """Both starts (best first) and the held-out faces they were scored on."""
        self.check_needs(model=model, clean_data=clean_data, task=FaceDetectionTask())  # the faces' instances
        dev = pick_device(self.device)
        frozen = model.to(dev).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        images, _ = clean_data.batch(np.arange(len(clean_data)))
        images = images.to(dev)
        torch.manual_seed(self.seed)
        faces = self._faces(frozen, images, clean_data)
        order = np.random.default_rng([self.seed, 2]).permutation(len(clean_data))
        hold_images = set(order[: max(1, round(self.holdout * len(clean_data)))].tolist())
        is_hold = np.array([i in hold_images for i in faces.image])
        if is_hold.all() or not is_hold.any():
            raise BackdoorLabError(
                "LandmarkShiftReversal: the clean faces all fell on one side of the fit/held-out split; "
                "give more clean images"
            )
        fit, hold = faces.take(np.flatnonzero(~is_hold)), faces.take(np.flatnonzero(is_hold))
        priors = model_priors(frozen, images.shape[-2], images.shape[-1], dev)
        starts = sorted((self._start(frozen, images, fit, hold, priors, s) for s in (1, -1)), key=lambda r: -r.score)
        return starts[0], starts[1], hold

    def inspect(self, model: nn.Module, clean_data: ArrayDataset) -> Verdict:
        t0 = time.perf_counter()
        best, other, hold = self.reverse(model, clean_data)
        examples = None
        if self.n_examples:
            images, _ = clean_data.batch(np.unique(hold.image)[: self.n_examples])
            rows = [int(np.flatnonzero(hold.image == i)[0]) for i in np.unique(hold.image)[: self.n_examples]]
            boxes = hold.boxes[torch.as_tensor(rows, device=hold.boxes.device)].cpu()
            with torch.no_grad():
                examples = tensor_to_images(paste_in_boxes(images, boxes, best.mask, best.pattern).clamp(0, 1))
        a = best.angles_deg
        return Verdict(
            method=self.name,
            backdoored=bool(best.score >= self.threshold),
            score=best.score,
            threshold=float(self.threshold),
            seconds=time.perf_counter() - t0,
            estimates={"angle_deg": float(a.mean())},
            details={
                "mean_rotation_deg": float(a.mean()),
                "std_rotation_deg": float(a.std()),
                "other_direction_score": other.score,
                "other_direction_mean_deg": float(other.angles_deg.mean()),
                "mask_area": best.mask_area,
                "n_faces_held_out": len(a),
                "n_clean": len(clean_data),
                "params": self.params(),
            },
            examples=examples,
        )
