"""What a defence needs, declared once per class and checked before it runs.

Why a declaration and not checks scattered through each method: the runner
(``backdoorlab detect``, a zoo, the guard service) must know *before* loading
references or spending minutes of optimisation whether a defence can run on what it
has (a gaze-only method on a detection model, a population method without reference
models, a fine-tuning without labels), and refuse with one error that names the
defence and the missing piece. Each defence states ``needs = Needs(...)``; the same
declaration drives the checks inside ``inspect``/``repair``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.defenses._inputs import check_feature_head
from backdoorlab.errors import BackdoorLabError, DatasetError

if TYPE_CHECKING:
    from backdoorlab.tasks.base import Task


@dataclass(frozen=True)
class Needs:
    """What a defence needs from its caller.

    Attributes:
        clean_data: a small clean dataset (the defender's).
        labels: the clean data carries the task's annotations (``task.required_annotations``):
            defences that fine-tune need them, detectors that only look at outputs do not.
        references: models known to be clean (population detectors, calibration).
        feature_head: the model honours the ``features(x)`` + linear ``head`` contract.
        tasks: the task names the defence works on; None = any task.
    """

    clean_data: bool = True
    labels: bool = False
    references: bool = False
    feature_head: bool = False
    tasks: tuple[str, ...] | None = None

    def check(
        self,
        who: str,
        *,
        task: Task | None = None,
        model: nn.Module | None = None,
        clean_data: ArrayDataset | None = None,
        references: Sequence[object] | None = None,
        min_clean: int = 1,
    ) -> None:
        """Raise one error naming ``who`` and what is missing, cheapest check first.

        Only what is handed in is checked (a detector's ``inspect`` does not know the
        task; the runner that does checks it). ``model`` is not changed.
        """
        if self.tasks is not None and task is not None and task.name not in self.tasks:
            raise BackdoorLabError(
                f"{who} works on {' or '.join(self.tasks)} models only; this model's task is {task.name!r}"
            )
        if self.references and references is not None and not references:
            raise BackdoorLabError(f"{who} needs reference models known to be clean; got none")
        if self.clean_data and clean_data is not None:
            require_clean_samples(clean_data, min_clean, who)
            if self.labels:
                if task is None:
                    raise BackdoorLabError(f"{who} needs the model's task, to know which labels it trains on")
                try:
                    clean_data.require(*task.required_annotations)
                except DatasetError as exc:
                    raise DatasetError(f"{who}: {exc}") from None
            if self.feature_head and model is not None:
                check_feature_head(model, clean_data, who)


def require_clean_samples(data: ArrayDataset, minimum: int, who: str) -> None:
    """Refuse a clean set too small for a defence to mean anything."""
    if len(data) < minimum:
        raise BackdoorLabError(f"{who} needs at least {minimum} clean samples; got {len(data)}")
