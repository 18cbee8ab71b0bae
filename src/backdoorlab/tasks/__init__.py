"""Tasks: label schema + loss + metrics + default model, one per kind of output."""

from backdoorlab.tasks.base import Task
from backdoorlab.tasks.gaze import GazeTask

TASKS: dict[str, type[Task]] = {"gaze": GazeTask}

__all__ = ["TASKS", "GazeTask", "Task"]
