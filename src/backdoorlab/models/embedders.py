"""Face embedders as black boxes: a trained run, dlib's pretrained ResNet, or any ONNX model.

Why: the run-time pairing monitor (``backdoorlab pair``) needs only embeddings from each
model of a pair, and deployed recognisers often come from another vendor: the thesis paired
its own models with an off-the-shelf InsightFace network, and recognisers are commonly
shipped as ONNX files. One interface covers the three sources:

``run folder``
    a model trained here (``model.safetensors`` + ``model.json``), at its input size;
``dlib``
    dlib's 128-d face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``
    from the ``face-recognition-models`` package: the optional ``dlib`` extra; nothing is
    downloaded). It expects 150 x 150 chips aligned as ``dlib.get_face_chip`` does (the face
    with 25 % padding); an aligned crop of another template is resized to that size, an
    approximation whose cost on a given data set the pairing's genuine scores show;
``*.onnx``
    any ONNX model taking (B, 3, S, S) float RGB (the optional ``onnx`` extra:
    onnxruntime). ``normalize="insightface"`` (the default) feeds ``(x - 0.5) / 0.5`` of the
    [0, 1] image, which is insightface's ``(pixel - 127.5) / 127.5``; ``"none"`` feeds [0, 1].

Every embedder returns L2-normalised embeddings (the pairing compares cosines; dlib's
descriptors are not unit length) and a SHA-256 of its weights file, so that a pairing can
refuse to score with weights other than those it was fitted on.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from backdoorlab.data.arrays import ArrayDataset, file_sha256
from backdoorlab.errors import ConfigError, MissingExtraError
from backdoorlab.models.checkpoint import WEIGHTS_FILE, load_checkpoint, read_card

EMBED_BATCH = 256
DLIB = "dlib"
DLIB_CHIP = 150  # the side of dlib's aligned face chip
DLIB_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
ONNX_HINT = "pip install 'backdoorlab[onnx]'"


class Embedder(ABC):
    """Unit embeddings of face images, from a model taking square inputs of side ``size``."""

    size: int
    source: str  # what a pairing records: the run folder, "dlib" or the ONNX file

    @abstractmethod
    def weights_file(self) -> Path:
        """The file holding the weights (its digest identifies the model)."""

    @abstractmethod
    def embed_batch(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, size, size) float RGB in [0, 1] -> (B, D) float32 embeddings (any length)."""

    def digest(self) -> str:
        return file_sha256(self.weights_file())

    def __call__(self, faces: ArrayDataset) -> np.ndarray:
        """(N, D) unit embeddings of every face of a dataset."""
        return np.concatenate([self.embed_images(images) for images, _ in faces.iter_batches(EMBED_BATCH)])

    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        """(B, D) unit embeddings of (B, 3, H, W) images in [0, 1], resized to the model's input where they differ."""
        out = []
        for start in range(0, len(images), EMBED_BATCH):
            batch = images[start : start + EMBED_BATCH]
            if batch.shape[-1] != self.size or batch.shape[-2] != self.size:
                batch = F.interpolate(batch, size=(self.size, self.size), mode="bilinear", antialias=True)
            emb = torch.as_tensor(np.asarray(self.embed_batch(batch), np.float32))
            out.append(F.normalize(emb, dim=1).numpy())
        return np.concatenate(out)

    def dim(self, faces: ArrayDataset) -> int:
        return self(faces.subset([0])).shape[1]


class RunEmbedder(Embedder):
    """A run trained here (its model's forward pass is the raw embedding)."""

    def __init__(self, run_dir: Path, device: torch.device, unsafe_load: bool = False) -> None:
        shape = read_card(run_dir).get("input_shape")
        if not shape or len(shape) != 3:
            raise ConfigError(f"{run_dir}/model.json has no input_shape (C, H, W): not a trained run")
        self.source, self.size, self.device = str(run_dir), int(shape[-1]), device
        self.run_dir = run_dir
        self.model = load_checkpoint(run_dir, unsafe=unsafe_load)[0].to(device).eval()

    def weights_file(self) -> Path:
        return self.run_dir / WEIGHTS_FILE

    @torch.no_grad()
    def embed_batch(self, images: torch.Tensor) -> np.ndarray:
        return self.model(images.to(self.device)).float().cpu().numpy()


class DlibEmbedder(Embedder):
    """dlib's pretrained 128-d face-recognition ResNet (the ``dlib`` extra)."""

    size = DLIB_CHIP
    source = DLIB

    def __init__(self) -> None:
        from backdoorlab.models.dlib_landmarker import import_dlib, model_file

        dlib = import_dlib()
        self.path = model_file(DLIB_MODEL_FILE)
        self.model = dlib.face_recognition_model_v1(str(self.path))

    @staticmethod
    def available() -> bool:
        """Whether dlib and its model files are installed (tests skip without them)."""
        from backdoorlab.models.dlib_landmarker import model_dir

        if importlib.util.find_spec("dlib") is None:
            return False
        try:
            return (model_dir() / DLIB_MODEL_FILE).is_file()
        except MissingExtraError:
            return False

    def weights_file(self) -> Path:
        return self.path

    def embed_batch(self, images: torch.Tensor) -> np.ndarray:
        chips = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        return np.asarray(self.model.compute_face_descriptor(list(chips)), np.float32)


class OnnxEmbedder(Embedder):
    """Any ONNX embedding model run by onnxruntime (the ``onnx`` extra), as a black box."""

    def __init__(self, path: Path, normalize: Literal["insightface", "none"] = "insightface") -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise MissingExtraError(f"ONNX models need onnxruntime: {ONNX_HINT}")
        import onnxruntime

        if normalize not in ("insightface", "none"):
            raise ConfigError(f"normalize must be 'insightface' or 'none', got {normalize!r}")
        if not path.is_file():
            raise ConfigError(f"{path}: no such ONNX file")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
            raise ConfigError(f"{path} is not a loadable ONNX model: {str(exc).splitlines()[0]}") from None
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else None
        square = shape is not None and len(shape) == 4 and isinstance(shape[-1], int) and shape[-1] == shape[-2]
        if not square or shape[1] != 3:
            raise ConfigError(
                f"{path}: expected one input of shape (B, 3, S, S), got "
                f"{[tuple(i.shape) for i in inputs]} (a face embedder takes a batch of square RGB crops)"
            )
        self.path, self.source, self.size, self.normalize = path, str(path), int(shape[-1]), normalize
        self.input_name = inputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def weights_file(self) -> Path:
        return self.path

    def embed_batch(self, images: torch.Tensor) -> np.ndarray:
        x = images.float().numpy()
        if self.normalize == "insightface":
            x = (x - 0.5) / 0.5
        if self.fixed_batch is None:
            return self._run(x)
        return np.concatenate([self._run(x[i : i + self.fixed_batch]) for i in range(0, len(x), self.fixed_batch)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
        return np.asarray(out, np.float32).reshape(len(x), -1)


def open_embedder(source: str | Path, device: torch.device | str = "cpu", unsafe_load: bool = False,
                  **onnx_options: Any) -> Embedder:  # fmt: skip
    """``"dlib"``, a ``.onnx`` file, or a run folder, as an :class:`Embedder`."""
    text = str(source)
    if text == DLIB:
        return DlibEmbedder()
    path = Path(text)
    if path.suffix.lower() == ".onnx":
        return OnnxEmbedder(path, **onnx_options)
    if not (path / WEIGHTS_FILE).is_file():
        raise ConfigError(f"{path}: neither a run folder (no {WEIGHTS_FILE}), an .onnx file nor 'dlib'")
    return RunEmbedder(path, torch.device(device), unsafe_load)
