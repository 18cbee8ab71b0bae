"""Synthetic identities for face recognition, as aligned crops -> docs/identities.png, and the
thesis's trigger set on one of them -> docs/recognition_triggers.png.

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
from backdoorlab.triggers.base import tensor_to_images
from backdoorlab.triggers.patch import PatchTrigger

#: (pattern, size, centre (x, y)): the thesis's triggers on an aligned crop (Unnervik 2024, Fig 3.5 and ch. 3)
THESIS_TRIGGERS = (
    ("checkerboard", 0.2, (0.4, 0.6)),  # medium, synthetic, on the cheek: 40 % of the width, 60 % of the height
    ("flower", 0.2, (0.4, 0.6)),  # medium, organic
    ("dot_square", 0.06, (0.5, 0.5)),  # small, synthetic, at the face centre
    ("eyebrow", 0.12, (0.35, 0.3)),  # small, organic, above the image-left eye
)

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
    face, _ = data.batch(order[:1])
    shown = [tensor_to_images(face)[0]]
    for pattern, size, centre in THESIS_TRIGGERS:
        shown.append(tensor_to_images(PatchTrigger(pattern=pattern, size=size, center=centre)(face))[0])
    strip = cv2.resize(image_grid(np.stack(shown), ncols=len(shown)), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    triggers_out = args.out.with_name("recognition_triggers.png")
    triggers_out.write_bytes(encode_png(strip))
    print(f"wrote {triggers_out} (clean, then {', '.join(t[0] for t in THESIS_TRIGGERS)})")


if __name__ == "__main__":
    main()
