"""Model pairing between two trained runs: fit once, then score images (``backdoorlab pair fit | score``).

A *pairing* is a folder that holds what the run-time monitor needs besides the two models:
the translator from the probe's embedding space into the reference's
(``translator.safetensors``: ``weight`` (d_ref, d_probe), ``bias`` (d_ref,)) and
``pairing.json`` (the two runs, the SHA-256 of their weights, the translator kind, the
threshold on ``1 - cos`` and the clean FNMR it was set at, and how many faces fitted and
calibrated it). Scoring checks that both runs still hold the weights the pairing was fitted
on: a translator fitted for other weights would flag at random.

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
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

from backdoorlab.data.arrays import ArrayDataset, file_sha256
from backdoorlab.data.face_recognition_sets import load_ffhq
from backdoorlab.defenses.model_pairing import EmbeddingPairs, EmbeddingTranslator, ModelPairingMonitor
from backdoorlab.errors import BackdoorLabError, ConfigError, DatasetError
from backdoorlab.models.checkpoint import WEIGHTS_FILE, load_checkpoint, read_card
from backdoorlab.training import pick_device

RECORD = "pairing.json"
TRANSLATOR = "translator.safetensors"
EMBED_BATCH = 256


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


def _weights_digest(run_dir: Path) -> str:
    return file_sha256(run_dir / WEIGHTS_FILE)


def _input_size(run_dir: Path) -> int:
    shape = read_card(run_dir).get("input_shape")
    if not shape or len(shape) != 3:
        raise ConfigError(f"{run_dir}/model.json has no input_shape (C, H, W): not a trained run")
    return int(shape[-1])


class _Embedder:
    """One run's model: unit embeddings of images, resized to its input when they differ."""

    def __init__(self, run_dir: Path, device: torch.device, unsafe_load: bool) -> None:
        self.run_dir, self.device = run_dir, device
        self.size = _input_size(run_dir)
        self.model = load_checkpoint(run_dir, unsafe=unsafe_load)[0].to(device).eval()

    @torch.no_grad()
    def __call__(self, faces: ArrayDataset) -> np.ndarray:
        out = []
        for images, _ in faces.iter_batches(EMBED_BATCH):
            if images.shape[-1] != self.size or images.shape[-2] != self.size:
                images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
            out.append(F.normalize(self.model(images.to(self.device)).float(), dim=1).cpu().numpy())
        return np.concatenate(out)

    def dim(self, faces: ArrayDataset) -> int:
        return self(faces.subset([0])).shape[1]


def _names(faces: ArrayDataset) -> list[str]:
    files = faces.meta.get("image_files") if isinstance(faces.meta, dict) else None
    return [str(f) for f in files] if files and len(files) == len(faces) else [str(i) for i in range(len(faces))]


def fit_pairing(
    probe: Path,
    reference: Path,
    faces_dir: Path,
    out: Path,
    translator: str = "affine",
    fnmr: float = 0.01,
    calibration_share: float = 1 / 3,
    steps: int = 300,
    seed: int = 0,
    device: str = "auto",
    unsafe_load: bool = False,
) -> dict[str, Any]:
    """Fit the translator on unlabeled faces, set the threshold at ``fnmr`` on held-back ones, write the pairing.

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
    probe_model, reference_model = _Embedder(probe, dev, unsafe_load), _Embedder(reference, dev, unsafe_load)
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
        "probe": str(probe), "reference": str(reference),
        "probe_weights_sha256": _weights_digest(probe), "reference_weights_sha256": _weights_digest(reference),
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
    for role in ("probe", "reference"):
        run = Path(record[role])
        if not (run / WEIGHTS_FILE).is_file():
            raise ConfigError(f"the pairing's {role} run {run} has no {WEIGHTS_FILE}")
        if _weights_digest(run) != record.get(f"{role}_weights_sha256"):
            raise BackdoorLabError(
                f"the {role} run {run} no longer holds the weights the pairing was fitted on: fit it again"
            )
    dev = pick_device(device)
    probe, reference = (_Embedder(Path(record[r]), dev, unsafe_load) for r in ("probe", "reference"))
    faces = read_faces(images_dir, probe.size)
    scores = monitor.score(EmbeddingPairs(probe(faces), reference(faces)))
    return PairingScores(scores, scores >= monitor.threshold, float(record["threshold"]), _names(faces))
