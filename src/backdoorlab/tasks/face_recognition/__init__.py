"""The open-set face-recognition task, model half: embedding networks and margin heads.

The three embedding networks (:class:`IResNet`, :class:`FaceNetLike`,
:class:`MobileFaceNet`) register themselves in ``MODELS`` as ``iresnet``,
``facenet_like`` and ``mobilefacenet``; the ArcFace / CosFace margin heads are trainable
modules the task owns (saved beside the network, never exported with it). The Task
itself (identity labels and the margin head at training, embeddings and pairs at test)
comes in a later step.

See docs/face_recognition_models.md.
"""

from backdoorlab.registry import MODELS
from backdoorlab.tasks.face_recognition.margin import (
    MARGIN_HEADS,
    ArcFaceHead,
    CosFaceHead,
    MarginHead,
    build_margin_head,
    class_weights_from_counts,
)
from backdoorlab.tasks.face_recognition.networks import (
    EmbeddingNet,
    FaceNetLike,
    IResNet,
    MobileFaceNet,
    freeze_all_but_last,
)

MODELS.register(IResNet, name="iresnet")
MODELS.register(FaceNetLike, name="facenet_like")
MODELS.register(MobileFaceNet, name="mobilefacenet")

__all__ = [
    "MARGIN_HEADS",
    "ArcFaceHead",
    "CosFaceHead",
    "EmbeddingNet",
    "FaceNetLike",
    "IResNet",
    "MarginHead",
    "MobileFaceNet",
    "build_margin_head",
    "class_weights_from_counts",
    "freeze_all_but_last",
]
