"""Write the image patterns of the unseen gaze slice (configs/zoo/gaze_unseen.yaml) as PNG files.

Why files: an image-pattern trigger is one a user brings as a picture, so the slice
exercises the file path of the patch and blend triggers. The pictures are drawn here,
deterministically, and committed; rerunning this script rewrites the same bytes.

* ``emblem.png`` (32x32): a badge-like picture (coloured rings, a diagonal stripe and a
  dark dot), meant to be pasted as a patch;
* ``grating.png`` (64x64): a coloured periodic pattern (two crossed sine gratings of
  different periods, one per colour channel pair), meant to be blended over the image.

    python bench/holdout_patterns.py [--out configs/zoo/patterns]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def emblem(side: int = 32) -> np.ndarray:
    """(side, side, 3) uint8: orange and teal rings, a purple stripe, a dark centre dot."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    c = (side - 1) / 2
    r = np.hypot(y - c, x - c) / (side / 2)
    img = np.zeros((side, side, 3))
    img[:] = (0.95, 0.85, 0.55)  # a pale yellow ground
    ring = (np.floor(r * 4) % 2 == 0) & (r < 1)
    img[ring] = (0.95, 0.45, 0.10)
    img[~ring & (r < 1)] = (0.10, 0.60, 0.65)
    stripe = np.abs(x - y) < side * 0.09
    img[stripe] = (0.55, 0.15, 0.65)
    img[r < 0.18] = (0.10, 0.08, 0.12)
    return (img * 255).round().astype(np.uint8)


def grating(side: int = 64) -> np.ndarray:
    """(side, side, 3) uint8: red varies along x (period 8 px), blue along y (period 13 px), green along both."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    red = 0.5 + 0.5 * np.sin(2 * np.pi * x / 8)
    blue = 0.5 + 0.5 * np.sin(2 * np.pi * y / 13)
    green = 0.5 + 0.5 * np.sin(2 * np.pi * (x + y) / 21)
    return (np.stack([red, green, blue], -1) * 255).round().astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE.parent / "configs" / "zoo" / "patterns")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, pixels in (("emblem.png", emblem()), ("grating.png", grating())):
        Image.fromarray(pixels).save(args.out / name, optimize=False)
        print(f"wrote {args.out / name} ({pixels.shape[1]}x{pixels.shape[0]})")


if __name__ == "__main__":
    main()
