"""Run configuration: one validated YAML file describes one run completely.

Why pydantic with ``extra="forbid"``: a misspelt key that is silently ignored is the
most expensive kind of bug in an experiment (hours of training with a default you
did not want). Every unknown or ill-typed key is an error naming its dotted path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from backdoorlab.data.synthetic.dataset import SyntheticGazeSpec
from backdoorlab.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the images come from and how they are split."""

    source: Literal["synthetic", "folder", "mpiifacegaze", "mpiifacegaze-normalized", "mpiigaze", "ethxgaze"] = (
        "synthetic"
    )
    synthetic: SyntheticGazeSpec = Field(default_factory=SyntheticGazeSpec)
    path: str | None = Field(None, description="dataset folder or real-dataset root (source != synthetic)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the real-data loader")
    test_identities: int = Field(6, ge=1, description="whole identities held out for testing (cross-subject)")
    split_seed: int = 0
    max_train: int | None = Field(None, ge=1, description="cap on training samples (seeded subset)")
    mask_eyes: bool = Field(False, description="control: grey out both eye regions in train and test images")
    cache_dir: str | None = Field(
        None, description="synthetic cache (default $BACKDOORLAB_CACHE or ~/.cache/backdoorlab)"
    )

    @model_validator(mode="after")
    def _path_for_real(self) -> DataConfig:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self


class ModelConfig(_Strict):
    name: Literal["gaze_cnn", "resnet18"] = "gaze_cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Strict):
    epochs: int = Field(12, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.5, ge=0)


class AdaptiveConfig(_Strict):
    """An adaptive attacker who hides the backdoor's feature-space signature while training.

    Adds ``weight * sum_j relu(1 - Var_triggered(theta_j) / Var_clean(theta_j))`` to the
    loss, with ``theta_j`` the angle between the features and head row j (see
    :mod:`backdoorlab.adaptive`). The ratio's gradient is steep (clean angles vary
    little), so useful weights are around 1e-3 to 1e-2.
    """

    weight: float = Field(description="multiplier of the feature-signature penalty (> 0)")

    @field_validator("weight")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"attack.adaptive.weight must be a finite number > 0, got {value} "
                "(leave out attack.adaptive for a non-adaptive attack)"
            )
        return value


class AttackConfig(_Strict):
    """A backdoor attack: which trigger, which relabel, how many training samples.

    ``trigger`` and ``relabel`` are ``{name: ..., parameter: value}`` mappings, checked
    by building them (so every error names the parameter) and stored with every
    default filled in, so the resolved config and its hash describe the attack fully.
    Trigger names: patch, blend, wanet, sticker; relabels: target, shift (degrees).
    ``adaptive: {weight: w}`` makes it an adaptive attack (:class:`AdaptiveConfig`).
    """

    trigger: dict[str, Any] = Field(default_factory=lambda: {"name": "patch"})
    relabel: dict[str, Any] = Field(default_factory=lambda: {"name": "target", "target_deg": [0.0, 0.0]})
    rate: float = Field(0.1, gt=0, le=1, description="fraction of training samples poisoned (rho)")
    seed: int = Field(0, ge=0, description="selects the poisoned samples and draws random trigger elements")
    asr_tolerance_deg: float = Field(5.0, gt=0, le=90, description="attack success = within this of the target")
    adaptive: AdaptiveConfig | None = Field(None, description="hide the feature-space signature while training")

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, raw: Any, info: ValidationInfo) -> Any:
        from backdoorlab.relabel import build_relabel
        from backdoorlab.triggers import build_trigger

        if not isinstance(raw, dict):
            return raw
        out = dict(raw)
        for key, build, default in (
            ("trigger", build_trigger, {"name": "patch"}),
            ("relabel", build_relabel, {"name": "target"}),
        ):
            spec = out.get(key, default)
            if not isinstance(spec, dict) or "name" not in spec:
                raise ValueError(f"attack.{key} must be a mapping with a 'name', got {spec!r}")
            spec = dict(spec)
            if key == "trigger" and "seed" not in spec:
                spec["seed"] = out.get("seed", 0)  # one attack seed unless the trigger sets its own
            try:
                if key == "trigger":  # a run's stored tensors (a pattern file's pixels) replace the file
                    out[key] = build_trigger(spec, (info.context or {}).get("trigger_state")).params()
                else:
                    out[key] = build(spec).params()
            except ConfigError as exc:
                raise ValueError(f"attack.{key}: {exc}") from None
        shift = out["relabel"].get("shift_deg")
        tol = out.get("asr_tolerance_deg", 5.0)
        if shift is not None and isinstance(tol, int | float) and math.hypot(*shift) <= tol:
            raise ValueError(
                f"attack.relabel.shift_deg {shift} moves the gaze by no more than asr_tolerance_deg={tol}: "
                "every sample would already count as a success"
            )
        return out


class RunConfig(_Strict):
    """The whole run. ``seed`` drives model initialisation and batch order."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    task: Literal["gaze"] = "gaze"
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    attack: AttackConfig | None = Field(None, description="poison the training data (a backdoored run)")
    report_samples: int = Field(16, ge=0, le=256)

    def config_hash(self) -> str:
        """Stable hash of the resolved config (sweeps key resumption on it)."""
        dump = self.model_dump(mode="json")
        if dump.get("attack") is None:  # clean runs keep the hashes they had before attacks existed
            dump.pop("attack", None)
        elif dump["attack"].get("adaptive") is None:  # and non-adaptive attacks theirs
            dump["attack"].pop("adaptive", None)
        blob = json.dumps(dump, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_validation(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key '{loc}'")
        elif err["type"] == "value_error":  # our own validators: the message names the field
            lines.append(f"{origin}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{origin}: {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{p}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def validate_config(raw: Any, origin: str = "config", context: dict[str, Any] | None = None) -> RunConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw, context=context)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, origin)) from None


def read_yaml_mapping(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file = ``{}``), or one ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys")
    return raw


M = TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], raw: Any, origin: str) -> M:
    """``model.model_validate(raw)`` with errors turned into one ConfigError naming the dotted keys."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, origin)) from None


def load_config(
    path: str | os.PathLike[str] | None, overrides: list[str] | None = None, context: dict[str, Any] | None = None
) -> RunConfig:
    """Read, override and validate a YAML run config (``None`` = all defaults).

    ``context`` reaches the validators; ``{"trigger_state": tensors}`` rebuilds an attacked
    run's trigger from its stored tensors instead of re-reading a pattern file.
    """
    raw: Any = {}
    origin = "config"
    if path is not None:
        origin = str(path)
        raw = read_yaml_mapping(path)
    return validate_config(apply_overrides(raw, overrides or []), origin, context)
