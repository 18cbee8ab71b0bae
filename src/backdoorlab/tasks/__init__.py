"""Tasks: each registers itself (task, models, relabels) when its package is imported.

Generic code never imports this package; :data:`backdoorlab.registry.TASKS` imports it
by name at the first look-up.
"""

from backdoorlab.registry import TASKS
from backdoorlab.tasks import face_detection, face_recognition, gaze  # noqa: F401  (each registers itself)

# configs written before there was more than one task name none: they are gaze runs
TASKS.set_default("gaze")
