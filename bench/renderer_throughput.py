"""Bench: synthetic face-crop rendering throughput (images per second, 64x64).

Numbers, all measured in this run:

* ``eager_1proc`` / ``compiled_1proc``: steady state of one process using every core,
  plain torch (one rendering thread per core, each with one torch thread) vs
  ``torch.compile`` (one thread with every core's torch thread; compilation done before
  timing);
* ``eager_end_to_end``: ``synthesize(compile=False)`` of a whole dataset, one rendering
  thread per core (the default below 50,000 images; no process to start);
* ``compiled_end_to_end``: ``synthesize(compile=True)``, one thread, including the
  compilation (~26 s per new process).

    python bench/renderer_throughput.py [--images 12000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.data.synthetic import dataset as synth  # noqa: E402
from backdoorlab.data.synthetic.dataset import SyntheticGazeSpec, synthesize  # noqa: E402


def steady_state(use_compile: bool, batches: int = 12) -> float:
    spec = SyntheticGazeSpec(identities=batches, images_per_identity=synth.CHUNK, size=64)
    synthesize(SyntheticGazeSpec(identities=1, images_per_identity=synth.CHUNK, size=64), compile=use_compile)
    t = time.perf_counter()
    synthesize(spec, compile=use_compile)
    return spec.n_images / (time.perf_counter() - t)


def end_to_end(spec: SyntheticGazeSpec, use_compile: bool) -> float:
    torch._dynamo.reset()  # a fresh compilation, as a new process would pay
    t = time.perf_counter()
    ds = synthesize(spec, compile=use_compile)
    return len(ds) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12000)
    args = ap.parse_args()
    eager = steady_state(False)
    compiled = steady_state(True)
    spec = SyntheticGazeSpec(identities=max(1, args.images // 200), images_per_identity=200, size=64, seed=123)
    eager_e2e = end_to_end(spec, False)
    compiled_e2e = end_to_end(spec, True)
    row = {
        "eager_1proc": eager,
        "compiled_1proc": compiled,
        "eager_end_to_end": eager_e2e,
        "compiled_end_to_end": compiled_e2e,
        "end_to_end_images": spec.n_images,
        "size": 64,
        "threads": torch.get_num_threads(),
        "workers": synth.default_workers(),  # rendering threads (eager)
        "worker_kind": "threads",  # results before 2026-12-03 rendered on one process per core
    }
    write_result("renderer_throughput", row)
    print(
        f"renderer 64x64, steady state in one process: eager {eager:.0f}/s, compiled {compiled:.0f}/s; "
        f"synthesize() of {spec.n_images} images end to end: eager ({row['workers']} threads) "
        f"{eager_e2e:.0f}/s, compiled (1 process) {compiled_e2e:.0f}/s"
    )


if __name__ == "__main__":
    main()
