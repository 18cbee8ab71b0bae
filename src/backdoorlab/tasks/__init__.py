"""Tasks: label schema + loss + metrics + default model, one per kind of output."""

from backdoorlab.registry import TASKS
from backdoorlab.tasks.base import Task
from backdoorlab.tasks.gaze import GazeTask

TASKS.register(GazeTask)

__all__ = ["TASKS", "GazeTask", "Task"]
