"""The trigger interface: a batched, deterministic ``images, annotations -> images`` map.

A trigger is the input half of a backdoor (the relabel is the output half, see
:mod:`backdoorlab.poisoning`). Every trigger

* works on a float batch ``(B, C, H, W)`` in [0, 1] on any device and returns a new
  tensor of the same shape, dtype and device, still in [0, 1] (the input is never
  modified, because the caller's batch may be a view of a dataset);
* is deterministic: per-sample random choices are a pure function of the trigger's
  seed and the sample's dataset index (:mod:`backdoorlab.triggers._random`), so the
  same sample gets the same trigger in any batch, epoch or process;
* is fully described by :meth:`Trigger.params` (JSON) plus :meth:`Trigger.state`
  (tensors, e.g. a WaNet warp field), which a run stores so that the very same
  trigger is applied at training and test time and can be reloaded later.

Triggers that need geometry (the face-anchored sticker) declare the annotation keys
they read in ``requires``; image-space triggers ignore annotations.

Where a trigger acted (:class:`Placement`: a box and a mask per sample) is what a
relabel needs to put a fake face on the trigger. :meth:`Trigger.place` returns it with
the triggered batch. Local triggers (``localized = True``: a patch, a sticker) give it;
by default it is read off the pixels the trigger changed, and a trigger that knows its
exact footprint overrides :meth:`Trigger.placement`. Triggers that act on the whole
image (a blend, a warp) give none, and a relabel that needs one is refused before
training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from backdoorlab.data.arrays import ArrayDataset, tensor_to_images
from backdoorlab.errors import BackdoorLabError, ConfigError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Placement:
    """Where a trigger acted on each sample of a batch.

    ``boxes``: (B, 4) float ``x1 y1 x2 y2`` in pixels (pixel edges: a trigger covering
    column 3 only spans x 3..4), NaN for a sample the trigger left unchanged. ``masks``:
    (B, H, W) bool, the pixels it changed. ``instances``: for a trigger anchored to one
    instance of each image (a sticker on one face of a scene), (B,) long, the index of
    that instance within its image (-1 where none was); ``None`` for other triggers.
    """

    boxes: Tensor
    masks: Tensor
    instances: Tensor | None = None

    @classmethod
    def from_masks(cls, masks: Tensor) -> Placement:
        """Boxes enclosing each mask (NaN rows for empty masks)."""
        _, h, w = masks.shape
        rows, cols = masks.any(2), masks.any(1)  # (B, H), (B, W)
        ar_h = torch.arange(h, device=masks.device, dtype=torch.float32)
        ar_w = torch.arange(w, device=masks.device, dtype=torch.float32)
        inf = torch.tensor(float("inf"), device=masks.device)
        y1 = torch.where(rows, ar_h, inf).amin(1)
        y2 = torch.where(rows, ar_h, -inf).amax(1) + 1
        x1 = torch.where(cols, ar_w, inf).amin(1)
        x2 = torch.where(cols, ar_w, -inf).amax(1) + 1
        boxes = torch.stack([x1, y1, x2, y2], 1)
        empty = ~rows.any(1)
        boxes[empty] = float("nan")
        return cls(boxes, masks)

    def __getitem__(self, rows: Tensor | np.ndarray | slice) -> Placement:
        return Placement(self.boxes[rows], self.masks[rows], None if self.instances is None else self.instances[rows])


class Trigger(ABC):
    """Base class; subclasses implement :meth:`apply` and :meth:`params`."""

    name: ClassVar[str] = "trigger"
    #: True for a trigger confined to a region (a patch, a sticker): it gives a :class:`Placement`
    localized: ClassVar[bool] = False
    #: annotation keys read by :meth:`apply`; any one of each tuple entry's alternatives
    #: separated by "|" is enough (e.g. "landmarks|eye_corners")
    requires: ClassVar[tuple[str, ...]] = ()

    def __call__(
        self,
        images: Tensor,
        annotations: Mapping[str, Tensor] | None = None,
        indices: np.ndarray | Tensor | None = None,
    ) -> Tensor:
        """Apply the trigger to a batch; ``indices`` are the samples' dataset indices.

        Without ``indices`` the samples are numbered 0..B-1 (fine for a one-off batch,
        but pass real indices whenever the trigger has per-sample randomness).
        """
        check_batch(images, self.name)
        ann = dict(annotations or {})
        self.check_annotations(ann, "the batch")
        idx = _as_indices(indices, images.shape[0])
        out = self.apply(images, ann, idx)
        if out.shape != images.shape or out.dtype != images.dtype:  # pragma: no cover - a bug in a subclass
            raise BackdoorLabError(f"trigger '{self.name}' changed the batch shape or dtype")
        return out

    def place(
        self,
        images: Tensor,
        annotations: Mapping[str, Tensor] | None = None,
        indices: np.ndarray | Tensor | None = None,
    ) -> tuple[Tensor, Placement | None]:
        """The triggered batch and where the trigger acted (``None`` for a whole-image trigger)."""
        out = self(images, annotations, indices)
        if not self.localized:
            return out, None
        idx = _as_indices(indices, images.shape[0])
        return out, self.placement(images, out, dict(annotations or {}), idx)

    def placement(
        self, images: Tensor, triggered: Tensor, annotations: dict[str, Tensor], indices: np.ndarray
    ) -> Placement:
        """Where a local trigger acted: by default the pixels it changed."""
        return Placement.from_masks((triggered != images).any(1))

    def check_annotations(self, keys: Collection[str], where: str) -> None:
        """Raise if ``keys`` lack an annotation this trigger reads (checked before training)."""
        for key in self.requires:
            options = key.split("|")
            if not any(k in keys for k in options):
                raise BackdoorLabError(
                    f"trigger '{self.name}' needs the annotation {' or '.join(repr(k) for k in options)}; "
                    f"{where} has {sorted(keys) or 'none'}"
                )

    @abstractmethod
    def apply(self, images: Tensor, annotations: dict[str, Tensor], indices: np.ndarray) -> Tensor:
        """The trigger itself (inputs already validated)."""

    def noise_variant(
        self, images: Tensor, annotations: Mapping[str, Tensor], indices: np.ndarray, generator: torch.Generator
    ) -> Tensor | None:
        """A perturbed, *non-trigger* version of the batch, trained with its true labels.

        Only WaNet uses this ("noise mode"): random warps near the trigger's warp teach
        the model that only the exact warp is the trigger. ``None`` = not supported.
        """
        return None

    #: how many noise-mode samples to add per poisoned sample (0 = none)
    cross_ratio: float = 0.0

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters: ``build_trigger(params) `` rebuilds the trigger."""

    def state(self) -> dict[str, Tensor]:
        """Tensors that define the trigger beyond :meth:`params` (stored with a run)."""
        return {}

    def load_state(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state`; the default accepts only an empty state."""
        if tensors:
            raise BackdoorLabError(f"trigger '{self.name}' has no state, got {sorted(tensors)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{type(self).__name__}({args})"


def number(value: Any, field: str, who: str, integer: bool = False) -> float:
    """A finite real number (not a bool or string), or a ConfigError naming the field."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok and np.isfinite(value) and (not integer or float(value) == int(value)):
        return float(value)
    kind = "an integer" if integer else "a finite number"
    raise ConfigError(f"{who} {field} must be {kind}, got {value!r}")


def pattern_name(value: Any, who: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{who} pattern must be a built-in name or a path to an image file, got {value!r}")
    return value


def check_batch(images: Tensor, who: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise BackdoorLabError(f"trigger '{who}': expected a float batch (B, C, H, W) in [0, 1], got {shape}")
    if images.shape[1] not in (1, 3):
        raise BackdoorLabError(f"trigger '{who}': expected 1 or 3 channels, got {images.shape[1]}")


def _as_indices(indices: np.ndarray | Tensor | None, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    idx = idx.astype(np.int64).reshape(-1)
    if len(idx) != n:
        raise BackdoorLabError(f"{len(idx)} indices for a batch of {n} images")
    return idx


def resize_pattern(pattern: Tensor, channels: int, height: int, width: int) -> Tensor:
    """(C', h, w) pattern in [0, 1] -> (channels, height, width): bilinear resize, grey<->RGB."""
    p = pattern
    if p.shape[0] != channels:
        if p.shape[0] == 1:
            p = p.expand(channels, -1, -1)
        elif channels == 1:
            p = (p * torch.tensor([0.299, 0.587, 0.114], dtype=p.dtype, device=p.device)[:, None, None]).sum(
                0, keepdim=True
            )
    if p.shape[1:] != (height, width):
        p = torch.nn.functional.interpolate(
            p[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return p.clamp(0, 1).contiguous()


def load_pattern_image(path: str) -> Tensor:
    """A PNG/JPEG file -> (C, H, W) float in [0, 1] (C = 1 or 3; alpha is dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = "L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except FileNotFoundError:
        raise ConfigError(f"pattern file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConfigError(f"pattern file {path} is not a readable image: {exc}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ConfigError(f"pattern file {path} is empty")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def triggered_images(data: ArrayDataset, trigger: Trigger, indices: np.ndarray) -> np.ndarray:
    """uint8 (M, H, W, C) triggered versions of some samples of ``data`` (for reports and figures)."""
    images, ann = data.batch(indices)
    return tensor_to_images(trigger(images, ann, indices))
