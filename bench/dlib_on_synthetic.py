"""Bench: dlib's pretrained detector + landmarker on the synthetic face renderer.

Needs the optional extra (``pip install 'backdoorlab[dlib]'``). Numbers, all measured
in this run, against the renderer's exact labels:

* single face crops (``render_face_crops``, one random identity and view per face) at
  several sizes: detection rate of the HOG detector (per ``upsample``) and of the CNN
  (MMOD) detector; NME of the 5 points derived from the 68-point model, per point and
  mean, (a) inside dlib's own detections and (b) inside the true face boxes (the
  cross-check use: boxes from the detector under test); eye-centre NME of the 5-point
  model inside the true boxes; milliseconds per face;
* scenes (``render_scene``, 192 x 192, faces of one width per scene on a grid):
  detection rate and false positives per face width and detector setting.

NME = mean over points of |predicted - true| / inter-ocular distance (distance between
the true eye centres). A true face counts as detected when a detection's box (converted
to the project's face-box convention) overlaps its true box with IoU >= 0.3 (greedy
one-to-one matching, highest score first).

    python bench/dlib_on_synthetic.py [--faces 64] [--scenes 6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.data.synthetic.faces import render_face_crops, render_scene  # noqa: E402
from backdoorlab.data.synthetic.params import sample_identities, sample_images  # noqa: E402
from backdoorlab.models.dlib_landmarker import DlibLandmarker  # noqa: E402

POINTS = ["left_eye", "right_eye", "nose_tip", "left_mouth", "right_mouth"]
IOU_MATCH = 0.3


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of boxes a (N, 4) and b (M, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def match(true_boxes: np.ndarray, found: dict[str, np.ndarray]) -> np.ndarray:
    """For each true box the index of its matched detection, or -1."""
    out = np.full(len(true_boxes), -1)
    if not len(found["boxes"]) or not len(true_boxes):
        return out
    ov = iou(true_boxes, found["boxes"])
    for j in np.argsort(-found["scores"]):
        i = int(np.argmax(np.where(out < 0, ov[:, j], -1)))
        if out[i] < 0 and ov[i, j] >= IOU_MATCH:
            out[i] = j
    return out


def nme(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(K, 5) per-point error / inter-ocular distance."""
    iod = np.linalg.norm(true[:, 0] - true[:, 1], axis=-1)
    return np.linalg.norm(pred - true, axis=-1) / iod[:, None]


def summary(err: np.ndarray) -> dict[str, object]:
    if not len(err):
        return {"n": 0}
    return {
        "n": len(err),
        "mean": float(np.nanmean(err)),
        "median_face": float(np.median(np.nanmean(err, 1))),
        "per_point": {p: float(v) for p, v in zip(POINTS, np.nanmean(err, 0), strict=False)},
        "frac_face_below_0.1": float((np.nanmean(err, 1) < 0.1).mean()),
    }


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def crops(n: int, sizes: list[int], seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    ident, view = sample_identities(rng, n), sample_images(rng, n)
    yaw = np.abs(view.head_ypr[:, 0])
    m68, m5 = DlibLandmarker("68"), DlibLandmarker("5")
    out: dict[str, object] = {}
    for size in sizes:
        r, dt = timed(render_face_crops, ident, view, size)
        print(f"crops {size}px: rendered {n} faces in {dt:.1f} s", flush=True)
        true_lm, true_box = r.annotations["landmarks"], r.annotations["face_box"]
        row: dict[str, object] = {}
        # landmarks inside the true boxes
        m68.landmarks(r.images[:1], [true_box[:1]])  # warm-up
        lm, dt = timed(m68.landmarks, r.images, list(true_box[:, None]))
        row["nme68_true_boxes"] = summary(nme(np.concatenate(lm), true_lm))
        row["ms_per_face_landmarks68"] = 1000 * dt / n
        lm5, dt = timed(m5.landmarks, r.images, list(true_box[:, None]))
        row["nme5_true_boxes_eyes"] = summary(nme(np.concatenate(lm5), true_lm)[:, :2])
        row["ms_per_face_landmarks5"] = 1000 * dt / n
        print(
            f"  68-pt in true boxes: NME {row['nme68_true_boxes']['mean']:.3f}, "
            f"{row['ms_per_face_landmarks68']:.1f} ms/face; 5-pt eyes NME {row['nme5_true_boxes_eyes']['mean']:.3f}",
            flush=True,
        )
        settings = [("hog", 0), ("hog", 1), ("hog", 2), ("cnn", 0)]
        for det, up in settings:
            model = DlibLandmarker("68", detector=det, upsample=up)
            model.detect(r.images[:1])  # warm-up: the first call loads the detector
            found, dt = timed(model.detect, r.images)
            hit = np.array([match(true_box[i : i + 1], f)[0] for i, f in enumerate(found)])
            errs = [nme(found[i]["landmarks"][[j]], true_lm[[i]]) for i, j in enumerate(hit) if j >= 0]
            extra = sum(len(f["boxes"]) for f in found) - int((hit >= 0).sum())
            key = f"{det}_up{up}"
            row[key] = {
                "detection_rate": float((hit >= 0).mean()),
                "detection_rate_yaw_below_0.2": float((hit[yaw < 0.2] >= 0).mean()),
                "detection_rate_yaw_above_0.2": float((hit[yaw >= 0.2] >= 0).mean()),
                "false_positives": int(extra),
                "ms_per_face_detect_and_landmarks": 1000 * dt / n,
                "nme68_detected": summary(np.concatenate(errs) if errs else np.zeros((0, 5))),
            }
            s = row[key]
            print(
                f"  {key}: detected {s['detection_rate']:.0%} ({s['false_positives']} false), "
                f"NME {s['nme68_detected'].get('mean', float('nan')):.3f}, "
                f"{s['ms_per_face_detect_and_landmarks']:.1f} ms/face",
                flush=True,
            )
        out[str(size)] = row
    return out


def scenes(per_width: int, widths: list[int], seed: int, size: int = 192) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    settings = [("hog", 0), ("hog", 1), ("hog", 2), ("cnn", 0), ("cnn", 1)]
    models = {f"{d}_up{u}": DlibLandmarker("68", detector=d, upsample=u) for d, u in settings}
    for model in models.values():
        model.detect(np.zeros((1, 32, 32, 3), np.uint8))  # warm-up: the first call loads the detector
    out: dict[str, object] = {}
    for w in widths:
        per_row = max(1, min(2, int(size // (1.5 * w))))
        grid = (np.arange(per_row) + 0.5) * size / per_row
        centres = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
        images, boxes, lms = [], [], []
        t = time.perf_counter()
        for _ in range(per_width):
            k = len(centres)
            ident, view = sample_identities(rng, k), sample_images(rng, k)
            jitter = rng.uniform(-0.1, 0.1, (k, 2)) * w
            r = render_scene(ident, view, centres + jitter, np.full(k, float(w)), size, size)
            images.append(r.images)
            boxes.append(r.annotations["face_box"])
            lms.append(r.annotations["landmarks"])
        n_faces = sum(len(b) for b in boxes)
        print(f"scenes w={w}px: rendered {n_faces} faces in {time.perf_counter() - t:.1f} s", flush=True)
        row: dict[str, object] = {"faces": n_faces}
        for key, model in models.items():
            found, dt = timed(model.detect, np.stack(images))
            hits = [match(b, f) for b, f in zip(boxes, found, strict=True)]
            n_hit = sum(int((h >= 0).sum()) for h in hits)
            errs = [
                nme(f["landmarks"][h[h >= 0]], lm[h >= 0])
                for f, h, lm in zip(found, hits, lms, strict=True)
                if (h >= 0).any()
            ]
            row[key] = {
                "detection_rate": n_hit / n_faces,
                "false_positives": sum(len(f["boxes"]) for f in found) - n_hit,
                "ms_per_image": 1000 * dt / len(images),
                "nme68_detected": summary(np.concatenate(errs) if errs else np.zeros((0, 5))),
            }
            s = row[key]
            print(
                f"  {key}: detected {s['detection_rate']:.0%} ({s['false_positives']} false), "
                f"NME {s['nme68_detected'].get('mean', float('nan')):.3f}, {s['ms_per_image']:.0f} ms/image",
                flush=True,
            )
        out[str(w)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=64, help="face crops per size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192])
    ap.add_argument("--scenes", type=int, default=6, help="scenes per face width")
    ap.add_argument("--widths", type=int, nargs="+", default=[20, 30, 40, 60, 90, 130, 170])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not DlibLandmarker.available():
        sys.exit("needs the dlib extra: pip install 'backdoorlab[dlib]'")
    import dlib

    row = {
        "dlib": dlib.__version__,
        "iou_match": IOU_MATCH,
        "crops": crops(args.faces, args.sizes, args.seed),
        "scenes_192": scenes(args.scenes, args.widths, args.seed + 1),
        "threads": torch.get_num_threads(),
    }
    path = write_result("dlib_on_synthetic", row)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
