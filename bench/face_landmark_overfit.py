"""Bench (a sanity check): can our RetinaFace fit five landmarks at all? Overfit 16 tiny scenes.

    python bench/face_landmark_overfit.py

Why: the clean bench detector finds faces well (AP50) but places landmarks poorly
(NME far above the target). If the box/landmark coding, matching or flip had a bug, a
model could not fit landmarks even on its training images. This trains on the 16
training scenes of ``SyntheticSceneSpec.tiny()`` (96 px) for 4 x 60 epochs and reports
the landmark error on those same scenes after each round.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.data.synthetic.scenes import SyntheticSceneSpec, synthesize_scenes  # noqa: E402
from backdoorlab.metrics.landmarks import landmark_errors  # noqa: E402
from backdoorlab.tasks.face_detection import FaceDetectionTask, build_retinaface  # noqa: E402
from backdoorlab.tasks.face_detection.task import ground_truth  # noqa: E402
from backdoorlab.training import TrainSettings, train  # noqa: E402

ROUNDS, EPOCHS = 4, 60


def main() -> None:
    torch.manual_seed(0)
    data = synthesize_scenes(SyntheticSceneSpec.tiny(), ["train"], workers=1)["train"]
    task, model = FaceDetectionTask(), build_retinaface(canvas=96)
    rounds = []
    for r in range(ROUNDS):
        settings = TrainSettings(epochs=EPOCHS, batch_size=16, lr=3e-3, warmup_epochs=0, seed=r, progress=False)
        train(model, task, data, settings)
        errors = landmark_errors(task.predict(model, data), ground_truth(data))
        rounds.append(
            {
                "epochs": EPOCHS * (r + 1),
                "faces_matched": errors.matched,
                "nme_median": float(np.nanmedian(errors.nme)),
                "point_error_px_mean": float(np.nanmean(errors.point_error_px)),
            }
        )
        print(f"after {EPOCHS * (r + 1)} epochs: {rounds[-1]}", flush=True)
    write_result("face_landmark_overfit", {"scenes": len(data), "faces": data.instances.n_instances, "rounds": rounds})


if __name__ == "__main__":
    main()
