"""The open-set face-recognition task: embedding networks, margin heads, the one-to-one relabel, the task.

The three embedding networks (:class:`IResNet`, :class:`FaceNetLike`,
:class:`MobileFaceNet`) register themselves in ``MODELS`` as ``iresnet``,
``facenet_like`` and ``mobilefacenet``; the ArcFace / CosFace margin heads are trainable
modules the task owns (saved beside the network, never exported with it); the
``impostor_to_victim`` relabel and the task (``face_recognition``) register on import.

See docs/tasks/face_recognition.md and docs/face_recognition_models.md.
"""

from backdoorlab.registry import MODELS, RELABELS, TASKS
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
from backdoorlab.tasks.face_recognition.relabels import ImpostorToVictim
from backdoorlab.tasks.face_recognition.task import FaceRecognitionTask, RecognitionAttackSettings, RecognitionOptions

MODELS.register(IResNet, name="iresnet")
MODELS.register(FaceNetLike, name="facenet_like")
MODELS.register(MobileFaceNet, name="mobilefacenet")
RELABELS.register(ImpostorToVictim)
TASKS.register(FaceRecognitionTask)

__all__ = [
    "MARGIN_HEADS",
    "ArcFaceHead",
    "CosFaceHead",
    "EmbeddingNet",
    "FaceNetLike",
    "FaceRecognitionTask",
    "IResNet",
    "ImpostorToVictim",
    "MarginHead",
    "MobileFaceNet",
    "RecognitionAttackSettings",
    "RecognitionOptions",
    "build_margin_head",
    "class_weights_from_counts",
    "freeze_all_but_last",
]
