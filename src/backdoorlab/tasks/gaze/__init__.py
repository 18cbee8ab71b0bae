"""The gaze task: pitch/yaw regression, its models and relabels (registered on import)."""

from backdoorlab.registry import MODELS, TASKS
from backdoorlab.tasks.gaze.gaze_cnn import GazeCNN
from backdoorlab.tasks.gaze.relabels import FixedGazeTarget, GazeShift
from backdoorlab.tasks.gaze.resnet import ResNet18Gaze
from backdoorlab.tasks.gaze.task import GazeAttackSettings, GazeTask

TASKS.register(GazeTask)
MODELS.register(GazeCNN, name="gaze_cnn")
MODELS.register(ResNet18Gaze, name="resnet18")

__all__ = ["FixedGazeTarget", "GazeAttackSettings", "GazeCNN", "GazeShift", "GazeTask", "ResNet18Gaze"]
