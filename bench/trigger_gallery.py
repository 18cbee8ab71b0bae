"""The README's trigger picture: the same faces clean and under each bench trigger.

    python bench/trigger_gallery.py      # -> docs/triggers.png

Rows: clean, patch (white tape), blend (noise, alpha 0.1), WaNet k=8 s=1, WaNet k=8
s=4, face-anchored sticker. Faces are unseen-style synthetic 64x64 crops, upscaled 2x.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from backdoorlab.data.arrays import tensor_to_images
from backdoorlab.data.synthetic import SyntheticGazeSpec, synthesize
from backdoorlab.report.draw import image_grid
from backdoorlab.triggers import build_trigger

OUT = Path(__file__).resolve().parents[1] / "docs" / "triggers.png"
ROWS = [
    {"name": "patch"},
    {"name": "blend", "alpha": 0.1},
    {"name": "wanet", "k": 8, "s": 1.0},
    {"name": "wanet", "k": 8, "s": 4.0},
    {"name": "sticker"},
]


def main() -> None:
    ds = synthesize(SyntheticGazeSpec(identities=8, images_per_identity=1, size=64, seed=3), compile=False, workers=1)
    idx = np.arange(len(ds))
    x, ann = ds.batch(idx)
    rows = [np.asarray(ds.images)] + [tensor_to_images(build_trigger(spec)(x, ann, idx)) for spec in ROWS]
    grid = image_grid(np.concatenate(rows), ncols=len(ds))
    grid = cv2.resize(grid, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    OUT.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(OUT), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
