"""A finished run, loaded once: its config, task, model, attack and data splits as one object.

Why an object: ``eval``, ``detect``, ``mitigate``, the zoo benches and reports all ask the
same questions of a run folder (which task? which trigger, with the tensors it was
trained with? which test split? which clean images does the defender hold?). Each
answer is read and validated once, on first use, and kept: a mitigation that scores
before and after, on the run's own trigger, does not re-read the config five times or
rebuild its trigger each time.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from backdoorlab.attacks.poisoning import Poisoning
from backdoorlab.attacks.relabel import Relabel, build_relabel
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError
from backdoorlab.experiments.attack import AttackEvaluation, attack_settings, build_poisoning, evaluate_attack
from backdoorlab.experiments.attack import load_run_config as _load_run_config
from backdoorlab.experiments.config import AttackConfig, RunConfig
from backdoorlab.experiments.run import load_data
from backdoorlab.models.checkpoint import TASK_MODULES_FILE, load_checkpoint, read_card, read_state_dict
from backdoorlab.tasks.base import Task
from backdoorlab.triggers import Trigger, build_trigger

DEFENDER_SPLIT_SALT = 11  # the permutation of the test split the defender's clean set is cut from


class Run:
    """A run folder (``config.yaml``, ``model.safetensors``, ``model.json``, ...) opened for reading.

    Args:
        folder: the run folder (or a mitigated copy of one, which carries the same files).
        unsafe_load: read non-safetensors weights (trusted files only).
    """

    def __init__(self, folder: str | Path, unsafe_load: bool = False) -> None:
        self.folder = Path(folder)
        self.unsafe_load = unsafe_load
        self._defender: dict[tuple[int, int], tuple[ArrayDataset, ArrayDataset]] = {}
        if not (self.folder / "config.yaml").is_file():
            raise ConfigError(f"{self.folder} has no config.yaml: not a run folder")

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    # ------------------------------------------------------------ what it is
    @cached_property
    def _config_and_state(self) -> tuple[RunConfig, dict[str, torch.Tensor] | None]:
        return _load_run_config(self.folder)

    @property
    def config(self) -> RunConfig:
        """The resolved config (an attacked run's trigger rebuilt from its stored tensors)."""
        return self._config_and_state[0]

    @cached_property
    def task(self) -> Task:
        """The run's task, with the modules it trained beside the model restored (a margin head)."""
        task = self.config.build_task()
        saved = self.folder / TASK_MODULES_FILE
        if saved.is_file():
            task.restore_modules(read_state_dict(saved))
        return task

    @cached_property
    def card(self) -> dict[str, Any]:
        return read_card(self.folder)

    @property
    def model(self) -> nn.Module:
        """A fresh copy of the trained model each time (defences change the models they are given)."""
        return load_checkpoint(self.folder, unsafe=self.unsafe_load)[0]

    # ---------------------------------------------------------------- attack
    @property
    def attack(self) -> AttackConfig | None:
        return self.config.attack

    def require_attack(self) -> AttackConfig:
        if self.attack is None:
            raise ConfigError(f"run {self.folder.name} is not an attacked run (its config has no 'attack' section)")
        return self.attack

    @cached_property
    def trigger(self) -> Trigger:
        """The trigger the model was trained with (its stored tensors, not a re-read pattern file)."""
        return build_trigger(self.require_attack().trigger, self._config_and_state[1])

    @cached_property
    def relabel(self) -> Relabel:
        return build_relabel(self.require_attack().relabel)

    @cached_property
    def poisoning(self) -> Poisoning:
        return build_poisoning(self.require_attack())

    @cached_property
    def attack_settings(self) -> BaseModel:
        """The task's attack-scoring settings of this run's attack."""
        return attack_settings(self.require_attack(), self.task)

    # ------------------------------------------------------------------ data
    @cached_property
    def splits(self) -> tuple[ArrayDataset, ArrayDataset]:
        """(train, test) as the run was trained and tested (memory-mapped where cached)."""
        return load_data(self.config)

    @property
    def test_data(self) -> ArrayDataset:
        return self.splits[1]

    def defender_split(self, n_clean: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
        """(defender's clean set, held-out scoring set) cut from the test split.

        The clean set is ``n_clean`` test images (identities never seen in training)
        picked by a seeded permutation; the rest scores a repaired model, so the images a
        mitigator tuned on never score it.
        """
        key = (n_clean, seed)
        if key not in self._defender:
            test = self.test_data
            if n_clean >= len(test):
                raise ConfigError(
                    f"--n-clean {n_clean} leaves no held-out images: the run's test split has {len(test)} images"
                )
            order = np.random.default_rng([seed, DEFENDER_SPLIT_SALT]).permutation(len(test))
            self._defender[key] = (test.subset(np.sort(order[:n_clean])), test.subset(np.sort(order[n_clean:])))
        return self._defender[key]

    # --------------------------------------------------------------- scoring
    def score_attack(
        self, model: nn.Module, data: ArrayDataset, device: torch.device | str = "cpu"
    ) -> AttackEvaluation:
        """The run's own backdoor scored on ``model`` (e.g. a repaired copy) over ``data``."""
        return evaluate_attack(
            model.to(device), self.task, data, self.trigger, self.relabel, self.attack_settings, device
        )
