"""The registered ``retinaface`` model: a :class:`~.retinaface.RetinaFace` that carries its anchors.

Why the anchors ride on the model: the outputs are encoded against one prior per anchor,
so decoding them needs exactly the anchor layout the model was trained with. Building
both from the same constructor arguments (stored in the model card) keeps them
together through checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

from backdoorlab.errors import ConfigError
from backdoorlab.tasks.face_detection.anchors import AnchorSpec
from backdoorlab.tasks.face_detection.retinaface import RetinaFace


def build_retinaface(
    in_channels: int = 3,
    backbone: str = "mobilenet0.25",
    fpn_channels: int | None = None,
    min_sizes: Sequence[Sequence[float]] | None = None,
    canvas: int = 192,
) -> RetinaFace:
    """RetinaFace with ``anchor_spec``: ``min_sizes`` per level, or the default scaled to ``canvas`` pixels."""
    if in_channels != 3:
        raise ConfigError(f"retinaface reads RGB images (3 channels), got in_channels={in_channels}")
    spec = (
        AnchorSpec.for_canvas(canvas)
        if min_sizes is None
        else AnchorSpec(min_sizes=tuple(tuple(float(s) for s in level) for level in min_sizes))
    )
    model = RetinaFace(backbone=backbone, fpn_channels=fpn_channels, anchors_per_cell=spec.anchors_per_cell)
    model.anchor_spec = spec  # type: ignore[assignment]
    return model
