"""Bench: model pairing with another vendor's pretrained recogniser, dlib's 128-d ResNet (issue 16, section 3).

    pip install 'backdoorlab[dlib]'         # dlib-bin + face-recognition-models: nothing downloaded at run time
    python bench/vendor_pairing.py          # reads runs/fr/base and runs/fr_weights (~10 min on 2 cores)

The thesis paired its own FaceNet with an off-the-shelf InsightFace model it did not train.
Here the off-the-shelf model is dlib's face-recognition ResNet (trained by dlib's author on
about 3 million faces of real people), paired with our clean base IResNet and with every
kept backdoored network of the weight zoo, both ways, through an affine translator
(128-d <-> 512-d: the closed form needs equal sizes). dlib wants 150 x 150 chips aligned
its own way; our 56-px synthetic crops are resized to that, so the first question is
whether dlib's embeddings of synthetic faces are consistent enough to translate: the
pairing's genuine scores and dlib's own verification on the unseen people answer it.

dlib costs about 0.1 s per face here, so the translators fit on ``--fit-faces`` of the
unseen people's faces and the thresholds are set on ``--val-faces`` of the others (the
pairing bench's IResNet/MobileFaceNet pairs used about 14k and 7k). Rows as in
``bench/model_pairing.py``: clean pairs report the share of poisoned samples falsely
flagged, backdoored pairs the share missed, at a clean FNMR of 0.1 / 1 / 5 %.
Writes ``bench/results/vendor_pairing.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402
from model_pairing import (  # noqa: E402
    RATES,
    Member,
    head_member,
    pair_flags,
    poisoned_samples,
    row_summary,
    trunk_features,
    unseen_faces,
    unseen_halves,
    zoo_rows,
)

from backdoorlab.frozen_trunk import trunk_key  # noqa: E402
from backdoorlab.metrics.detection import auroc  # noqa: E402
from backdoorlab.models.checkpoint import load_checkpoint  # noqa: E402
from backdoorlab.models.embedders import DlibEmbedder  # noqa: E402


def subsample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=False))


def verification_auroc(emb: np.ndarray, ids: np.ndarray) -> float:
    """AUROC of cosine similarity for same-person against different-person pairs (every pair once)."""
    upper = np.triu_indices(len(ids), 1)
    cos = (emb @ emb.T)[upper]
    same = (ids[:, None] == ids[None])[upper]
    return auroc(cos, same.astype(int))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", type=Path, default=ROOT / "runs" / "fr_weights")
    p.add_argument("--base", type=Path, default=ROOT / "runs" / "fr" / "base")
    p.add_argument("--unseen-identities", type=int, default=400)
    p.add_argument("--unseen-seed", type=int, default=2)
    p.add_argument("--fit-share", type=float, default=2 / 3)
    p.add_argument("--fit-faces", type=int, default=1536, help="unseen faces the translators fit on")
    p.add_argument("--val-faces", type=int, default=768, help="unseen faces of other people the thresholds use")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="vendor_pairing")
    args = p.parse_args()
    if not DlibEmbedder.available():
        raise SystemExit("dlib is not installed: pip install 'backdoorlab[dlib]'")
    rows_of_zoo = zoo_rows(args.zoo / "results.sqlite")
    kept = [r for r in rows_of_zoo if r["config"].get("attack") and r["metrics"].get("success")]
    poison, slices = poisoned_samples(kept)
    unseen = unseen_faces(args)
    fit_all, val_all = unseen_halves(unseen, args.fit_share)
    chosen = np.r_[subsample(fit_all, args.fit_faces, args.seed), subsample(val_all, args.val_faces, args.seed + 1)]
    faces = unseen.subset(chosen)
    fit, val = np.arange(min(args.fit_faces, len(fit_all))), np.arange(min(args.fit_faces, len(fit_all)), len(chosen))
    images = torch.cat([b for b, _ in faces.iter_batches(512)])
    dlib = DlibEmbedder()
    start = time.perf_counter()
    dlib_unseen = dlib(faces)
    per_face = (time.perf_counter() - start) / len(faces)
    print(f"dlib: {len(faces)} unseen faces, {1000 * per_face:.0f} ms per face", flush=True)
    dlib_poison = dlib.embed_images(poison)
    vendor = Member("dlib", "dlib", dlib_unseen, dlib_poison)
    base, _ = load_checkpoint(args.base)
    features = trunk_features(base, faces, poison)
    key = trunk_key(base)
    start = time.perf_counter()
    with torch.no_grad():
        base.eval()(images[:256])
    iresnet_per_face = (time.perf_counter() - start) / min(256, len(images))
    clean = head_member("IResNet", base, str(args.base), key, features)
    bad = [head_member("IResNet(B)", load_checkpoint(r["run_dir"])[0], r["run_dir"], key, features, rows=slices[i])
           for i, r in enumerate(kept)]  # fmt: skip
    everything = np.arange(len(poison))
    rows: dict[str, list[dict[str, Any]]] = {}
    pairs = [("dlib / IResNet", vendor, clean, everything), ("IResNet / dlib", clean, vendor, everything)]
    for m in bad:
        own = np.arange(m.rows.start, m.rows.stop)
        pairs += [("dlib / IResNet(B)", vendor, m, own), ("IResNet(B) / dlib", m, vendor, own)]
    start = time.perf_counter()
    for i, (name, ref, probe, samples) in enumerate(pairs):
        rows.setdefault(name, []).append(pair_flags(ref, probe, samples, "affine", fit, val, args.steps, args.seed))
        eta = (time.perf_counter() - start) / (i + 1) * (len(pairs) - i - 1)
        print(f"\rpairs {i + 1}/{len(pairs)}  ETA {eta:4.0f} s", end="", flush=True)
    print()
    keep = np.ones(len(poison), bool)
    table = {name: row_summary(results, keep, backdoored="(B)" in name) for name, results in rows.items()}
    ids = np.asarray(faces.annotations["identity"])[val]
    payload = {
        "table": table,
        "rates": list(RATES),
        "dlib_verification_auroc_unseen": verification_auroc(dlib_unseen[val], ids),
        "iresnet_verification_auroc_unseen": verification_auroc(clean.unseen[val], ids),
        "kept_backdoored_networks": len(bad),
        "poisoned_samples": len(poison),
        "faces": {"fit": len(fit), "validation": len(val)},
        "seconds_per_face": {"dlib": per_face, "iresnet_whole_model": iresnet_per_face},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    out = write_result(args.name, payload)
    print(f"dlib verification AUROC on unseen synthetic people: {payload['dlib_verification_auroc_unseen']:.3f} "
          f"(our IResNet: {payload['iresnet_verification_auroc_unseen']:.3f})")  # fmt: skip
    print(f"{'ref / probe':<22} {'genuine cos':>11} " + " ".join(f"{r:>7}" for r in RATES) + "  (% poisoned "
          "flagged for clean pairs, missed for backdoored)")  # fmt: skip
    for name, row in table.items():
        cells = " ".join(f"{row[str(r)]:7.1f}" for r in RATES)
        print(f"{name:<22} {row['genuine_cos_mean']:11.3f} {cells}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
