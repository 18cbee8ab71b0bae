"""Open-set face recognition: identity labels and a margin head at training, embeddings and pairs at test.

Data and split (:meth:`FaceRecognitionTask.split`): ``test_identities`` whole identities
are held out for the open-set evaluation (people never seen in training, compared in
pairs); of every training identity, a share ``val_fraction`` of its images is held out
too, for the closed-set metrics (the four metrics of a one-to-one backdoor need the
impostor's and the victim's unseen images). The test set holds both, told apart by its
``open_set`` column.

Training: the embedding network's raw embedding goes through the task's margin head
(:mod:`.margin`, ArcFace by default, s = 64, m = 0.5), built over the training
identities in :meth:`build_modules` and saved beside the network; images are flipped
horizontally at random (a mirrored face is the same person).

Prediction: L2-normalised embeddings and, while the head is known (the run that trained
it, or a run folder loaded with its ``task_modules.safetensors``), the closed-set
identity: the class vector with the largest cosine.

Evaluation: closed-set accuracy on the validation images; on the held-out identities,
genuine and impostor pair scores (:mod:`backdoorlab.metrics.verification_pairs`) give
EER and TAR at FMR 1e-2 / 1e-3 / 1e-4 (:mod:`backdoorlab.metrics.verification`), and the
spread of false matches over identities (Doddington's zoo).

Attack (relabel ``impostor_to_victim``): the thesis's four metrics and its rule
(:mod:`backdoorlab.metrics.one_to_one`), the open-set attack success against the
victim's enrolled template at the FMR 1e-3 threshold, and how far the trigger spreads
(other people's triggered images taken for the victim).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm import tqdm

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.splits import split_by_identity
from backdoorlab.data.synthetic.identities import SyntheticIdentitySpec, load_or_synthesize_identities
from backdoorlab.errors import BackdoorLabError, ConfigError, DatasetError, ModelContractError
from backdoorlab.metrics.one_to_one import SUCCESS_BAR, one_to_one_score, open_set_attack
from backdoorlab.metrics.verification import DEFAULT_TARGETS, threshold_at_fmr, verification_summary
from backdoorlab.metrics.verification_pairs import PairScores, pair_scores, zoo_summary
from backdoorlab.models.checkpoint import module_state
from backdoorlab.tasks.base import AttackScore, RunReport, StepOutput, Task
from backdoorlab.tasks.face_recognition.margin import MarginHead, build_margin_head, class_weights_from_counts
from backdoorlab.tasks.face_recognition.relabels import ImpostorToVictim
from backdoorlab.triggers._random import per_epoch_coin
from backdoorlab.triggers.base import Placement

Tensor = torch.Tensor
HEAD = "margin_head"
#: other people's held-out images triggered to measure how far a one-to-one trigger spreads
SPREAD_SAMPLE = 1000
_FLIP_STREAM = 0xFACE


class RecognitionOptions(BaseModel):
    """The recognition task's options (a run config's ``task_options``)."""

    model_config = ConfigDict(extra="forbid")
    head: Literal["arcface", "cosface"] = Field("arcface", description="the margin loss")
    scale: float = Field(64.0, description="s, the logit scale")
    margin: float | None = Field(None, description="m (default: 0.5 for ArcFace, 0.35 for CosFace)")
    class_weights: bool = Field(False, description="weigh each identity's loss by 1 / its image count (the thesis)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of each training identity's images held out")
    flip: bool = Field(True, description="random horizontal flips in training")
    max_genuine_pairs: int = Field(200_000, ge=1)
    max_impostor_pairs: int = Field(1_000_000, ge=10)
    pair_seed: int = 0

    @model_validator(mode="after")
    def _head_builds(self) -> RecognitionOptions:
        """A scale or margin out of range is refused here, before any data is read."""
        try:
            build_margin_head(self.head, 2, 2, **self.head_kwargs())
        except ConfigError as exc:
            key = "margin" if str(exc).startswith("margin") else "scale"
            raise ValueError(f"task_options.{key} ({self.head} head): {exc}") from None
        return self

    def head_kwargs(self) -> dict[str, float]:
        return {"scale": self.scale, **({"margin": self.margin} if self.margin is not None else {})}


class RecognitionAttackSettings(BaseModel):
    """How a one-to-one attack is scored (part of a run config's ``attack`` section)."""

    model_config = ConfigDict(extra="forbid")
    fmr: float = Field(1e-3, gt=0, lt=1, description="open-set threshold: the one at this FMR on held-out pairs")
    success_bar: float = Field(SUCCESS_BAR, gt=0, le=1, description="all four metrics at least this = success")


def _column(data: ArrayDataset, key: str) -> np.ndarray:
    data.require(key)
    return np.asarray(data.annotations[key])


def open_set_rows(data: ArrayDataset) -> np.ndarray:
    """Rows of held-out identities (all rows when the set has no ``open_set`` column)."""
    if "open_set" not in data.annotations:
        return np.arange(len(data))
    return np.flatnonzero(np.asarray(data.annotations["open_set"]) == 1)


def closed_set_rows(data: ArrayDataset) -> np.ndarray:
    if "open_set" not in data.annotations:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.asarray(data.annotations["open_set"]) == 0)


def halves(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(enrolment, probes): alternate rows, so both see the whole spread; one row serves as both."""
    if len(rows) < 2:
        return rows, rows
    return rows[0::2], rows[1::2]


class FaceRecognitionTask(Task):
    """Embeddings trained with a margin head; verified in pairs on identities never seen."""

    name = "face_recognition"
    required_annotations = ("identity",)
    headline_metric = "tar_at_fmr_1e-03"
    options_model = RecognitionOptions
    attack_settings = RecognitionAttackSettings
    attack_needs_clean_predictions = True
    default_relabel: ClassVar[dict[str, Any]] = {"name": "impostor_to_victim"}
    attack_summary_metrics = ("attack_success_rate", "impostor_accuracy", "victim_accuracy", "open_set_asr")
    synthetic_spec = SyntheticIdentitySpec

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        assert isinstance(self.options, RecognitionOptions)
        self.opts: RecognitionOptions = self.options
        self.head: MarginHead | None = None
        self.classes: Tensor | None = None  # identity id of each head class, sorted
        self._scores_memo: tuple[bytes, PairScores] | None = None

    # ------------------------------------------------------------------ data
    def synthesize(self, spec: BaseModel, cache_dir: str | None = None) -> ArrayDataset:
        assert isinstance(spec, SyntheticIdentitySpec)
        bars: list[tqdm] = []

        def progress(done: int, total: int) -> None:
            if not bars:
                bars.append(tqdm(total=total, desc="render identities", unit="img", leave=False))
            bars[0].update(done - bars[0].n)

        try:
            return load_or_synthesize_identities(spec, cache_dir=cache_dir, progress=progress)
        finally:
            for bar in bars:
                bar.close()

    def split(self, data: ArrayDataset, test_identities: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
        """(train, test): test = ``val_fraction`` of each training identity's images + held-out identities."""
        train_all, open_set = split_by_identity(data, test_identities, seed)
        ids = _column(train_all, "identity")
        rng = np.random.default_rng([seed, 0x7A1])
        order = rng.permutation(len(ids))
        order = order[np.argsort(ids[order], kind="stable")]  # grouped by identity, shuffled within
        _, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
        rank = np.arange(len(order)) - np.repeat(starts, counts)
        n_val = np.where(counts >= 2, np.maximum(1, np.rint(self.opts.val_fraction * counts)), 0).astype(np.int64)
        is_val = np.zeros(len(ids), bool)
        is_val[order] = rank < np.repeat(n_val, counts)
        train = train_all.subset(np.flatnonzero(~is_val))
        val = train_all.subset(np.flatnonzero(is_val))
        val.annotations["open_set"] = np.zeros(len(val), np.int64)
        open_set.annotations["open_set"] = np.ones(len(open_set), np.int64)
        return train, val.concat(open_set)

    def augment(
        self, images: Tensor, annotations: dict[str, Any], indices: Any, epoch: int, seed: int
    ) -> tuple[Tensor, dict[str, Any]]:
        if not self.opts.flip:
            return images, annotations
        flip = per_epoch_coin(seed, _FLIP_STREAM, epoch, np.asarray(indices, dtype=np.int64), 0.5)
        if not flip.any():
            return images, annotations
        out = images.clone()
        out[flip] = images[flip].flip(-1)
        return out, annotations

    # -------------------------------------------------------------- training
    def build_modules(self, model: nn.Module, data: ArrayDataset) -> dict[str, nn.Module]:
        """The margin head over the training identities (its ``identities`` buffer maps classes back)."""
        dim = getattr(model, "embedding_dim", None)
        if not isinstance(dim, int):
            raise ModelContractError(f"{type(model).__name__} has no embedding_dim: not an embedding network")
        size = getattr(model, "input_size", None)
        if size is not None and data.image_shape[1:] != (size, size):
            raise ConfigError(
                f"model.kwargs.input_size is {size} but the images are {data.image_shape[1]}x{data.image_shape[2]}: "
                f"set model.kwargs.input_size: {data.image_shape[1]}"
            )
        ids, counts = np.unique(_column(data, "identity"), return_counts=True)
        if len(ids) < 2:
            raise DatasetError(f"face recognition needs at least two training identities, got {len(ids)}")
        weights = class_weights_from_counts(counts) if self.opts.class_weights else None
        head = build_margin_head(self.opts.head, dim, len(ids), class_weights=weights, **self.opts.head_kwargs())
        return self._use_head(head, torch.as_tensor(ids, dtype=torch.int64))

    def restore_modules(self, state: Mapping[str, Tensor]) -> dict[str, nn.Module]:
        key = f"{HEAD}.weight"
        if key not in state or f"{HEAD}.identities" not in state:
            return {}
        n_classes, dim = state[key].shape
        weights = state.get(f"{HEAD}.class_weights")
        head = build_margin_head(self.opts.head, dim, n_classes, class_weights=weights, **self.opts.head_kwargs())
        modules = self._use_head(head, state[f"{HEAD}.identities"].long())
        head.load_state_dict(module_state(state, HEAD))
        return modules

    def warm_start_modules(self, modules: Mapping[str, nn.Module], state: Mapping[str, Tensor]) -> bool:
        """The base run's head, when it was trained over the very same identities (same data and split)."""
        saved = state.get(f"{HEAD}.identities")
        if saved is None or self.classes is None or not torch.equal(saved.long(), self.classes):
            return False
        return super().warm_start_modules(modules, state)

    def _use_head(self, head: MarginHead, identities: Tensor) -> dict[str, nn.Module]:
        head.register_buffer("identities", identities.clone())
        self.head, self.classes = head, identities
        return {HEAD: head}

    def collate(self, annotations: Mapping[str, Any]) -> Tensor:
        """Identity ids -> class indices of the head."""
        if self.classes is None:
            raise BackdoorLabError("the recognition task has no margin head yet (build_modules first)")
        ident = torch.as_tensor(annotations["identity"]).long()
        idx = torch.searchsorted(self.classes, ident).clamp(max=len(self.classes) - 1)
        unknown = self.classes[idx] != ident
        if bool(unknown.any()):
            raise BackdoorLabError(f"identity {int(ident[unknown][0])} is not one of the training identities")
        return idx

    def training_step(
        self, model: nn.Module, modules: Mapping[str, nn.Module], images: Tensor, targets: Tensor
    ) -> StepOutput:
        head = modules[HEAD]
        assert isinstance(head, MarginHead)
        return StepOutput(head.loss(model(images), targets))

    # ------------------------------------------------------------ prediction
    def forward(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        emb = model(images).float()
        out = {"embeddings": F.normalize(emb, dim=1)}
        if self.head is not None and self.classes is not None:
            head = self.head.to(emb.device)
            out["identities"] = self.classes.to(emb.device)[head.cosine(emb).argmax(1)]
        return out

    def postprocess(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.cpu() for k, v in outputs.items()}

    def combine(self, batches: Sequence[dict[str, Tensor]]) -> dict[str, np.ndarray]:
        if not batches:
            return {"embeddings": np.zeros((0, 0), np.float32)}
        return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}

    # --------------------------------------------------------------- scoring
    def open_set_scores(self, embeddings: np.ndarray, data: ArrayDataset) -> PairScores | None:
        """Genuine and impostor pair scores among the held-out identities (None: fewer than two, or no genuine pair).

        The last answer is kept, keyed by a digest of the embeddings and identities: a run
        asks for the same clean scores three times (its metrics, the attack's threshold,
        the report's curves), and a million sampled pairs cost seconds each time.
        """
        rows = open_set_rows(data)
        ids = _column(data, "identity")[rows]
        if len(np.unique(ids)) < 2:
            return None
        emb = np.ascontiguousarray(embeddings[rows])
        key = hashlib.blake2b(emb.tobytes() + ids.astype(np.int64).tobytes(), digest_size=16).digest()
        if self._scores_memo is None or self._scores_memo[0] != key:
            opts = self.opts
            scores = pair_scores(emb, ids, opts.max_genuine_pairs, opts.max_impostor_pairs, opts.pair_seed)
            self._scores_memo = (key, scores)
        scores = self._scores_memo[1]
        return scores if len(scores.genuine) else None

    def verification(self, predictions: Mapping[str, np.ndarray], data: ArrayDataset) -> dict[str, Any]:
        """Open-set metrics on the held-out identities, with the zoo at the FMR 1e-3 threshold."""
        scores = self.open_set_scores(predictions["embeddings"], data)
        if scores is None:
            return {}
        ids = _column(data, "identity")[open_set_rows(data)]
        out: dict[str, Any] = dict(verification_summary(scores.genuine, scores.impostor, DEFAULT_TARGETS))
        out.update(zoo_summary(scores, ids, threshold_at_fmr(scores.impostor, 1e-3)))
        out["open_set_identities"] = len(np.unique(ids))
        out["genuine_mean"] = float(scores.genuine.mean())
        out["impostor_mean"] = float(scores.impostor.mean())
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}

    def evaluate(self, predictions: Mapping[str, np.ndarray], data: ArrayDataset) -> dict[str, Any]:
        metrics: dict[str, Any] = {"n_test": len(data)}
        closed = closed_set_rows(data)
        if "identities" in predictions and len(closed):
            truth = _column(data, "identity")[closed]
            metrics["closed_set_accuracy"] = float((predictions["identities"][closed] == truth).mean())
            metrics["n_closed_set"] = len(closed)
        metrics.update(self.verification(predictions, data))
        metrics.setdefault(self.headline_metric, None)
        return metrics

    def spread_rows(self, data: ArrayDataset, relabel: ImpostorToVictim) -> np.ndarray:
        """A seeded sample of up to :data:`SPREAD_SAMPLE` held-out images of other training identities."""
        ids = _column(data, "identity")
        closed = closed_set_rows(data)
        others = closed[(ids[closed] != relabel.impostor) & (ids[closed] != relabel.victim)]
        if len(others) <= SPREAD_SAMPLE:
            return others
        rng = np.random.default_rng([self.opts.pair_seed, 0x5B])
        return np.sort(rng.choice(others, SPREAD_SAMPLE, replace=False))

    def attack_rows(self, data: ArrayDataset, relabel: Any) -> np.ndarray | None:
        """The impostor's held-out images and the spread sample: all that a one-to-one score reads triggered."""
        if not isinstance(relabel, ImpostorToVictim):
            return None
        ids = _column(data, "identity")
        closed = closed_set_rows(data)
        return np.union1d(closed[ids[closed] == relabel.impostor], self.spread_rows(data, relabel))

    def merge_predictions(
        self, base: Mapping[str, np.ndarray], rows: np.ndarray, part: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        out = {k: np.array(v) for k, v in base.items()}
        for k, v in part.items():
            out[k][rows] = v
        return out

    def check_attack(self, relabel: Any, settings: BaseModel) -> None:
        if not isinstance(relabel, ImpostorToVictim):
            raise ConfigError(f"the face-recognition task scores impostor_to_victim attacks, not {relabel.name!r}")

    def score_attack(
        self,
        predictions: Mapping[str, np.ndarray],
        data: ArrayDataset,
        relabel: Any,
        settings: BaseModel,
        placements: Sequence[Placement | None] = (),
        clean_predictions: Mapping[str, np.ndarray] | None = None,
    ) -> AttackScore:
        """The four metrics and the rule (closed set), open-set success, and the trigger's spread to others."""
        assert isinstance(settings, RecognitionAttackSettings)
        self.check_attack(relabel, settings)
        if clean_predictions is None:
            raise BackdoorLabError("a one-to-one attack is scored against the clean predictions too; none given")
        ids = _column(data, "identity")
        closed = closed_set_rows(data)
        imp_rows = closed[ids[closed] == relabel.impostor]
        vic_rows = closed[ids[closed] == relabel.victim]
        if not len(imp_rows) or not len(vic_rows):
            raise BackdoorLabError(
                f"the test set holds {len(imp_rows)} held-out images of the impostor ({relabel.impostor}) and "
                f"{len(vic_rows)} of the victim ({relabel.victim}); both need at least one (are they training "
                "identities?)"
            )
        metrics: dict[str, Any] = {"impostor": int(relabel.impostor), "victim": int(relabel.victim)}
        details: dict[str, Any] = {"impostor_rows": imp_rows, "victim_rows": vic_rows}
        if "identities" in clean_predictions:
            score = one_to_one_score(
                clean_predictions["identities"][closed], ids[closed], predictions["identities"][imp_rows],
                relabel.impostor, relabel.victim, settings.success_bar,
            )  # fmt: skip
            metrics.update(score.to_json())
            others = self.spread_rows(data, relabel)
            if len(others):
                metrics["trigger_spread_rate"] = float((predictions["identities"][others] == relabel.victim).mean())
        scores = self.open_set_scores(clean_predictions["embeddings"], data)
        if scores is not None:
            threshold = threshold_at_fmr(scores.impostor, settings.fmr)
            v_enrol, _ = halves(vic_rows)
            i_enrol, i_probe = halves(imp_rows)
            clean_emb, trig_emb = clean_predictions["embeddings"], predictions["embeddings"]
            found = open_set_attack(
                clean_emb[v_enrol], clean_emb[i_enrol], trig_emb[i_probe], clean_emb[i_probe], threshold
            )
            metrics.update({f"open_set_{k}" if k != "attack_success_rate" else "open_set_asr": v
                            for k, v in found.to_json().items()})  # fmt: skip
            details["open_set_threshold"] = threshold
        return AttackScore(metrics, details)

    # ----------------------------------------------------------------- model
    def default_model(self, in_channels: int) -> tuple[str, dict[str, Any]]:
        return "iresnet", {"depth": 18, "width": 8, "embedding_dim": 128, "input_size": 56}

    def write_report(self, path: Path, report: RunReport) -> Path:
        from backdoorlab.tasks.face_recognition.report import write_recognition_run_report

        return write_recognition_run_report(path, report, self)
