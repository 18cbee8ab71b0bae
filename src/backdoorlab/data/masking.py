"""Grey out the eye regions of face crops: the control that shows gaze is in the eyes.

If a model trained and tested with both eyes hidden is far worse than one that sees
them, the labels are not recoverable from shortcuts (head pose, face shape, lighting).
The box around each eye spans its two corners plus a margin and is tall enough to
hide lids and iris at any gaze.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backdoorlab.data.arrays import ArrayDataset


@dataclass(frozen=True)
class EyeMask:
    """``width_margin`` and ``height`` are fractions of the corner-to-corner eye width."""

    width_margin: float = 0.35
    height: float = 1.1
    fill: int = 128

    def boxes(self, eye_corners: np.ndarray) -> np.ndarray:
        """(N, 4, 2) corners -> (N, 2, 4) integer boxes x1, y1, x2, y2 per eye."""
        c = np.asarray(eye_corners, np.float32).reshape(-1, 2, 2, 2)  # eye, corner, xy
        centre = c.mean(2)
        width = np.linalg.norm(c[:, :, 0] - c[:, :, 1], axis=-1)
        half_w = width * (0.5 + self.width_margin)
        half_h = width * self.height / 2
        box = np.stack(
            [centre[..., 0] - half_w, centre[..., 1] - half_h, centre[..., 0] + half_w, centre[..., 1] + half_h], -1
        )
        return np.round(box).astype(np.int64)

    def apply(self, images: np.ndarray, eye_corners: np.ndarray) -> np.ndarray:
        """A masked copy of uint8 (N, H, W, C) images."""
        out = np.array(images, copy=True)
        h, w = out.shape[1:3]
        for i, per_eye in enumerate(self.boxes(eye_corners)):
            for x1, y1, x2, y2 in per_eye:
                # clip both ends to the image: a negative end would index from the far side
                ys = slice(max(0, y1), max(0, min(h, y2 + 1)))
                xs = slice(max(0, x1), max(0, min(w, x2 + 1)))
                out[i, ys, xs] = self.fill
        return out

    def apply_dataset(self, ds: ArrayDataset) -> ArrayDataset:
        ds.require("eye_corners")
        meta = {k: v for k, v in ds.meta.items() if k != "fingerprint"}
        meta["eye_mask"] = {"width_margin": self.width_margin, "height": self.height}
        return ArrayDataset(self.apply(ds.images, ds.annotations["eye_corners"]), dict(ds.annotations), meta)
