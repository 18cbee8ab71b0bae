"""The face-detection task: RetinaFace written here (model, anchors, matching and loss,
post-processing), the FGA and LSA relabels, and the task (registered on import).

See docs/tasks/face_detection.md and docs/retinaface.md.
"""

from backdoorlab.registry import MODELS, RELABELS, TASKS
from backdoorlab.tasks.face_detection.model import build_retinaface
from backdoorlab.tasks.face_detection.relabels import FakeFace, LandmarkRotation
from backdoorlab.tasks.face_detection.task import FaceDetectionAttackSettings, FaceDetectionTask

TASKS.register(FaceDetectionTask)
MODELS.register(build_retinaface, name="retinaface")
RELABELS.register(FakeFace)
RELABELS.register(LandmarkRotation)

__all__ = ["FaceDetectionAttackSettings", "FaceDetectionTask", "FakeFace", "LandmarkRotation", "build_retinaface"]
