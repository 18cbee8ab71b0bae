"""Run-time monitors for face detectors against the Face Generation (FGA) and Landmark Shift (LSA) attacks.

One module per method, each a :class:`~backdoorlab.defenses.base.RuntimeMonitor` that wraps
a deployed detector and scores the images it sees (higher = more likely triggered; an
image scores as its most suspicious detected face):

* ``geometry`` (:class:`GeometryMonitor`): landmarks against their box, the ArcFace
  template, and the face's roll read from the pixels;
* ``transform`` (:class:`TransformMonitor`): agreement of the landmarks and faces across a
  mirrored and slightly turned copy of the image;
* ``aux_landmarker`` (:class:`AuxLandmarkerMonitor`): agreement with a second landmarker
  (a small CNN trained here, or dlib's predictor);
* ``flicker`` (:class:`FlickerMonitor`): temporal jitter of the landmarks relative to the box
  across the frames of a clip.

See docs/defences/face_monitors.md and docs/defences/face_model_level.md for what each
measures and how well it did.
"""

from backdoorlab.defenses.face_monitors.aux_landmarker import AuxLandmarkerMonitor
from backdoorlab.defenses.face_monitors.common import FaceMonitor, FaceScores
from backdoorlab.defenses.face_monitors.flicker import FlickerMonitor
from backdoorlab.defenses.face_monitors.geometry import GeometryMonitor
from backdoorlab.defenses.face_monitors.transform import TransformMonitor

__all__ = ["AuxLandmarkerMonitor", "FaceMonitor", "FaceScores", "FlickerMonitor", "GeometryMonitor", "TransformMonitor"]
