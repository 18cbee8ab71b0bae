"""Synthetic identities for face recognition, as aligned crops -> docs/identities.png.

Each row is one identity (six of its images: pose, expression and light change); rows
come in pairs of one look-alike family (``family_size`` 2 here, to show the pairs).

    python bench/identity_gallery.py [--out docs/identities.png] [--families 4] [--images 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from backdoorlab.data.synthetic.identities import SyntheticIdentitySpec, synthesize_identities
from backdoorlab.report.draw import encode_png, image_grid

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "identities.png")
    ap.add_argument("--families", type=int, default=4)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--scale", type=int, default=1)
    args = ap.parse_args()
    n = args.images
    spec = SyntheticIdentitySpec(
        identities=2 * args.families, family_size=2, mean_images=n, min_images=n, max_images=n, count_sigma=0.0
    )
    data = synthesize_identities(spec)
    order = np.argsort(data.annotations["label"], kind="stable")
    grid = image_grid(data.images[order], ncols=n)
    big = cv2.resize(grid, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_NEAREST)
    args.out.write_bytes(encode_png(big))
    print(f"wrote {args.out} ({2 * args.families} identities x {n} images, {spec.size} px crops)")


if __name__ == "__main__":
    main()
