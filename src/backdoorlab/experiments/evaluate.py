"""``backdoorlab eval``: score a trained model on its own test split or on other data.

Real datasets come at their own resolution and channel count; the model card records
the input shape the model was trained on, and images are adapted to it (area resize,
grey <-> RGB) so a model trained on synthetic faces can be scored on MPIIFaceGaze.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError, DatasetError
from backdoorlab.experiments.config import load_config
from backdoorlab.experiments.run import evaluate_model, load_data
from backdoorlab.models.checkpoint import load_checkpoint


def adapt_images(ds: ArrayDataset, shape: tuple[int, int, int]) -> ArrayDataset:
    """Resize/convert images to (C, H, W) = ``shape``; landmarks are not rescaled."""
    c, h, w = shape
    if ds.image_shape == (c, h, w):
        return ds
    imgs = np.asarray(ds.images)
    out = np.empty((len(imgs), h, w, c), np.uint8)
    for i, im in enumerate(imgs):
        r = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) if im.shape[:2] != (h, w) else im
        if r.ndim == 2:
            r = r[..., None]
        if r.shape[-1] == 1 and c == 3:
            r = np.repeat(r, 3, -1)
        elif r.shape[-1] == 3 and c == 1:
            r = cv2.cvtColor(r, cv2.COLOR_RGB2GRAY)[..., None]
        out[i] = r
    keep = {k: v for k, v in ds.annotations.items() if k not in ("landmarks", "eye_corners", "face_box")}
    return ArrayDataset(
        out, keep, {**{k: v for k, v in ds.meta.items() if k != "fingerprint"}, "adapted_to": list(shape)}
    )


def resolve_data(spec: str, run_dir: Path) -> ArrayDataset:
    """'run' -> the run's test split; a folder -> ArrayDataset; KIND:PATH -> a real loader."""
    if spec == "run":
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"{cfg_path} is missing: cannot rebuild the run's test split (pass --data)")
        return load_data(load_config(cfg_path))[1]
    m = re.match(r"^([a-z-]+):(.+)$", spec)
    if m and not Path(spec).exists():
        from backdoorlab.data.real import load_real_dataset

        return load_real_dataset(m.group(1), m.group(2))
    p = Path(spec)
    if not p.exists():
        raise DatasetError(f"--data {spec}: no such dataset folder (or use KIND:PATH for a real dataset)")
    return ArrayDataset.load(p)


def evaluate_run(
    run_dir: Path, data: str = "run", unsafe_load: bool = False, device: str = "auto"
) -> tuple[dict[str, Any], Path]:
    model, card = load_checkpoint(run_dir, unsafe=unsafe_load)
    ds = resolve_data(data, run_dir)
    if "input_shape" in card:
        ds = adapt_images(ds, tuple(card["input_shape"]))  # type: ignore[arg-type]
    metrics, _ = evaluate_model(model, ds, card.get("task", "gaze"), device=device)
    metrics["data"] = data
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", data).strip("_")[:80] or "data"
    out = run_dir / "eval" / f"{slug}.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    tmp.replace(out)
    return metrics, out
