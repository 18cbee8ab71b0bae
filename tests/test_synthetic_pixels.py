"""The fast renderer draws the same pixels as before it was made fast.

Datasets are cached under a key that names the spec and ``RENDERER_VERSION``, not the
bytes, so a speed-up that moved one last bit would silently mix old and new data (and
move every recorded result). Two checks:

* digests of whole datasets, recorded with the renderer of 56d3b4e (before the
  speed-up), which must come out byte for byte;
* the features computed on their pixel boxes only (the speed-up) against the same
  features computed on every pixel, on cameras and parameters well beyond the
  datasets' ranges: this one holds on any machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from invariants.test_gaze_pinned import PINNED_ENV

from backdoorlab.data.synthetic import faces, params, render

# sha256 of the images, recorded with the renderer of 56d3b4e (before the speed-up) under the
# portable kernels of tests/invariants/test_gaze_pinned.py, on an Intel Xeon
DIGESTS = {
    "face": "15c0c88ebf729dc31f9e5896bcf3be1078e16b10eb2b6e3d37979fba450e3959",
    "face_odd_size": "535a26ec1d5cf2aa86458ca6e6af660dd31c3d7bfeaf64712bdae741fb74f0d7",
    "eye": "fdc556bbdafe4a11936e66de81607fd96ac0dfb66888382bb7929df3b75eeede",
    "identities_with_accessories": "18865d12df2184a9c20b8d19bee20b52d31edd4ee919b4bfd5166b1a66967634",
}


@pytest.fixture(scope="module")
def pinned_digests() -> dict[str, str]:
    """The datasets' digests, rendered in a child process with the pinned portable kernels.

    Why a child with pinned kernels: the last bits follow the vector path MKL and oneDNN take
    (an Intel machine with AVX-512 renders other bytes when MKL is limited to AVX2), so digests
    recorded in-process hold only on the machine that recorded them. With the portable kernels
    they hold on any Intel x86-64; an AMD EPYC still renders other bytes with the very same code
    (see test_gaze_pinned), hence the skip.
    """
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.is_file():
        pytest.skip("digests recorded on an Intel x86-64 CPU under Linux")
    if "GenuineIntel" not in cpuinfo.read_text(errors="replace"):
        pytest.skip("digests recorded on an Intel x86-64 CPU; other CPUs render other last bits")
    env = {**os.environ, **PINNED_ENV}
    script = Path(__file__).parent / "invariants" / "synthetic_digests.py"
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("name", ["face", "face_odd_size", "eye"])
@pytest.mark.parametrize("workers", [1, 2])
def test_datasets_are_byte_identical_to_the_renderer_before_the_speedup(
    pinned_digests: dict[str, str], name: str, workers: int
) -> None:
    assert pinned_digests[f"{name}/{workers}"] == DIGESTS[name]


def test_identities_with_accessories_are_byte_identical_to_the_renderer_before_the_speedup(
    pinned_digests: dict[str, str],
) -> None:
    assert pinned_digests["identities_with_accessories"] == DIGESTS["identities_with_accessories"]


def _extreme_batches(seed: int, count: int) -> Iterator[tuple[str, tuple, dict]]:
    """Batches of faces beyond the datasets' ranges, under every kind of camera the renderer serves."""
    rng = np.random.default_rng(seed)
    wide = params.SamplingRanges(
        gaze_pitch=(-1.2, 1.2), gaze_yaw=(-1.2, 1.2), head_pitch_std=0.4, head_yaw_std=0.5,
        head_roll_std=0.3, head_limit=0.9, max_eye_in_head=1.5,
    )  # fmt: skip
    for case in range(count):
        n = int(rng.integers(1, 24))
        ident, view = params.sample_identities(rng, n), params.sample_images(rng, n, wide)
        if case % 2:  # expressions past their sampling ranges
            view.eyelid[:] = rng.uniform(0.0, 1.3, n)
            view.smile[:] = rng.uniform(-1.0, 1.5, n)
            view.mouth_open[:] = rng.uniform(0.0, 1.5, n)
            view.brow_raise[:] = rng.uniform(-1.5, 1.5, n)
        kw: dict = {"accessories": params.sample_accessories(rng, n, 0.5, 0.5)} if case % 3 == 1 else {}
        kind = ("face", "eye", "scene")[case % 3]
        if kind == "face":
            size = int(rng.choice([16, 33, 64, 100]))
            cam, trans = faces.face_camera(n, size, distance=float(rng.uniform(350, 900)))
        elif kind == "eye":
            cam, trans = faces.eye_camera(ident, view, rng.integers(0, 2, n), 36, 60)
        else:
            h, w = int(rng.integers(40, 120)), int(rng.integers(40, 140))
            centres = np.stack([rng.uniform(-10, w + 10, n), rng.uniform(-10, h + 10, n)], 1)
            cam, trans = faces.scene_camera(centres, rng.uniform(8, 90, n), h, w)
            kw["neck_fade"] = (20.0, 60.0)
        yield kind, (ident, view, cam, trans), kw


def test_features_on_their_boxes_match_features_on_every_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    for kind, args, kw in _extreme_batches(seed=3, count=12):
        monkeypatch.setattr(render, "BOXES", True)
        rgb, alpha = render.render_faces(*args, **kw)
        monkeypatch.setattr(render, "BOXES", False)
        rgb_dense, alpha_dense = render.render_faces(*args, **kw)
        assert torch.equal(alpha, alpha_dense), kind
        assert torch.equal(rgb, rgb_dense), kind


def test_fused_norm_is_torchs_norm() -> None:
    """Where the planar norm is used (it was checked at import), it gives torch's bits on awkward inputs too."""
    if not render._FUSED_NORM:
        pytest.skip("the planar norm did not match torch's at import here: torch's own norm is used")
    g = torch.Generator().manual_seed(1)
    v = tuple(torch.randn(3, 5000, generator=g) * torch.exp(torch.randn(3, 5000, generator=g) * 6))
    want = torch.stack(v, -1).norm(dim=-1)
    assert torch.equal(render._norm_fused(v), want)  # type: ignore[arg-type]


@pytest.mark.parametrize(("height", "width"), [(64, 64), (16, 16), (32, 32)])
def test_background_resize_is_torchs_bicubic(height: int, width: int) -> None:
    """The separable texture resize gives torch's bits at the sizes it is used for, on other data too."""
    x = torch.randn((9, 3, 4, 4), generator=torch.Generator().manual_seed(height + width)) * 0.12
    want = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    render._bicubic(x, height, width)  # the first call checks the fast path at this size
    if not render._BICUBIC_SAME.get((4, 4, height, width), False):
        pytest.skip(f"the separable resize does not match torch's at {height}x{width} here: torch's is used")
    assert torch.equal(render._bicubic_separable(x, height, width), want)
