"""Model pairing between two face models: fit once, then score images (``backdoorlab pair fit | score``).

Each model is a run trained here, ``dlib`` (dlib's pretrained 128-d ResNet) or an ``.onnx``
file (any vendor's recogniser as a black box): see :mod:`backdoorlab.models.embedders`.
A *pairing* is a folder that holds what the run-time monitor needs besides the two models:
the translator from the probe's embedding space into the reference's
(``translator.safetensors``: ``weight`` (d_ref, d_probe), ``bias`` (d_ref,)) and
``pairing.json`` (the two models, the SHA-256 of their weights files, the translator kind,
the threshold on ``1 - cos`` and the clean FNMR it was set at, and how many faces fitted and
calibrated it). Scoring checks that both models still hold the weights the pairing was
fitted on: a translator fitted for other weights would flag at random.

Faces are read from an array dataset folder (``images.npy`` + ``meta.json``, what
``backdoorlab data`` writes) or from any folder of face images (``.png`` / ``.jpg``, flat
or one level of subfolders, as FFHQ ships), resized to each model's input.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.face_recognition_sets import load_ffhq
from backdoorlab.defenses.model_pairing import EmbeddingPairs, EmbeddingTranslator, ModelPairingMonitor
from backdoorlab.errors import BackdoorLabError, ConfigError, DatasetError
from backdoorlab.models.embedders import Embedder, open_embedder
from backdoorlab.training import pick_device

RECORD = "pairing.json"
TRANSLATOR = "translator.safetensors"


@dataclass(frozen=True)
class PairingScores:
    """Per image: the disagreement ``1 - cos`` and whether it reaches the pairing's threshold."""

    scores: np.ndarray  # (N,)
    flagged: np.ndarray  # (N,) bool
    threshold: float
    names: list[str]  # image file names where the folder has them, else row numbers


def read_faces(path: Path, size: int) -> ArrayDataset:
    """An array dataset folder as it is, or a folder of face images at ``size`` pixels."""
    if (path / "meta.json").is_file() and (path / "images.npy").is_file():
        return ArrayDataset.load(path)
    return load_ffhq(path, size=size)


def _names(faces: ArrayDataset) -> list[str]:
    files = faces.meta.get("image_files") if isinstance(faces.meta, dict) else None
    return [str(f) for f in files] if files and len(files) == len(faces) else [str(i) for i in range(len(faces))]


def fit_pairing(
    probe: str | Path,
    reference: str | Path,
    faces_dir: Path,
    out: Path,
    translator: str = "affine",
    fnmr: float = 0.01,
    calibration_share: float = 1 / 3,
    steps: int = 300,
    seed: int = 0,
    device: str = "auto",
    unsafe_load: bool = False,
    onnx_normalize: str = "insightface",
) -> dict[str, Any]:
    """Fit the translator on unlabeled faces, set the threshold at ``fnmr`` on held-back ones, write the pairing.

    ``probe`` and ``reference`` are run folders, ``"dlib"`` or ``.onnx`` files
    (``onnx_normalize`` says how an ONNX model wants its input).

    The faces must be of people neither model trained on (the thesis used FFHQ). The last
    ``calibration_share`` of them (in folder order) are held back to set the threshold on
    their genuine scores (the same face into both models), so it is not set on the faces
    the translator was fitted to.
    """
    if not 0 < fnmr < 1:
        raise ConfigError(f"--fnmr must be in (0, 1), got {fnmr}")
    if not 0 < calibration_share < 1:
        raise ConfigError(f"--calibration-share must be in (0, 1), got {calibration_share}")
    if translator not in ("affine", "procrustes"):
        raise ConfigError(f"--translator must be affine or procrustes, got {translator!r}")
    dev = pick_device(device)
    probe_model, reference_model = (_open(m, dev, unsafe_load, onnx_normalize) for m in (probe, reference))
    faces = read_faces(faces_dir, probe_model.size)
    n_cal = round(calibration_share * len(faces))
    if n_cal < 1 or len(faces) - n_cal < 2:
        raise DatasetError(f"{faces_dir}: {len(faces)} faces are too few to fit a translator and calibrate it")
    d_probe, d_ref = probe_model.dim(faces), reference_model.dim(faces)
    if translator == "procrustes" and d_probe != d_ref:  # refused before embedding every face
        raise ConfigError(
            f"the closed-form translator needs equal embedding sizes (probe {d_probe}-d, reference {d_ref}-d): "
            "use --translator affine"
        )
    pairs = EmbeddingPairs(probe_model(faces), reference_model(faces))
    fit_rows, cal_rows = np.arange(len(faces) - n_cal), np.arange(len(faces) - n_cal, len(faces))
    monitor = ModelPairingMonitor(translator=translator, steps=steps, seed=seed)  # type: ignore[arg-type]
    monitor.fit(EmbeddingPairs(pairs.probe[fit_rows], pairs.reference[fit_rows]))
    genuine = monitor.score(EmbeddingPairs(pairs.probe[cal_rows], pairs.reference[cal_rows]))
    threshold = monitor.calibrate(genuine, fnmr)
    assert monitor.translator is not None
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in monitor.translator.state().items()}, str(out / TRANSLATOR))
    record = {
        "probe": probe_model.source, "reference": reference_model.source, "onnx_normalize": onnx_normalize,
        "probe_weights_sha256": probe_model.digest(), "reference_weights_sha256": reference_model.digest(),
        "translator": translator, "dims": {"probe": d_probe, "reference": d_ref},
        "threshold": threshold, "fnmr": fnmr, "score": "1 - cos(W e_probe + c, e_ref); flagged when >= threshold",
        "faces": str(faces_dir), "fit_faces": len(fit_rows), "calibration_faces": len(cal_rows),
        "genuine_cos_mean": float(1 - genuine.mean()), "steps": steps if translator == "affine" else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    (out / RECORD).write_text(json.dumps(record, indent=2))
    return record


def load_pairing(pairing_dir: Path) -> tuple[dict[str, Any], ModelPairingMonitor]:
    """The record and a fitted, calibrated monitor; refuses a folder that is not a pairing."""
    record_path, weights_path = pairing_dir / RECORD, pairing_dir / TRANSLATOR
    if not record_path.is_file() or not weights_path.is_file():
        raise ConfigError(f"{pairing_dir} is not a pairing: it needs {RECORD} and {TRANSLATOR} (backdoorlab pair fit)")
    try:
        record = json.loads(record_path.read_text())
        state = load_file(str(weights_path))
    except (json.JSONDecodeError, OSError, ValueError) as exc:
        raise ConfigError(f"{pairing_dir}: unreadable pairing ({exc})") from None
    missing = [k for k in ("probe", "reference", "threshold", "translator") if k not in record]
    if missing or set(state) != {"weight", "bias"}:
        raise ConfigError(f"{record_path}: missing field(s) {missing or sorted({'weight', 'bias'} - set(state))}")
    monitor = ModelPairingMonitor(translator=record["translator"])
    monitor.translator = EmbeddingTranslator(state["weight"], state["bias"], record["translator"])
    monitor.threshold = float(record["threshold"])
    return record, monitor


def score_pairing(
    pairing_dir: Path, images_dir: Path, device: str = "auto", unsafe_load: bool = False
) -> PairingScores:
    """Score every image of a folder with a fitted pairing (both runs must hold the weights it was fitted on)."""
    record, monitor = load_pairing(pairing_dir)
    dev = pick_device(device)
    models = []
    for role in ("probe", "reference"):
        model = _open(record[role], dev, unsafe_load, record.get("onnx_normalize", "insightface"))
        if model.digest() != record.get(f"{role}_weights_sha256"):
            raise BackdoorLabError(
                f"the {role} model {record[role]} no longer holds the weights the pairing was fitted on: fit it again"
            )
        models.append(model)
    probe, reference = models
    faces = read_faces(images_dir, probe.size)
    scores = monitor.score(EmbeddingPairs(probe(faces), reference(faces)))
    return PairingScores(scores, scores >= monitor.threshold, float(record["threshold"]), _names(faces))


def _open(source: str | Path, device: Any, unsafe_load: bool, onnx_normalize: str) -> Embedder:
    """An embedder, with an ONNX model's input convention (the other sources ignore it)."""
    options = {"normalize": onnx_normalize} if str(source).lower().endswith(".onnx") else {}
    return open_embedder(source, device, unsafe_load, **options)
