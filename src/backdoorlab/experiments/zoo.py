"""A zoo: a population of complete runs, some calibrating a defence, the others judged by it.

A detector's score means nothing on its own: it becomes a verdict against a threshold,
and the threshold must come from models known to be clean that are *not* the ones it is
then judged on. So a zoo splits its runs into **references** (clean models with a
reference seed; they only calibrate) and **evaluation models** (every other clean model
and every backdoored one). Backdoored models are grouped by how they were attacked,
because a detector of fixed-target backdoors cannot be faulted for missing a backdoor
the model never learned (attack success rate below :attr:`ZooRules.learned_asr`) or
one whose target moves with the input; those are reported in groups of their own.

Everything comes from a :class:`ResultsStore` through its API: the runs, and the
verdicts and repairs kept there, keyed by the defence's settings, so a bench over a
zoo resumes from what it already concluded (see :func:`settings_match`). The zoo never
names a task: what a task estimates about a backdoor (a target output, a box) travels as
an opaque ``estimates`` dict, and the only task-specific number it reports, how far a
detector's estimate lies from the real target, is computed by a function the caller
hands in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backdoorlab.defenses.base import calibrated_threshold
from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.folder_seal import checked_seal
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.metrics.detection import accuracy_at, auroc, tpr_at_fpr

CLEAN = "clean"  # the attack name of a model trained without one
OVERALL = "overall"  # every backdoored evaluation model
HEADLINE = "overall, fixed target, learned, not adaptive"  # the backdoors a target-reversing detector is for


@dataclass(frozen=True)
class ZooRules:
    """How a zoo is split and judged; the defaults are those every committed bench result used."""

    #: clean models with these seeds calibrate the threshold and are never scored
    reference_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    #: a backdoor with a lower attack success rate was not learned (grouped apart)
    learned_asr: float = 0.5
    #: the relabel of fixed-target backdoors; any other relabel is grouped apart
    fixed_relabel: str = "target"
    #: at most this fraction of the references may be flagged by the calibrated threshold
    max_false_alarm: float = 0.1

    def is_reference(self, model: ZooModel) -> bool:
        """A clean model with a reference seed: it calibrates and is never scored."""
        return model.clean and model.seed in self.reference_seeds


@dataclass(frozen=True)
class ZooModel:
    """One complete run of the zoo, as far as judging a defence needs to know it."""

    run_id: str
    run_dir: str
    seed: int
    attack: str  # the trigger's name, or CLEAN
    relabel: str | None = None
    relabel_settings: Mapping[str, Any] = field(default_factory=dict)  # the task's relabel config, opaque
    adaptive: bool = False
    attack_success_rate: float | None = None
    train_seconds: float | None = None

    @property
    def clean(self) -> bool:
        return self.attack == CLEAN

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ZooModel:
        """The model of a results-store row (``ResultsStore.get`` / ``list``)."""
        cfg, metrics = row["config"], row["metrics"]
        if not isinstance(cfg.get("seed"), int):
            raise BackdoorLabError(f"run {row['run_id']} ({row['run_dir']}): its config has no integer 'seed'")
        attack = cfg.get("attack") or {}
        relabel = attack.get("relabel") or {}
        return cls(
            run_id=row["run_id"],
            run_dir=row["run_dir"],
            seed=cfg["seed"],
            attack=attack["trigger"]["name"] if attack else CLEAN,
            relabel=relabel.get("name"),
            relabel_settings=relabel,
            adaptive=bool(attack.get("adaptive")),
            attack_success_rate=metrics.get("attack_success_rate"),
            train_seconds=metrics.get("train_seconds"),
        )


@dataclass(frozen=True)
class ZooVerdict:
    """What one detector concluded about one model (its own threshold, if any, is not the zoo's)."""

    score: float
    seconds: float | None = None
    estimates: Mapping[str, Any] = field(default_factory=dict)  # the task's numbers, opaque
    threshold: float | None = None
    backdoored: bool | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ZooVerdict:
        """A verdict from a ``ResultsStore.verdicts`` record."""
        keys = ("score", "seconds", "estimates", "threshold", "backdoored", "settings", "details")
        return cls(**{k: record[k] for k in keys})


#: how far a detector's estimate lies from the model's real backdoor (None: not comparable)
TargetError = Callable[[ZooModel, ZooVerdict], float | None]


@dataclass(frozen=True)
class GroupMetrics:
    """A detector on the clean evaluation models against one group of backdoored models."""

    n_clean: int
    n_backdoored: int
    auroc: float
    tpr_at_max_false_alarm: float
    accuracy: float  # at the calibrated threshold
    target_error_mean: float | None  # over detected fixed-target models with an estimate
    n_detected_with_target: int


@dataclass(frozen=True)
class ScoredModel:
    model: ZooModel
    verdict: ZooVerdict
    reference: bool
    group: str  # CLEAN for clean models, else the attack group


@dataclass(frozen=True)
class ZooEvaluation:
    """One detector over a zoo: calibrated threshold, metrics per attack group, every model's score."""

    threshold: float
    reference_scores: list[float]
    groups: dict[str, GroupMetrics]
    seconds_mean: float | None  # detection seconds per evaluation model
    seconds_over_train_mean: float | None
    models: list[ScoredModel]


class Zoo:
    """A population of runs: references vs evaluation models, attack groups, and a detector's metrics."""

    def __init__(
        self,
        models: Sequence[ZooModel],
        rules: ZooRules | None = None,
        stores: Mapping[str, ResultsStore] | None = None,
    ) -> None:
        """``stores`` maps run ids to the store holding them (where their verdicts are kept)."""
        self.models = list(models)
        self.rules = rules or ZooRules()
        self._stores = dict(stores or {})

    @classmethod
    def open(
        cls,
        store: str | os.PathLike[str],
        rules: ZooRules | None = None,
        reference_store: str | os.PathLike[str] | None = None,
    ) -> Zoo:
        """The complete runs of a results store, in the order they were started.

        With ``reference_store``, the references come from that other zoo (a held-out zoo
        has none of its own) and every model of ``store`` is evaluated; a clean model of
        ``store`` with a reference seed would then silently calibrate instead of being
        scored, so it is refused.
        """
        rules = rules or ZooRules()
        own = cls._read(store)
        if reference_store is None:
            return cls([m for m, _ in own], rules, {m.run_id: s for m, s in own})
        if clash := sorted(m.seed for m, _ in own if rules.is_reference(m)):
            raise BackdoorLabError(
                f"clean models of {store} have reference seeds {clash}: they would calibrate, not be scored"
            )
        refs = [(m, s) for m, s in cls._read(reference_store) if rules.is_reference(m)]
        if not refs:
            seeds = ", ".join(map(str, rules.reference_seeds))
            raise BackdoorLabError(f"{reference_store} has no complete clean model with a reference seed ({seeds})")
        both = refs + own
        return cls([m for m, _ in both], rules, {m.run_id: s for m, s in both})

    @staticmethod
    def _read(path: str | os.PathLike[str]) -> list[tuple[ZooModel, ResultsStore]]:
        if not Path(path).is_file():
            raise BackdoorLabError(f"results store {path} not found: build that zoo first")
        store = ResultsStore(path)
        return [(ZooModel.from_row(r), store) for r in store.list(status="complete", limit=None, oldest_first=True)]

    # ------------------------------------------------------------------ roles and groups

    def is_reference(self, model: ZooModel) -> bool:
        return self.rules.is_reference(model)

    @property
    def references(self) -> list[ZooModel]:
        return [m for m in self.models if self.is_reference(m)]

    @property
    def evaluation(self) -> list[ZooModel]:
        return [m for m in self.models if not self.is_reference(m)]

    @property
    def clean_evaluation(self) -> list[ZooModel]:
        return [m for m in self.evaluation if m.clean]

    @property
    def backdoored(self) -> list[ZooModel]:
        return [m for m in self.models if not m.clean]

    def learned(self, model: ZooModel) -> bool:
        """Whether a backdoored model learned its backdoor (an unknown success rate counts as not)."""
        return (model.attack_success_rate or 0.0) >= self.rules.learned_asr

    def group(self, model: ZooModel) -> str:
        """The attack group: the trigger name; adaptive, other-relabel and unlearned backdoors apart."""
        if model.clean:
            return CLEAN
        if model.adaptive:
            return f"{model.attack} (adaptive)"
        if model.relabel != self.rules.fixed_relabel:
            return f"{model.attack} ({model.relabel} relabel)"
        if not self.learned(model):
            return f"{model.attack} (not learned, ASR < {self.rules.learned_asr})"
        return model.attack

    def groups(self) -> dict[str, list[ZooModel]]:
        """Backdoored evaluation models by group: :data:`OVERALL`, :data:`HEADLINE`, then each attack group."""
        backdoored = [m for m in self.evaluation if not m.clean]
        out = {OVERALL: backdoored, HEADLINE: [m for m in backdoored if self.group(m) == m.attack]}
        for m in backdoored:
            out.setdefault(self.group(m), []).append(m)
        return {name: members for name, members in out.items() if members}

    # ------------------------------------------------------------------ judging a detector

    def threshold(self, reference_scores: Sequence[float]) -> float:
        """The threshold flagging at most :attr:`ZooRules.max_false_alarm` of the references."""
        if not reference_scores:
            seeds = ", ".join(map(str, self.rules.reference_seeds))
            raise BackdoorLabError(f"the zoo has no reference model (clean, seed in {seeds}) to calibrate on")
        return calibrated_threshold(reference_scores, self.rules.max_false_alarm)

    def evaluate(self, verdicts: Mapping[str, ZooVerdict], target_error: TargetError | None = None) -> ZooEvaluation:
        """A detector's verdicts (by run id, one per model) reduced to the zoo's metrics.

        The threshold is calibrated on the references' scores; the metrics compare the
        clean evaluation models with each group of backdoored ones. ``target_error`` (the
        task's distance between an estimate and the real target) is averaged over the
        fixed-target models the calibrated threshold flags.
        """
        if missing := [m.run_id for m in self.models if m.run_id not in verdicts]:
            raise BackdoorLabError(f"no verdict for {len(missing)} zoo model(s): {', '.join(missing[:5])}")
        threshold = self.threshold([verdicts[m.run_id].score for m in self.references])
        clean = self.clean_evaluation
        if not clean:
            raise BackdoorLabError(
                "the zoo has no clean evaluation model: AUROC needs clean models beside the references"
            )

        def metrics(backdoored: list[ZooModel]) -> GroupMetrics:
            labels = np.array([0] * len(clean) + [1] * len(backdoored))
            scores = np.array([verdicts[m.run_id].score for m in clean + backdoored])
            detected = [
                m for m in backdoored if verdicts[m.run_id].score >= threshold and m.relabel == self.rules.fixed_relabel
            ]
            errors = [e for m in detected if target_error and (e := target_error(m, verdicts[m.run_id])) is not None]
            return GroupMetrics(
                n_clean=len(clean),
                n_backdoored=len(backdoored),
                auroc=auroc(scores, labels),
                tpr_at_max_false_alarm=tpr_at_fpr(scores, labels, self.rules.max_false_alarm),
                accuracy=accuracy_at(scores, labels, threshold),
                target_error_mean=float(np.mean(errors)) if errors else None,
                n_detected_with_target=len(errors),
            )

        timed = [(m, s) for m in self.evaluation if (s := verdicts[m.run_id].seconds) is not None]
        ratios = [s / m.train_seconds for m, s in timed if m.train_seconds]
        return ZooEvaluation(
            threshold=threshold,
            reference_scores=[verdicts[m.run_id].score for m in self.references],
            groups={name: metrics(members) for name, members in self.groups().items()},
            seconds_mean=float(np.mean([s for _, s in timed])) if timed else None,
            seconds_over_train_mean=float(np.mean(ratios)) if ratios else None,
            models=[ScoredModel(m, verdicts[m.run_id], self.is_reference(m), self.group(m)) for m in self.models],
        )

    # ------------------------------------------------------------------ verdicts and repairs kept in the store

    def store_of(self, model: ZooModel) -> ResultsStore:
        try:
            return self._stores[model.run_id]
        except KeyError:
            raise BackdoorLabError(
                f"run {model.run_id} was not read from a results store: nowhere to keep it"
            ) from None

    def record_verdict(self, model: ZooModel, method: str, verdict: ZooVerdict) -> None:
        """Keep a verdict (under ``verdict.settings``) in the store the model came from, with the folder's seal."""
        self.store_of(model).record_verdict(
            model.run_id,
            method,
            verdict.settings,
            verdict.score,
            verdict.threshold,
            verdict.backdoored,
            verdict.seconds,
            verdict.estimates,
            verdict.details,
            model_seal=self._intact_seal(model),
        )

    @staticmethod
    def _intact_seal(model: ZooModel) -> str | None:
        """The seal of the model's folder (None for a folder from before seals); a damaged one is refused."""
        problem, seal = checked_seal(model.run_dir)
        if problem is not None:
            raise BackdoorLabError(f"run {model.run_id}: {problem}; its defence records are refused")
        return seal

    def _reusable(self, model: ZooModel, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The stored records still about this model's weights: same seal, and none once the folder is damaged.

        A record from before seals (no ``model_seal``) counts while the folder is intact.
        """
        problem, seal = checked_seal(model.run_dir)
        if problem is not None:
            return []
        return [r for r in records if r.get("model_seal") in (None, seal)]

    def cached_verdict(
        self,
        model: ZooModel,
        method: str,
        settings: Mapping[str, Any],
        defaults: Mapping[str, Any] | None = None,
        before_it_existed: Mapping[str, Any] | None = None,
    ) -> ZooVerdict | None:
        """The newest stored verdict that ``settings`` would make again (see :func:`settings_match`), if any."""
        records = self._reusable(model, self.store_of(model).verdicts(model.run_id, method))
        record = _newest_matching(records, settings, defaults, before_it_existed)
        return None if record is None else ZooVerdict.from_record(record)

    def record_mitigation(self, model: ZooModel, method: str, record: MitigationRecord) -> None:
        self.store_of(model).record_mitigation(
            model.run_id,
            method,
            record.settings,
            record.before,
            record.after,
            record.seconds,
            record.details,
            model_seal=self._intact_seal(model),
        )

    def cached_mitigation(
        self,
        model: ZooModel,
        method: str,
        settings: Mapping[str, Any],
        defaults: Mapping[str, Any] | None = None,
        before_it_existed: Mapping[str, Any] | None = None,
    ) -> MitigationRecord | None:
        """The newest stored repair that ``settings`` would make again, if any."""
        records = self._reusable(model, self.store_of(model).mitigations(model.run_id, method))
        record = _newest_matching(records, settings, defaults, before_it_existed)
        return None if record is None else MitigationRecord.from_record(record)


@dataclass(frozen=True)
class MitigationRecord:
    """A repair of one model: the task's metrics before and after it (opaque dicts)."""

    before: Mapping[str, Any]
    after: Mapping[str, Any]
    seconds: float | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> MitigationRecord:
        return cls(**{k: record[k] for k in ("before", "after", "seconds", "settings", "details")})


# ---------------------------------------------------------------------- the settings-keyed cache


def settings_match(
    cached: Mapping[str, Any],
    current: Mapping[str, Any],
    defaults: Mapping[str, Any],
    before_it_existed: Mapping[str, Any] | None = None,
) -> bool:
    """Whether a record made with ``cached`` settings is one the ``current`` settings would make.

    Every setting is compared leaf by leaf (so changing a method's default invalidates
    what it concluded before), except ``device``. A setting the method gained after the
    record was made counts at the value that reproduces the old behaviour:
    ``before_it_existed[name]`` when listed there, else its value in ``defaults``.
    """
    before = before_it_existed or {}
    flat_cached, flat_current, flat_defaults = flatten(cached), flatten(current), flatten(defaults)
    return all(
        flat_cached.get(key, before.get(_leaf(key), flat_defaults.get(key))) == value
        for key, value in flat_current.items()
        if _leaf(key) != "device"
    )


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings (a mitigator's detector and fine-tuning) as one level of dotted keys."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _newest_matching(
    records: list[dict[str, Any]],
    settings: Mapping[str, Any],
    defaults: Mapping[str, Any] | None,
    before_it_existed: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """The first (newest) stored record whose settings ``settings`` would reproduce."""
    for record in records:
        if settings_match(record["settings"], settings, defaults or settings, before_it_existed):
            return record
    return None
