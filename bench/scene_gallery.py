"""A 4x4 grid of synthetic face-detection scenes with their ground truth -> docs/scenes.png.

Boxes are green (thicker for easy faces, thinner for medium, dashed-thin for hard:
the WIDER-style difficulty level), visible landmarks filled dots, hidden landmarks
hollow circles (RetinaFace order colours: eyes cyan, nose yellow, mouth magenta).

    python bench/scene_gallery.py [--out docs/scenes.png] [--split train] [--scale 1]
    python bench/scene_gallery.py --time 1000 [--workers 1,2]  # render time and label statistics
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import cv2
import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.synthetic.scenes import SyntheticSceneSpec, render_split
from backdoorlab.report.draw import TRUE_COLOUR, encode_png, image_grid

ROOT = Path(__file__).resolve().parents[1]
LANDMARK_COLOURS = [(0, 220, 255), (0, 220, 255), (255, 230, 0), (255, 0, 200), (255, 0, 200)]
THICKNESS = {0: 2, 1: 1, 2: 1}


def draw_scene(image: np.ndarray, faces: dict[str, np.ndarray], scale: int) -> np.ndarray:
    """One scene upscaled by ``scale`` with its boxes and landmarks (coordinates: pixel centres at integers)."""
    img = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    img = np.ascontiguousarray(img)

    def px(x: float) -> int:
        return round((x + 0.5) * scale - 0.5)

    columns = (faces["boxes"], faces["landmarks"], faces["visible"], faces["difficulty"])
    for box, lms, vis, level in zip(*columns, strict=True):
        x1, y1, x2, y2 = (px(v) for v in box)
        if int(level) == 2:  # hard: a dotted outline
            for x in range(x1, x2 + 1, 4):
                img[[y1, y2], x] = TRUE_COLOUR
            for y in range(y1, y2 + 1, 4):
                img[y, [x1, x2]] = TRUE_COLOUR
        else:
            cv2.rectangle(img, (x1, y1), (x2, y2), TRUE_COLOUR, THICKNESS[int(level)])
        for (x, y), v, colour in zip(lms, vis, LANDMARK_COLOURS, strict=True):
            if 0 <= x <= image.shape[1] - 1 and 0 <= y <= image.shape[0] - 1:
                cv2.circle(img, (px(x), px(y)), 2, colour, -1 if v else 1)
    return img


def statistics(ds: ArrayDataset) -> str:
    """Faces per difficulty level, box widths, occlusion and visibility of a rendered split."""
    assert ds.instances is not None
    c = ds.instances.columns
    n_faces = ds.annotations["n_faces"]
    levels = np.bincount(c["difficulty"], minlength=3)
    edges = [0, 10, 20, 40, 80, 160, 1e9]
    hist = np.histogram(c["boxes"][:, 2] - c["boxes"][:, 0], edges)[0]
    names = [f"{a:g}-{b:g}" for a, b in itertools.pairwise(edges[:-1])] + [f">={edges[-2]:g}"]
    bins = ", ".join(f"{name}: {k}" for name, k in zip(names, hist, strict=True))
    return "\n".join(
        [
            f"{len(ds)} scenes, {int(n_faces.sum())} faces ({n_faces.mean():.2f} per scene), "
            f"{int((n_faces == 0).sum())} without faces, {int(ds.annotations['n_hidden'].sum())} hidden faces dropped",
            f"difficulty easy/medium/hard: {levels[0]} / {levels[1]} / {levels[2]}",
            f"clipped box width (px) {bins}",
            f"occlusion mean {c['occlusion'].mean():.3f}, > 0.3: {(c['occlusion'] > 0.3).mean():.1%}; "
            f"landmarks visible {c['visible'].mean():.1%}",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "scenes.png")
    ap.add_argument("--split", default="train")
    ap.add_argument("--scale", type=int, default=1, help="upscaling (2 makes a ~3 MB PNG)")
    ap.add_argument("--start", type=int, default=0, help="first scene index")
    ap.add_argument("--time", type=int, default=0, help="instead: time rendering this many scenes")
    ap.add_argument("--workers", default="1,2", help="with --time: worker counts to time")
    args = ap.parse_args()
    spec = SyntheticSceneSpec()
    if args.time:
        for workers in map(int, args.workers.split(",")):
            start = time.perf_counter()
            ds = render_split(spec, args.split, range(args.time), workers=workers)
            print(f"{args.time} scenes of {spec.size} px, {workers} worker(s): {time.perf_counter() - start:.1f} s")
        print(statistics(ds))
        return
    ds = render_split(spec, args.split, range(args.start, args.start + 16), workers=1)
    assert ds.instances is not None
    tiles = np.stack([draw_scene(ds.images[i], ds.instances.rows(i), args.scale) for i in range(len(ds))])
    grid = image_grid(tiles, ncols=4, pad=4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(encode_png(grid))
    faces, dropped = int(ds.annotations["n_faces"].sum()), int(ds.annotations["n_hidden"].sum())
    print(f"wrote {args.out}: {len(ds)} scenes, {faces} faces, {dropped} dropped")


if __name__ == "__main__":
    main()
