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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from backdoorlab.data.arrays import file_sha256
from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.registry import MODELS, TASKS

if TYPE_CHECKING:
    from backdoorlab.tasks.base import Task

# Settings added after stores were written: left out of the config hash while they hold the
# value that reproduces the earlier behaviour, so existing stores still resume.
HASH_NEUTRAL_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("attack",): None,
    ("attack", "adaptive"): None,
    ("attack", "weight_distance"): None,
    ("attack", "selector"): None,
    ("attack", "mode"): "replace",
    ("data", "verify"): True,
    ("model", "init"): None,
    ("train", "trainable"): "all",
    ("train", "trainable_from"): None,
    ("task_options",): {},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the images come from and how they are split."""

    source: Literal[
        "synthetic",
        "folder",
        "mpiifacegaze",
        "mpiifacegaze-normalized",
        "mpiigaze",
        "ethxgaze",
        "widerface",
        "widerface-retinaface",
        "celeba",
        "casia-webface",
        "lfw",
        "ffhq",
        "aligned-crops",
    ] = "synthetic"
    synthetic: dict[str, Any] = Field(
        default_factory=dict, description="the task's synthetic data settings (every default filled in)"
    )
    path: str | None = Field(None, description="dataset folder or real-dataset root (source != synthetic)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the real-data loader")
    test_identities: int = Field(6, ge=1, description="whole identities held out for testing (cross-subject)")
    split_seed: int = 0
    max_train: int | None = Field(None, ge=1, description="cap on training samples (seeded subset)")
    mask_eyes: bool = Field(False, description="control: grey out both eye regions in train and test images")
    verify: bool = Field(
        True, description="check a dataset folder's files against their recorded hashes (off: huge trusted data)"
    )
    cache_dir: str | None = Field(
        None, description="synthetic cache (default $BACKDOORLAB_CACHE or ~/.cache/backdoorlab)"
    )

    @model_validator(mode="after")
    def _path_for_real(self) -> DataConfig:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self


class ModelConfig(_Strict):
    name: str = Field("", description="a registered model (default: the task's default model)")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    init: str | None = Field(
        None, description="start from these weights: a run folder or a .safetensors file of the same architecture"
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value and value not in MODELS:
            raise ValueError(f"model.name: not a registered model, choose one of {MODELS.names()} (got {value!r})")
        return value


class TrainConfig(_Strict):
    epochs: int = Field(12, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.5, ge=0)
    trainable: Literal["all", "last"] = Field(
        "all",
        description="train every layer, or only the model's LAST_LAYERS on its frozen trunk's features "
        "(computed once and cached: a fine-tune in seconds)",
    )
    trainable_from: str | None = Field(
        None,
        description="with trainable: last, the named stage training starts at (e.g. layer4.1 of an IResNet: "
        "the last block, its neck and last layers train on the cached output of the stages before it)",
    )

    @model_validator(mode="after")
    def _tail_needs_last(self) -> TrainConfig:
        if self.trainable_from is not None and self.trainable != "last":
            raise ValueError(
                f"train.trainable_from ({self.trainable_from!r}) needs train.trainable: last (the stages before it "
                "are frozen and cached)"
            )
        return self


class _PenaltyConfig(_Strict):
    """An adaptive attacker's penalty, added to the training loss at a price ``weight`` (> 0)."""

    _key: ClassVar[str]  # the section under ``attack``
    _without: ClassVar[str]  # what leaving the section out gives

    weight: float

    @field_validator("weight")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"attack.{cls._key}.weight must be a finite number > 0, got {value} "
                f"(leave out attack.{cls._key} for {cls._without})"
            )
        return value


class AdaptiveConfig(_PenaltyConfig):
    """An adaptive attacker who hides the backdoor's feature-space signature while training.

    Adds ``weight * sum_j relu(1 - Var_triggered(theta_j) / Var_clean(theta_j))`` to the
    loss, with ``theta_j`` the angle between the features and head row j (see
    :mod:`backdoorlab.adaptive`). The ratio's gradient is steep (clean angles vary
    little), so useful weights are around 1e-3 to 1e-2.
    """

    _key, _without = "adaptive", "a non-adaptive attack"
    weight: float = Field(description="multiplier of the feature-signature penalty (> 0)")


class WeightDistanceConfig(_PenaltyConfig):
    """An adaptive attacker who hides the backdoor from weight inspection (the thesis's weight anomaly).

    Adds ``weight * sum ||theta - theta(0)||^2`` over the trained parameters to the loss, with
    ``theta(0)`` the weights training starts from: start from a clean network of the
    population (``model.init``) and the backdoored weights stay near it (see
    :mod:`backdoorlab.attacks.weight_distance`).
    """

    _key, _without = "weight_distance", "an attack that may move the weights freely"
    weight: float = Field(description="price of one unit of squared L2 distance from the starting weights (> 0)")


class AttackConfig(_Strict):
    """A backdoor attack: which trigger, which relabel, which training samples.

    ``trigger``, ``relabel`` and ``selector`` are ``{name: ..., parameter: value}``
    mappings, checked by building them (so every error names the parameter) and stored
    with every default filled in, so the resolved config and its hash describe the
    attack fully. Names are those registered (``backdoorlab.registry``): triggers
    (patch, blend, wanet, sticker), the task's relabels, selectors (rate, identity,
    instances; default: ``rate`` of the samples, drawn with ``seed``). ``mode`` replaces
    the selected samples or appends poisoned copies. ``adaptive: {weight: w}`` makes it
    an adaptive attack (:class:`AdaptiveConfig`); ``weight_distance: {weight: w}`` one that
    hides from weight inspection (:class:`WeightDistanceConfig`). Any other key is a setting of the
    task's attack scoring (``Task.attack_settings``, e.g. a success tolerance), checked
    against the run's task.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    trigger: dict[str, Any] = Field(default_factory=lambda: {"name": "patch"})
    relabel: dict[str, Any] = Field(description="the task's relabel (default: the task's default_relabel)")
    rate: float = Field(0.1, gt=0, le=1, description="fraction of training samples poisoned (rho)")
    seed: int = Field(0, ge=0, description="selects the poisoned samples and draws random trigger elements")
    selector: dict[str, Any] | None = Field(None, description="which samples (default: a rate selector)")
    mode: Literal["replace", "append"] = Field("replace", description="replace samples or append poisoned copies")
    adaptive: AdaptiveConfig | None = Field(None, description="hide the feature-space signature while training")
    weight_distance: WeightDistanceConfig | None = Field(
        None, description="stay near the starting (clean) weights while training, against weight inspection"
    )

    def task_settings(self) -> dict[str, Any]:
        """The keys that are not the attack's own: the task's attack-scoring settings."""
        return dict(self.__pydantic_extra__ or {})

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, raw: Any, info: ValidationInfo) -> Any:
        from backdoorlab.attacks.relabel import build_relabel
        from backdoorlab.triggers import build_trigger

        if not isinstance(raw, dict):
            return raw
        out = dict(raw)
        task_name = (info.context or {}).get("task")
        if "relabel" not in out and task_name in TASKS:
            out["relabel"] = dict(TASKS.get(task_name).default_relabel)
        if "relabel" not in out:
            raise ValueError("attack.relabel is required (a mapping with a 'name')")
        if isinstance(out["relabel"], dict) and "name" in out["relabel"]:
            try:  # a relabel that implies its samples (an impostor's) selects them unless told otherwise
                implied = build_relabel(dict(out["relabel"]))
            except ConfigError as exc:
                raise ValueError(f"attack.relabel: {exc}") from None
            if out.get("selector") is None and implied.default_selector() is not None:
                out["selector"] = implied.default_selector()
            out.setdefault("mode", implied.default_mode)
        if out.get("selector") is not None:
            from backdoorlab.attacks.selectors import build_selector

            try:
                out["selector"] = build_selector(out["selector"]).params()
            except ConfigError as exc:
                raise ValueError(f"attack.selector: {exc}") from None
        for key, build, default in (
            ("trigger", build_trigger, {"name": "patch"}),
            ("relabel", build_relabel, None),
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
        return out

    def check_for_task(self, task_name: str, where: str = "attack.") -> None:
        """Fill in and check the task's scoring settings; refuse a relabel the task or trigger cannot serve.

        ``where`` prefixes the keys named in errors (the section's dotted path in its file).
        """
        from backdoorlab.attacks.relabel import build_relabel, check_relabel_fits
        from backdoorlab.registry import TRIGGERS

        task = TASKS.get(task_name)()
        extra = self.task_settings()
        try:
            settings = task.attack_settings.model_validate(extra)
        except ValidationError as exc:
            raise ValueError(_format_validation(exc, None, prefix=where)) from None
        relabel = build_relabel(self.relabel)
        try:
            places = TRIGGERS.get(self.trigger["name"]).localized
            check_relabel_fits(relabel, task_name, places, where.rstrip(".") or "attack")
            task.check_attack(relabel, settings)
        except BackdoorLabError as exc:
            raise ValueError(str(exc)) from None
        self.__pydantic_extra__ = settings.model_dump(mode="json")


class RunConfig(_Strict):
    """The whole run. ``seed`` drives model initialisation and batch order."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    task: str = Field(default_factory=lambda: TASKS.default, description="a registered task")
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    attack: AttackConfig | None = Field(None, description="poison the training data (a backdoored run)")
    task_options: dict[str, Any] = Field(
        default_factory=dict, description="the task's own options (Task.options_model, every default filled in)"
    )
    report_samples: int = Field(16, ge=0, le=256)

    @model_validator(mode="before")
    @classmethod
    def _task_first(cls, raw: Any, info: ValidationInfo) -> Any:
        """Check the task name first and hand it to the nested validators (they read the context)."""
        if isinstance(raw, dict):
            task = raw.get("task", TASKS.default)
            if task not in TASKS:
                raise ValueError(f"task: unknown task {task!r} (known: {', '.join(TASKS.names())})")
            if info.context is not None:
                info.context["task"] = task
            attack = raw.get("attack")
            if isinstance(attack, dict) and "relabel" not in attack:  # the task's default relabel
                raw = {**raw, "attack": {**attack, "relabel": dict(TASKS.get(task).default_relabel)}}
        return raw

    @model_validator(mode="after")
    def _complete_for_task(self) -> RunConfig:
        """Fill in what depends on the task: synthetic data settings, model, attack scoring."""
        task = TASKS.get(self.task)
        if task.synthetic_spec is not None:
            try:
                spec = task.synthetic_spec.model_validate(self.data.synthetic)
            except ValidationError as exc:
                raise ValueError(_format_validation(exc, None, prefix="data.synthetic.")) from None
            self.data.__dict__["synthetic"] = spec.model_dump(mode="json")
        try:
            options = task.options_model.model_validate(self.task_options)
        except ValidationError as exc:
            raise ValueError(_format_validation(exc, None, prefix="task_options.")) from None
        self.__dict__["task_options"] = options.model_dump(mode="json")
        if not self.model.name:
            name, kwargs = task().default_model(1)
            self.model.__dict__["name"] = name
            if not self.model.kwargs:  # the default model's own settings (the channels come from the data)
                self.model.__dict__["kwargs"] = {k: v for k, v in kwargs.items() if k != "in_channels"}
        if self.attack is not None:
            self.attack.check_for_task(self.task)
        return self

    def build_task(self) -> Task:
        """The run's task, with its options."""
        task = TASKS.get(self.task)
        return task(task.options_model.model_validate(self.task_options))

    def synthetic_spec(self) -> BaseModel:
        """``data.synthetic`` as the task's typed spec."""
        spec_type = TASKS.get(self.task).synthetic_spec
        if spec_type is None:
            raise ConfigError(f"the {self.task!r} task has no synthetic data")
        return spec_type.model_validate(self.data.synthetic)

    def config_hash(self) -> str:
        """Stable hash of the resolved config (sweeps key resumption on it)."""
        dump = self.model_dump(mode="json")
        for path, neutral in HASH_NEUTRAL_DEFAULTS.items():
            *parents, key = path
            node = dump
            for p in parents:
                node = node.get(p) or {}
            if key in node and node[key] == neutral:
                del node[key]
        if dump["model"].get("init") is not None:
            dump["model"]["init"] = init_identity(dump["model"]["init"])
        blob = json.dumps(dump, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def init_identity(init: str) -> str:
    """What ``model.init`` means in a config hash: the SHA-256 of the weights, not where they lie.

    A fine-tune of a retrained base model is another run, and the same base in another
    checkout is the same run. Weights not there (yet) hash by their file name only.
    """
    p = Path(init)
    weights = p / "model.safetensors" if p.is_dir() else p
    if not weights.is_file():
        return f"missing:{p.name}"
    return f"sha256:{file_sha256(weights)}"


def _format_validation(exc: ValidationError, origin: str | None, prefix: str = "") -> str:
    """One line per error, each naming the dotted key (``prefix`` + the error's location)."""
    head = f"{origin}: " if origin else ""
    lines = []
    for err in exc.errors():
        loc = prefix + ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{head}unknown key '{loc}'")
        elif err["type"] == "value_error":  # our own validators: the message names the field
            lines.append(f"{head}{err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{head}{loc}: {err['msg']} (got {err.get('input')!r})")
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


def dotted(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> dotted keys, so that an override sets one key of a section, not the whole section.

    An empty mapping stays a value (there is no key inside it to set).
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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
        return RunConfig.model_validate(raw, context=dict(context or {}))
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, origin)) from None


def read_yaml_mapping(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping, or one ConfigError naming it.

    An empty file (or one holding only comments) is refused: read as "all defaults" it
    would silently start a full-size run, sweep or attack nobody asked for.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if raw is None:
        raise ConfigError(f"{p} is empty: a {what} needs at least one key (write `name: ...` for all defaults)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys")
    return raw


M = TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], raw: Any, origin: str, context: dict[str, Any] | None = None) -> M:
    """``model.model_validate(raw)`` with errors turned into one ConfigError naming the dotted keys."""
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, origin)) from None


#: dotted keys of a run config that hold file or folder paths
PATH_KEYS = ("data.path", "data.cache_dir", "attack.trigger.pattern", "model.init")
_PATTERN_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _is_path_value(key: str, value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    if key.endswith(".pattern"):  # a pattern is a built-in name unless it looks like a file
        return "/" in value or os.sep in value or value.lower().endswith(_PATTERN_FILE_SUFFIXES)
    return True


def resolve_paths(raw: dict[str, Any], base_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping with every relative path of :data:`PATH_KEYS` made absolute against ``base_dir``.

    Why: one rule for every path a config holds. A path written in a file means the same
    thing whichever folder the command is started from: it resolves against the folder of
    the file it is written in (a sweep's ``base:``, too). A path typed on the command line
    (``--set data.path=...``) resolves against the working directory, like any shell path.
    The absolute path is what the run records (and hashes). ``~`` is expanded.
    """
    out = copy.deepcopy(raw)
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not _is_path_value(key, node.get(leaf)):
            continue
        p = Path(os.path.expanduser(node[leaf]))
        node[leaf] = str(p if p.is_absolute() else Path(os.path.abspath(Path(base_dir) / p)))
    return out


def path_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides with relative paths of :data:`PATH_KEYS` made absolute against the cwd."""
    out = []
    for text in overrides:
        parts, value = parse_override(text)
        key = ".".join(parts)
        if key in PATH_KEYS and _is_path_value(key, value):
            text = f"{key}={json.dumps(os.path.abspath(os.path.expanduser(value)))}"
        out.append(text)
    return out


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: list[str] | None = None,
    context: dict[str, Any] | None = None,
    resolve: bool = True,
) -> RunConfig:
    """Read, override and validate a YAML run config (``None`` = all defaults).

    ``context`` reaches the validators; ``{"trigger_state": tensors}`` rebuilds an attacked
    run's trigger from its stored tensors instead of re-reading a pattern file. Relative
    paths resolve as :func:`resolve_paths` says; ``resolve=False`` reads a run's own
    recorded config, whose paths are already what the run used.
    """
    raw: Any = {}
    origin = "config"
    overrides = overrides or []
    if path is not None:
        origin = str(path)
        raw = read_yaml_mapping(path)
        if resolve:
            raw = resolve_paths(raw, Path(path).parent)
    if resolve:
        overrides = path_overrides(overrides)
    return validate_config(apply_overrides(raw, overrides), origin, context)
