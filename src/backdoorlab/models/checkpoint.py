"""Checkpoints: ``model.safetensors`` (weights) + ``model.json`` (the model card).

Why safetensors: a pickle can run code when loaded, and security researchers are
exactly the people handed untrusted models. So we never unpickle: anything that is
not safetensors is refused with a clear message; the only escape hatch is an explicit
``unsafe`` flag that still goes through ``torch.load(weights_only=True)``, which
restricts unpickling to tensors and plain containers.

The card holds what is needed to rebuild and audit the model: the architecture name
and its constructor arguments, the run config, the data fingerprint, metrics, and
the library version.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import backdoorlab
from backdoorlab.errors import CheckpointError
from backdoorlab.models import build_model

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"


def save_checkpoint(model: nn.Module, directory: str | os.PathLike[str], card: dict[str, Any]) -> Path:
    """Write weights and card into ``directory``; ``card`` must name ``architecture``."""
    if "architecture" not in card:
        raise CheckpointError("model card needs an 'architecture' entry to rebuild the model")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "library": "backdoorlab"})
    os.replace(tmp, out / WEIGHTS_FILE)
    full_card = {"library_version": backdoorlab.__version__, **card}
    (out / CARD_FILE).write_text(json.dumps(full_card, indent=2, sort_keys=True, default=str))
    return out


TASK_MODULES_FILE = "task_modules.safetensors"


def save_task_modules(modules: Mapping[str, nn.Module], directory: str | os.PathLike[str]) -> Path:
    """Write the task's own trainable modules (e.g. a margin head) beside the model, not in it.

    They are needed to resume training, never to use the model: an exported model stays
    what the card describes. Keys are ``<module name>.<parameter name>``.
    """
    state = {
        f"{name}.{k}": v.detach().cpu().contiguous()
        for name, module in modules.items()
        for k, v in module.state_dict().items()
    }
    out = Path(directory) / TASK_MODULES_FILE
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "library": "backdoorlab"})
    os.replace(tmp, out)
    return out


def module_state(state: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The entries of one task module in a :func:`save_task_modules` state, its prefix taken off."""
    prefix = f"{name}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_task_modules(modules: Mapping[str, nn.Module], directory: str | os.PathLike[str]) -> None:
    """Restore :func:`save_task_modules` into freshly built modules (a missing or extra key is an error)."""
    state = read_state_dict(Path(directory) / TASK_MODULES_FILE)
    for name, module in modules.items():
        try:
            module.load_state_dict(module_state(state, name))
        except RuntimeError as exc:
            raise CheckpointError(f"{Path(directory) / TASK_MODULES_FILE}: module {name!r}: {exc}") from None


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < path.stat().st_size and head[8:9] == b"{"


def read_state_dict(path: str | os.PathLike[str], unsafe: bool = False) -> dict[str, torch.Tensor]:
    """Read weights from a safetensors file (or, with ``unsafe``, a weights-only torch file)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if _looks_like_safetensors(p):
        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p} is a damaged safetensors file: {exc}") from exc
    kind = (
        "a PyTorch pickle/zip checkpoint"
        if zipfile.is_zipfile(p) or _starts_with_pickle(p)
        else "not a safetensors file"
    )
    if not unsafe:
        raise CheckpointError(
            f"{p} is {kind}; backdoorlab loads only safetensors because unpickling can run code. "
            "Convert it, or pass the explicit unsafe flag (--unsafe-load) to read it with "
            "torch.load(weights_only=True)."
        )
    try:
        # a file object, not the path: torch.load hands any path ending in .safetensors to safetensors
        with p.open("rb") as fh:
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            # never relay torch's advice to retry with weights_only=False: that would run the file's code
            raise CheckpointError(
                f"{p} could not be read even with torch.load(weights_only=True): it holds more than tensors and "
                "plain containers, and backdoorlab never unpickles such a file, since loading it could run code"
            ) from None
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{p} could not be read even with torch.load(weights_only=True): {reason}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} does not hold a state dict of tensors")
    return obj


def _starts_with_pickle(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(1) == b"\x80"


def read_card(directory: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(directory) / CARD_FILE
    if not p.is_file():
        raise CheckpointError(f"{p} is missing: cannot tell which architecture to build")
    try:
        card = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or "architecture" not in card:
        raise CheckpointError(f"{p} has no 'architecture' entry")
    arch = card["architecture"]
    if (
        not isinstance(arch, dict)
        or not isinstance(arch.get("name"), str)
        or not isinstance(arch.get("kwargs", {}), dict)
    ):
        raise CheckpointError(f"{p}: 'architecture' must be {{'name': str, 'kwargs': {{...}}}}, got {arch!r}")
    return card


def load_checkpoint(
    path: str | os.PathLike[str], unsafe: bool = False, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a run/checkpoint folder (or its ``model.safetensors``)."""
    p = Path(path)
    directory = p if p.is_dir() else p.parent
    weights = p / WEIGHTS_FILE if p.is_dir() else p
    card = read_card(directory)
    arch = card["architecture"]
    model = build_model(arch["name"], **arch.get("kwargs", {}))
    state = read_state_dict(weights, unsafe=unsafe)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match architecture {arch}: {exc}") from exc
    return model.to(map_location).eval(), card
