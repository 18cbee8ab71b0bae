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

import hashlib
import platform
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from backdoorlab.data.synthetic import faces, params, render
from backdoorlab.data.synthetic.dataset import SyntheticGazeSpec, synthesize
from backdoorlab.data.synthetic.identities import SyntheticIdentitySpec, synthesize_identities

# sha256 of the images, by torch's CPU kernels (ATEN_CPU_CAPABILITY): recorded with the
# renderer of 56d3b4e on the Intel Xeon (AVX-512) of bench/results
DIGESTS = {
    "AVX512": {
        "face": "e22e4dd4837960da32f2984e9ff3fa781bbf83e8e0216967c7b184c896f22de8",
        "face_odd_size": "081902bb0e4e73e5515b461d37af4fae757df07ab96250a77104f4b9d2367249",
        "eye": "7bff997cfc6a5b314ab3f50c736289b003cd27b7c50cd6ab9afe1ecda4a73de7",
        "identities_with_accessories": "417317706dbc12928d96ab91a9fa2eef0abc0ee802eec140e93817af78773e07",
    },
    "DEFAULT": {  # the portable kernels of tests/invariants/test_gaze_pinned.py
        "face": "15c0c88ebf729dc31f9e5896bcf3be1078e16b10eb2b6e3d37979fba450e3959",
        "face_odd_size": "535a26ec1d5cf2aa86458ca6e6af660dd31c3d7bfeaf64712bdae741fb74f0d7",
        "eye": "fdc556bbdafe4a11936e66de81607fd96ac0dfb66888382bb7929df3b75eeede",
        "identities_with_accessories": "18865d12df2184a9c20b8d19bee20b52d31edd4ee919b4bfd5166b1a66967634",
    },
}
SPECS = {
    "face": SyntheticGazeSpec(identities=3, images_per_identity=100, size=64, seed=123),
    "face_odd_size": SyntheticGazeSpec(identities=2, images_per_identity=30, size=50, seed=4),
    "eye": SyntheticGazeSpec(kind="eye", identities=2, images_per_identity=40, seed=9),
}


def _digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _recorded_digests() -> dict[str, str]:
    """The digests for this machine's kernels; skips where none were recorded or the CPU is not an Intel one.

    Other CPUs render other last bits with the very same code (an AMD EPYC does, see
    tests/invariants/test_gaze_pinned.py), so the digests only apply where they were made.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in DIGESTS:
        pytest.skip(f"no digests recorded for torch's {capability} kernels")
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or (
        cpuinfo.is_file() and "GenuineIntel" not in cpuinfo.read_text(errors="replace")
    ):
        pytest.skip("digests recorded on an Intel x86-64 CPU; other CPUs render other last bits")
    return DIGESTS[capability]


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("workers", [1, 2])
def test_datasets_are_byte_identical_to_the_renderer_before_the_speedup(name: str, workers: int) -> None:
    want = _recorded_digests()[name]
    assert _digest(synthesize(SPECS[name], compile=False, workers=workers).images) == want


def test_identities_with_accessories_are_byte_identical_to_the_renderer_before_the_speedup() -> None:
    want = _recorded_digests()["identities_with_accessories"]
    spec = SyntheticIdentitySpec.tiny(identities=8, mean_images=6, glasses_wearers=0.5, hat_wearers=0.5)
    assert _digest(synthesize_identities(spec).images) == want


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
    """The planar norm is used only where it gives torch's bits; where it is, it gives them on awkward inputs too."""
    g = torch.Generator().manual_seed(1)
    v = tuple(torch.randn(3, 5000, generator=g) * torch.exp(torch.randn(3, 5000, generator=g) * 6))
    want = torch.stack(v, -1).norm(dim=-1).clamp_min(1e-9)
    got = render._unit(v)  # type: ignore[arg-type]
    assert all(torch.equal(got[i], v[i] / want) for i in range(3))


@pytest.mark.parametrize(("height", "width"), [(64, 64), (16, 16), (36, 60), (50, 50), (112, 112)])
def test_background_resize_is_torchs_bicubic(height: int, width: int) -> None:
    """The faster texture resize is used where it gives torch's bits, and gives them on other data too."""
    x = torch.randn((9, 3, 4, 4), generator=torch.Generator().manual_seed(height + width)) * 0.12
    want = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    assert torch.equal(render._bicubic(x, height, width), want)
