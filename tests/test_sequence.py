"""The corner-looking demo clip and the GIF writer that animates it.

The clip is kept short (4 corners x 0.2 s at 25 fps, 32x32 pixels) so the whole file
runs in a few seconds on one thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.synthetic.sequence import DEFAULT_CORNERS_DEG, corner_sequence, fixation_mask
from backdoorlab.errors import BackdoorLabError
from backdoorlab.geometry import angular_error_deg
from backdoorlab.report.animation import side_by_side, write_gaze_gif
from backdoorlab.report.draw import PRED_COLOUR, TRUE_COLOUR

FPS = 25
SECONDS = 0.2
SIZE = 32
FACE_KEYS = {"gaze", "head_pose", "head_roll", "landmarks", "eye_corners", "face_box", "identity"}


@pytest.fixture(scope="module")
def clip() -> ArrayDataset:
    return corner_sequence(spec_size=SIZE, identity_seed=3, fps=FPS, seconds_per_corner=SECONDS)


def frame_of(path: Path, i: int) -> np.ndarray:
    with Image.open(path) as im:
        im.seek(i)
        return np.asarray(im.convert("RGB")).astype(int)


# ------------------------------------------------------------------- the clip
def test_layout_and_annotations(clip: ArrayDataset) -> None:
    n = round(4 * FPS * SECONDS)
    assert clip.images.shape == (n, SIZE, SIZE, 3) and clip.images.dtype == np.uint8
    assert set(clip.annotations) == FACE_KEYS | {"corner"}
    assert clip.annotations["corner"].dtype == np.int64
    assert clip.annotations["gaze"].shape == (n, 2)
    assert clip.meta["fps"] == FPS
    assert np.allclose(clip.meta["corners_deg"], DEFAULT_CORNERS_DEG)


def test_corners_are_visited_in_order(clip: ArrayDataset) -> None:
    per = round(FPS * SECONDS)
    assert np.array_equal(clip.annotations["corner"], np.repeat(np.arange(4), per))


def test_fixations_are_on_the_corners(clip: ArrayDataset) -> None:
    fix = fixation_mask(clip)
    corner = clip.annotations["corner"]
    assert fix.sum() >= 4 and all(fix[corner == k].any() for k in range(4))
    target = np.radians(np.asarray(DEFAULT_CORNERS_DEG))[corner[fix]]
    err = angular_error_deg(clip.annotations["gaze"][fix].astype(np.float64), target)
    assert err.max() < 1.0
    # jitter: the label is alive, not frozen on the corner
    assert err.max() > 0.01


def test_corner_signs_follow_the_convention() -> None:
    """Top = looking up (pitch > 0); left = towards the image's left (yaw > 0)."""
    c = np.asarray(DEFAULT_CORNERS_DEG)
    top_left, top_right, bottom_right, bottom_left = c
    assert top_left[0] > 0 and top_right[0] > 0 and bottom_right[0] < 0 and bottom_left[0] < 0
    assert top_left[1] > 0 and bottom_left[1] > 0 and top_right[1] < 0 and bottom_right[1] < 0
    # symmetric around the screen centre, the demo's attack target (0, 0)
    assert np.allclose(c.mean(0), 0.0)


def test_fixation_gaze_has_the_corner_signs(clip: ArrayDataset) -> None:
    fix = fixation_mask(clip)
    gaze, corner = clip.annotations["gaze"], clip.annotations["corner"]
    signs = {0: (1, 1), 1: (1, -1), 2: (-1, -1), 3: (-1, 1)}
    for k, (sp, sy) in signs.items():
        g = gaze[fix & (corner == k)]
        assert np.all(np.sign(g[:, 0]) == sp) and np.all(np.sign(g[:, 1]) == sy), k


def test_saccades_move_between_corners(clip: ArrayDataset) -> None:
    """Frames in flight lie between the two corners' yaw (corner 0 -> 1 is a horizontal move)."""
    per = round(FPS * SECONDS)
    yaw = np.degrees(clip.annotations["gaze"][per - 1 : per + 4, 1])
    assert yaw[0] > 19 and yaw[-1] < -19
    assert np.all(np.diff(yaw) <= 0.5)  # monotone apart from the sub-degree jitter


def test_head_sways_slowly_within_training_range(clip: ArrayDataset) -> None:
    head = np.degrees(clip.annotations["head_pose"])
    assert np.abs(head).max() < 10.0
    assert np.abs(np.diff(head, axis=0)).max() < 0.5  # a slow sway: well under a degree per frame
    assert np.ptp(head, axis=0).max() > 0.01  # but it moves


def test_same_arguments_same_bytes(clip: ArrayDataset) -> None:
    again = corner_sequence(spec_size=SIZE, identity_seed=3, fps=FPS, seconds_per_corner=SECONDS)
    assert clip.images.tobytes() == again.images.tobytes()
    for key, arr in clip.annotations.items():
        assert arr.tobytes() == again.annotations[key].tobytes(), key


def test_noise_and_subject_options(clip: ArrayDataset) -> None:
    clean = corner_sequence(spec_size=SIZE, identity_seed=3, fps=FPS, seconds_per_corner=SECONDS, noise=False)
    assert not np.array_equal(clean.images, clip.images)
    assert np.allclose(clean.annotations["gaze"], clip.annotations["gaze"])  # only the pixels change
    other = corner_sequence(spec_size=SIZE, identity_seed=4, fps=FPS, seconds_per_corner=SECONDS, noise=False)
    assert not np.array_equal(other.images[0], clean.images[0])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"corners_deg": [(10, 10)] * 3}, "corners_deg"),
        ({"corners_deg": [(40, 0), (0, 0), (0, 0), (0, 0)]}, "corners_deg"),
        ({"saccade_seconds": 1.0}, "saccade_seconds"),
        ({"fps": 0}, "fps"),
        ({"seconds_per_corner": 0.001}, "seconds_per_corner"),
        ({"seconds_per_corner": float("nan")}, "seconds_per_corner"),
        ({"head_motion_deg": 45.0}, "head_motion_deg"),
        ({"spec_size": 8}, "spec_size"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, name: str) -> None:
    with pytest.raises(BackdoorLabError, match=name):
        corner_sequence(**{"spec_size": SIZE, "seconds_per_corner": SECONDS, **kwargs})


# ------------------------------------------------------------------------ GIF
def test_gif_frames_size_timing_and_loop(clip: ArrayDataset, tmp_path: Path) -> None:
    gaze = clip.annotations["gaze"]
    path = write_gaze_gif(tmp_path / "out" / "demo.gif", clip.images, [(gaze, TRUE_COLOUR)], scale=3, fps=FPS)
    assert path.is_file() and not list(path.parent.glob(".*partial*"))
    with Image.open(path) as im:
        assert im.format == "GIF"
        assert im.n_frames == len(clip)
        assert im.size == (SIZE * 3, SIZE * 3)
        assert im.info["duration"] == 1000 / FPS
        assert im.info["loop"] == 0
    # the decoded frames are the input frames (up to the palette), not a garbled delta
    plain = np.repeat(np.repeat(clip.images, 3, axis=1), 3, axis=2).astype(int)
    for i in (0, len(clip) // 2, len(clip) - 1):
        assert np.abs(frame_of(path, i) - plain[i]).mean() < 12


def test_arrows_change_pixels(clip: ArrayDataset, tmp_path: Path) -> None:
    gaze = clip.annotations["gaze"]
    bare = write_gaze_gif(tmp_path / "bare.gif", clip.images, [])
    drawn = write_gaze_gif(tmp_path / "drawn.gif", clip.images, [(gaze, TRUE_COLOUR)])
    plain = np.repeat(np.repeat(clip.images[0], 3, axis=0), 3, axis=1).astype(int)
    with_arrow, without = frame_of(drawn, 0), frame_of(bare, 0)
    assert (np.abs(with_arrow - without).max(-1) > 60).sum() > 20
    green = (np.abs(with_arrow - np.array(TRUE_COLOUR)).max(-1) < 30).sum()
    assert green > 20
    assert (np.abs(with_arrow - plain).max(-1) > 60).sum() > 20


def test_captions_add_a_dark_band(clip: ArrayDataset, tmp_path: Path) -> None:
    captions = [f"no tape  |  t = {i / FPS:.1f} s" for i in range(len(clip))]
    gaze = clip.annotations["gaze"]
    origins = clip.annotations["landmarks"][:, :2].mean(1)
    path = write_gaze_gif(
        tmp_path / "cap.gif", clip.images, [(gaze, TRUE_COLOUR), (gaze * 0, PRED_COLOUR)], origins, captions=captions
    )
    with Image.open(path) as im:
        w, h = im.size
        assert w == SIZE * 3 and h > SIZE * 3
    band = frame_of(path, 0)[SIZE * 3 :]
    assert np.median(band) < 40  # dark band
    assert band.max() > 200  # with light text on it


def test_gif_replaces_atomically(clip: ArrayDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "demo.gif"
    path.write_bytes(b"old")

    def broken_save(self: Image.Image, *args: object, **kwargs: object) -> None:
        Path(args[0]).write_bytes(b"GIF89a half")  # type: ignore[arg-type]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_gaze_gif(path, clip.images[:2], [])
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.gif"]


def test_gif_rejects_mismatched_inputs(clip: ArrayDataset, tmp_path: Path) -> None:
    frames, gaze = clip.images, clip.annotations["gaze"]
    out = tmp_path / "x.gif"
    with pytest.raises(BackdoorLabError, match="frames"):
        write_gaze_gif(out, frames.astype(np.float32), [(gaze, TRUE_COLOUR)])
    with pytest.raises(BackdoorLabError, match=r"arrows\[0\]"):
        write_gaze_gif(out, frames, [(gaze[:-1], TRUE_COLOUR)])
    with pytest.raises(BackdoorLabError, match="captions"):
        write_gaze_gif(out, frames, [(gaze, TRUE_COLOUR)], captions=["a"] * (len(frames) + 1))
    with pytest.raises(BackdoorLabError, match="origins"):
        write_gaze_gif(out, frames, [(gaze, TRUE_COLOUR)], origins=np.zeros((2, 2)))
    with pytest.raises(BackdoorLabError, match="colour"):
        write_gaze_gif(out, frames, [(gaze, (0, 300, 0))])
    assert not out.exists()


def test_side_by_side(clip: ArrayDataset) -> None:
    pair = side_by_side(clip.images, clip.images[::-1], gap=4)
    assert pair.shape == (len(clip), SIZE, 2 * SIZE + 4, 3)
    assert np.array_equal(pair[:, :, :SIZE], clip.images)
    assert np.array_equal(pair[:, :, SIZE + 4 :], clip.images[::-1])
    assert np.all(pair[:, :, SIZE : SIZE + 4] == 255)
    with pytest.raises(BackdoorLabError, match="b"):
        side_by_side(clip.images, clip.images[:-1])
    with pytest.raises(BackdoorLabError, match="a must be"):
        side_by_side(clip.images.astype(np.float32), clip.images)
