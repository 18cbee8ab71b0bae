"""Bench: synthetic face-crop rendering throughput (images per second, 64x64).

Three numbers, all measured in this run:

* ``eager_1proc``: the plain torch renderer, one process, steady state;
* ``compiled_1proc``: the ``torch.compile``-d renderer, one process, after warm-up;
* ``synthesize_end_to_end``: ``synthesize`` of a whole dataset with its defaults
  (compiled, one worker process per core), *including* process start and compilation.

    python bench/renderer_throughput.py [--images 12000]
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

from backdoorlab.data.synthetic import dataset as synth  # noqa: E402
from backdoorlab.data.synthetic.dataset import SyntheticGazeSpec, synthesize  # noqa: E402


def steady_state(use_compile: bool, batches: int = 12) -> float:
    spec = SyntheticGazeSpec(identities=batches, images_per_identity=synth.CHUNK, size=64)
    synthesize(
        SyntheticGazeSpec(identities=1, images_per_identity=synth.CHUNK, size=64), compile=use_compile, workers=1
    )
    t = time.perf_counter()
    synthesize(spec, compile=use_compile, workers=1)
    return spec.n_images / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12000)
    args = ap.parse_args()
    eager = steady_state(False)
    compiled = steady_state(True)
    ids = max(1, args.images // 200)
    spec = SyntheticGazeSpec(identities=ids, images_per_identity=200, size=64, seed=123)
    t = time.perf_counter()
    ds = synthesize(spec)
    e2e = len(ds) / (time.perf_counter() - t)
    row = {
        "eager_1proc": eager,
        "compiled_1proc": compiled,
        "synthesize_end_to_end": e2e,
        "end_to_end_images": len(ds),
        "size": 64,
        "threads": torch.get_num_threads(),
        "workers": synth.os.cpu_count(),
    }
    write_result("renderer_throughput", row)
    print(
        f"renderer 64x64: eager {eager:.0f}/s, compiled {compiled:.0f}/s (1 process), "
        f"synthesize() end to end {e2e:.0f}/s for {len(ds)} images"
    )
    assert np.isfinite(e2e)


if __name__ == "__main__":
    main()
