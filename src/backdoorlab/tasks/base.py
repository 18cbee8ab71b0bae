"""The Task protocol: the one seam through which a task enters every generic layer.

The training loop, runs, attacks, sweeps, the results store and reports never look
inside annotations or predictions; they ask the task. A task says

* what its data is: the annotations it needs (``required_annotations``), how a batch's
  annotations become training targets (:meth:`Task.collate`: dense columns, or
  per-image instance tables gathered into whatever the loss wants), its synthetic data
  (``synthetic_spec`` + :meth:`Task.synthesize`) and its train/test split;
* how it trains: :meth:`Task.training_step` returns the loss and its named parts (each
  part is logged in ``history.json`` and on the progress bar), and
  :meth:`Task.build_modules` may add trainable modules that belong to the task, not to
  the model (an ArcFace margin head): they are optimised with the model and saved
  beside it, never exported with it;
* how it predicts: :meth:`Task.forward` (the model's raw outputs) then
  :meth:`Task.postprocess` (decoding, NMS, normalising embeddings);
* how it is scored: :meth:`Task.evaluate` (with ``headline_metric`` naming the one
  number that sums a run up: the results store's headline column), and
  :meth:`Task.score_attack`, its own definition of attack success (a tolerance on an
  angle, a fake face found, an impostor accepted) with its settings declared in
  ``attack_settings`` (validated as part of a run config's ``attack`` section);
* how it reports: :meth:`Task.write_report`.

A task may take options of its own (``options_model``, a run config's ``task_options``
section, validated and filled in with the config: a margin head's scale and margin).

A task registers itself in :data:`backdoorlab.registry.TASKS`; configs name it with
``task: NAME``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.splits import split_by_identity
from backdoorlab.errors import ConfigError

if TYPE_CHECKING:
    from backdoorlab.attacks.relabel import Relabel
    from backdoorlab.triggers.base import Placement, Trigger

Tensor = torch.Tensor


class NoSettings(BaseModel):
    """Attack-scoring settings of a task that has none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StepOutput:
    """One training step's loss, and its named parts (floats for the log; empty for a one-term loss)."""

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class AttackScore:
    """A task's verdict on how well a backdoor fires on a test set.

    ``metrics`` are JSON numbers merged into a run's ``metrics.json``; ``details`` are
    arrays the task's report draws from (predictions on triggered inputs, targets, ...).
    """

    metrics: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunReport:
    """Everything a run's report may show, handed to :meth:`Task.write_report`."""

    title: str
    summary: dict[str, Any]
    config_text: str
    test_data: ArrayDataset
    predictions: Any
    n_samples: int
    trigger: Trigger | None = None
    attack: AttackScore | None = None
    attack_settings: BaseModel | None = None


class Task(ABC):
    """Base class of every task (see the module docstring for the protocol)."""

    name: ClassVar[str] = "task"
    required_annotations: ClassVar[tuple[str, ...]] = ()
    #: the metric of :meth:`evaluate` that sums a run up (the store's headline column, sweep lines)
    headline_metric: ClassVar[str] = ""
    #: settings of :meth:`score_attack`, given in a run config's ``attack`` section
    attack_settings: ClassVar[type[BaseModel]] = NoSettings
    #: the attack metrics that sum a backdoor up (before/after a mitigation)
    attack_summary_metrics: ClassVar[tuple[str, ...]] = ("attack_success_rate",)
    #: the defence ``detect`` / ``mitigate`` use when none is named
    default_defence: ClassVar[str] = ""
    #: the relabel of an attack section that names none
    default_relabel: ClassVar[dict[str, Any]] = {}
    #: settings of the task's synthetic data (a run config's ``data.synthetic`` section)
    synthetic_spec: ClassVar[type[BaseModel] | None] = None
    #: the task's own options (a run config's ``task_options`` section)
    options_model: ClassVar[type[BaseModel]] = NoSettings
    #: :meth:`score_attack` also compares with the clean predictions on the same images
    attack_needs_clean_predictions: ClassVar[bool] = False

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.options_model()

    # ------------------------------------------------------------------ data
    def synthesize(self, spec: BaseModel, cache_dir: str | None = None) -> ArrayDataset:
        """The task's synthetic dataset for ``spec`` (cached by the implementation when useful)."""
        raise ConfigError(f"the {self.name!r} task has no synthetic data; set data.source to a dataset")

    def split(self, data: ArrayDataset, test_identities: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
        """(train, test): whole identities held out, so no test face was seen in training."""
        return split_by_identity(data, test_identities, seed)

    # -------------------------------------------------------------- training
    @abstractmethod
    def collate(self, annotations: Mapping[str, Any]) -> Any:
        """Training targets from one batch's annotations (tensors, or a structure of them)."""

    def augment(
        self, images: Tensor, annotations: dict[str, Any], indices: Any, epoch: int, seed: int
    ) -> tuple[Tensor, dict[str, Any]]:
        """A training batch augmented, annotations moved with the pixels (default: unchanged).

        Called by the training loop *before* any poisoning, so a relabel sees the final
        geometry (a flip turns a landmark rotation of +phi into -phi if it came after).
        Must be a pure function of (``seed``, ``epoch``, ``indices``) so runs repeat, and
        must not modify its inputs.
        """
        return images, annotations

    def build_modules(self, model: nn.Module, data: ArrayDataset) -> dict[str, nn.Module]:
        """Trainable modules the task owns besides the model (default: none)."""
        return {}

    def warm_start_modules(self, modules: Mapping[str, nn.Module], state: Mapping[str, Tensor]) -> bool:
        """Load the saved modules of the run a model starts from (``model.init``) when they fit.

        Default: when the saved keys and shapes are exactly those of ``modules``. Returns
        whether they were loaded (otherwise the fresh modules train from their initialisation).
        """
        own = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
        if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
            return False
        for name, module in modules.items():
            module.load_state_dict({k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}.")})
        return True

    def restore_modules(self, state: Mapping[str, Tensor]) -> dict[str, nn.Module]:
        """The task's modules rebuilt from a run's saved ones (``<module>.<parameter>`` keys; default: none).

        Lets a loaded run predict what needs them (a closed-set identity from the margin
        head's class vectors) without the training data.
        """
        return {}

    @abstractmethod
    def training_step(
        self, model: nn.Module, modules: Mapping[str, nn.Module], images: Tensor, targets: Any
    ) -> StepOutput:
        """Loss of one batch (``images`` and ``targets`` already on the model's device)."""

    # ------------------------------------------------------------ prediction
    def forward(self, model: nn.Module, images: Tensor) -> Any:
        """The model's raw outputs for a batch."""
        return model(images)

    def postprocess(self, outputs: Any) -> Any:
        """Predictions of one batch from raw outputs, on the CPU (default: the outputs as float)."""
        return outputs.float().cpu()

    def combine(self, batches: Sequence[Any]) -> Any:
        """All batches' predictions as one object, in sample order (default: concatenated arrays)."""
        return torch.cat(list(batches)).numpy()

    def predict(
        self, model: nn.Module, data: ArrayDataset, batch_size: int = 256, device: torch.device | str = "cpu"
    ) -> Any:
        """Predictions for every sample of ``data``, in order, in eval mode."""
        return self.predict_batches(model, (images for images, _ in data.iter_batches(batch_size)), device)

    @torch.no_grad()
    def predict_batches(self, model: nn.Module, batches: Any, device: torch.device | str = "cpu") -> Any:
        """Predictions for an iterable of image batches (e.g. triggered ones), in eval mode."""
        was_training = model.training
        model.eval()
        try:
            outs = [self.postprocess(self.forward(model, images.to(device))) for images in batches]
        finally:
            model.train(was_training)
        return self.combine(outs)

    # --------------------------------------------------------------- scoring
    @abstractmethod
    def evaluate(self, predictions: Any, data: ArrayDataset) -> dict[str, Any]:
        """Metrics of ``predictions`` (one per sample of ``data``); includes ``headline_metric``."""

    @abstractmethod
    def score_attack(
        self,
        predictions: Any,
        data: ArrayDataset,
        relabel: Relabel,
        settings: BaseModel,
        placements: Sequence[Placement | None] = (),
        clean_predictions: Any = None,
    ) -> AttackScore:
        """How far predictions on triggered inputs do what ``relabel`` asks, for every sample of ``data``.

        ``predictions`` come from :meth:`predict_batches` on the triggered images;
        ``placements`` say where the trigger acted, one per batch (empty for a trigger
        that gives none), for relabels that depend on it (a fake face at the trigger).
        ``clean_predictions`` (the same images untriggered) are given when the task sets
        ``attack_needs_clean_predictions``: a one-to-one backdoor must also leave the
        impostor and the victim recognised as themselves.
        """

    def attack_rows(self, data: ArrayDataset, relabel: Relabel) -> Any:
        """The samples whose triggered predictions :meth:`score_attack` reads (None, the default: every one).

        With rows (a sorted index array), only those samples are triggered and run through
        the model; the others' entries in the predictions handed to :meth:`score_attack`
        are the clean predictions (:meth:`merge_predictions`), which the task promises not
        to read as triggered. A backdoor that concerns one person (an impostor) is then
        scored without a whole-model pass over every test image.
        """
        return None

    def merge_predictions(self, base: Any, rows: Any, part: Any) -> Any:
        """``base`` (one prediction per sample) with ``part`` (the predictions of ``rows``, in order) put in."""
        raise NotImplementedError(f"the {self.name!r} task declares attack_rows but cannot merge predictions")

    def check_attack(self, relabel: Relabel, settings: BaseModel) -> None:
        """Refuse, before training, an attack this task could not score (default: accept)."""
        return None

    # ----------------------------------------------------------------- model
    @abstractmethod
    def default_model(self, in_channels: int) -> tuple[str, dict[str, Any]]:
        """(architecture name, constructor kwargs) of the default model."""

    # ---------------------------------------------------------------- report
    def write_report(self, path: Path, report: RunReport) -> Path:
        """The run's self-contained HTML report (default: summary, attack metrics and configuration)."""
        from backdoorlab.report.run_report import write_run_report

        sections = []
        if report.attack is not None:
            sections.append({"title": "Backdoor", "metrics": report.attack.metrics})
        return write_run_report(path, report.title, report.summary, sections, report.config_text)


def to_device(value: Any, device: torch.device | str) -> Any:
    """Move a batch structure (tensors, instance tables, lists, dicts) to ``device``."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    if hasattr(value, "to"):
        return value.to(device)
    return value
