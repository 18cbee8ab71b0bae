"""Real-dataset loaders read the exact published layouts and convert labels correctly.

Fixtures are written in the releases' own formats (see ``fixtures_real``) with known
ground truth; the checks are geometric (a target straight ahead gives (0, 0), up/left
give positive pitch/yaw, angles to the viewing axis are preserved by normalisation)
and round trips of the published labels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from backdoorlab.data._realio import resize_area
from backdoorlab.data.ethxgaze import load_ethxgaze
from backdoorlab.data.mpiifacegaze import (
    load_mpiifacegaze_normalized,
    load_mpiifacegaze_raw,
    normalize_face,
)
from backdoorlab.data.mpiigaze import load_mpiigaze_normalized
from backdoorlab.data.real import REAL_LOADERS, load_real_dataset
from backdoorlab.errors import ConfigError, DatasetError
from backdoorlab.geometry import pitchyaw_to_vector, rotation_matrix

from .fixtures_real import (
    CAMERA,
    RawSample,
    pattern_images,
    truncate,
    write_ethxgaze_subject,
    write_mpiifacegaze_normalized,
    write_mpiifacegaze_raw,
    write_mpiigaze_day,
    write_mpiigaze_eval_list,
)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def _raises(fn, *needles: str) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        fn()
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} not in {info.value}"
    return info.value


# ====================================================================== MPIIFaceGaze raw
FC = np.array([0.0, 0.0, 600.0])
GENERAL = RawSample(np.array([0.1, -0.2, 0.05]), np.array([40.0, -30.0, 550.0]), np.array([-100.0, 50.0, 0.0]))


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, list[RawSample]]]:
    subjects = {
        0: [
            RawSample(np.zeros(3), FC, np.zeros(3)),  # frontal, target = camera (straight ahead)
            RawSample(np.zeros(3), FC, FC + np.array([-200.0, -200.0, -600.0])),  # up and left
            RawSample(np.array([0.0, 0.0, np.deg2rad(25.0)]), FC, np.zeros(3), day="day02"),  # roll
        ],
        3: [
            GENERAL,
            RawSample(
                np.array([-0.15, 0.25, -0.1]),
                np.array([-60.0, 20.0, 700.0]),
                np.array([80.0, -40.0, 10.0]),
            ),
        ],
    }
    root = write_mpiifacegaze_raw(tmp_path_factory.mktemp("mpiifacegaze"), subjects)
    return root, subjects


def test_raw_layout_shapes_and_identity(raw_root) -> None:
    root, _ = raw_root
    ds = load_mpiifacegaze_raw(root, size=64)
    assert ds.images.shape == (5, 64, 64, 3) and ds.images.dtype == np.uint8
    assert ds.annotations["gaze"].shape == (5, 2) and ds.annotations["gaze"].dtype == np.float32
    assert ds.annotations["head_pose"].dtype == np.float32
    assert ds.annotations["eye_corners"].shape == (5, 4, 2)
    assert ds.annotations["identity"].tolist() == [0, 0, 0, 3, 3]
    assert ds.annotations["identity"].dtype == np.int64
    assert ds.meta["name"] == "mpiifacegaze-raw" and ds.meta["source"] == str(root)
    assert "conventions" in ds.meta
    only = load_mpiifacegaze_raw(root, subjects=["p03"], size=32, max_per_subject=1)
    assert only.images.shape == (1, 32, 32, 3) and only.annotations["identity"].tolist() == [3]


def test_raw_frontal_straight_ahead_is_zero_and_centred(raw_root) -> None:
    root, _ = raw_root
    ds = load_mpiifacegaze_raw(root, subjects=[0], size=64)
    np.testing.assert_allclose(ds.annotations["gaze"][0], [0.0, 0.0], atol=1e-6)
    # the MPII head frame equals ours: an unrotated head faces the camera -> (0, 0)
    np.testing.assert_allclose(ds.annotations["head_pose"][0], [0.0, 0.0], atol=1e-6)
    img = ds.images[0]
    r, g, b = (int(v) for v in img[32, 32])
    assert r > 200 and g < 60 and b < 60, "face centre (red disk) must land mid-crop, in RGB order"
    c = ds.annotations["eye_corners"][0]
    assert c[0, 0] < c[1, 0] < c[2, 0] < c[3, 0], "corners must run image-left to image-right"
    assert abs(c[0, 0] + c[3, 0] - 63.0) < 0.6 and abs(c[0, 1] - c[3, 1]) < 0.6
    for k, channel in ((0, 1), (3, 2)):  # green at the left outer corner, blue at the right one
        px = img[round(float(c[k, 1])), round(float(c[k, 0]))].astype(int)
        assert px[channel] > 180 and px.sum() - px[channel] < 120


def test_raw_up_left_target_signs_and_values(raw_root) -> None:
    root, _ = raw_root
    gaze = load_mpiifacegaze_raw(root, subjects=[0], size=32).annotations["gaze"][1]
    d = np.array([-200.0, -200.0, -600.0])
    assert gaze[0] > 0 and gaze[1] > 0  # looking up and to the image's left
    np.testing.assert_allclose(gaze, [np.arcsin(200 / np.linalg.norm(d)), np.arctan2(200, 600)], atol=1e-6)


def test_raw_roll_is_removed(raw_root) -> None:
    root, subjects = raw_root
    ds = load_mpiifacegaze_raw(root, subjects=[0], size=64)
    raw_lm = subjects[0][2].landmarks
    assert abs(raw_lm[0, 1] - raw_lm[3, 1]) > 20  # the raw frame shows a strongly rolled head
    c = ds.annotations["eye_corners"][2]
    assert abs(c[0, 1] - c[3, 1]) < 0.6  # the eye line is horizontal after normalisation
    np.testing.assert_allclose(ds.annotations["head_pose"][2], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(ds.annotations["gaze"][2], [0.0, 0.0], atol=1e-6)


def test_raw_general_pose_preserves_angles_to_viewing_axis(raw_root) -> None:
    root, subjects = raw_root
    ds = load_mpiifacegaze_raw(root, subjects=[3], size=32)
    for i, s in enumerate(subjects[3]):
        z = np.array([0.0, 0.0, 1.0])
        gaze_vec = pitchyaw_to_vector(ds.annotations["gaze"][i].astype(np.float64))
        assert abs(_angle(gaze_vec, z) - _angle(s.gaze_target - s.face_centre, s.face_centre)) < 1e-5
        rot, _ = cv2.Rodrigues(s.rvec.reshape(3, 1))
        head_vec = pitchyaw_to_vector(ds.annotations["head_pose"][i].astype(np.float64))
        assert abs(_angle(head_vec, z) - _angle(-rot[:, 2], s.face_centre)) < 1e-5


def test_distortion_path_matches_plain_warp() -> None:
    frame = pattern_images(1, 480, 640, seed=3)[0]
    args = (frame, CAMERA)
    kw = dict(
        face_centre=GENERAL.face_centre,
        head_rvec=GENERAL.rvec,
        gaze_target=GENERAL.gaze_target,
        landmarks=np.array([[300.0, 200.0], [350.0, 210.0]]),
        roi_size=112,
    )
    plain = normalize_face(*args, np.zeros(5), **kw)
    remap = normalize_face(*args, np.array([1e-12, 0, 0, 0, 0]), **kw)
    assert np.mean(np.abs(plain.image.astype(int) - remap.image.astype(int))) < 1.0
    np.testing.assert_allclose(plain.landmarks, remap.landmarks, atol=1e-4)
    np.testing.assert_allclose(plain.gaze, remap.gaze, atol=1e-12)


def test_raw_errors_name_file_and_field(tmp_path: Path) -> None:
    def fresh(name: str) -> Path:
        return write_mpiifacegaze_raw(tmp_path / name, {1: [RawSample(np.zeros(3), FC, np.zeros(3))]})

    root = fresh("nocam")
    (root / "p01" / "Calibration" / "Camera.mat").unlink()
    _raises(lambda: load_mpiifacegaze_raw(root), "Camera.mat", "cameraMatrix")

    root = fresh("trunc")
    truncate(root / "p01" / "Calibration" / "Camera.mat", 0.3)
    _raises(lambda: load_mpiifacegaze_raw(root), "Camera.mat", "cameraMatrix")

    root = fresh("nofield")
    scipy.io.savemat(root / "p01" / "Calibration" / "Camera.mat", {"cameraMatrix": CAMERA})
    _raises(lambda: load_mpiifacegaze_raw(root), "Camera.mat", "distCoeffs")

    root = fresh("shape")
    scipy.io.savemat(
        root / "p01" / "Calibration" / "Camera.mat",
        {"cameraMatrix": CAMERA[:2], "distCoeffs": np.zeros((1, 5))},
    )
    _raises(lambda: load_mpiifacegaze_raw(root), "Camera.mat", "cameraMatrix", "shape")

    root = fresh("columns")
    txt = root / "p01" / "p01.txt"
    txt.write_text(" ".join(txt.read_text().split()[:-2]) + "\n")
    _raises(lambda: load_mpiifacegaze_raw(root), "p01.txt", "columns")

    root = fresh("noimage")
    (root / "p01" / "day01" / "0001.jpg").unlink()
    _raises(lambda: load_mpiifacegaze_raw(root), "0001.jpg", "image")

    root = fresh("notxt")
    (root / "p01" / "p01.txt").unlink()
    _raises(lambda: load_mpiifacegaze_raw(root), "p01.txt", "annotation")

    _raises(lambda: load_mpiifacegaze_raw(tmp_path / "nowhere"), "nowhere")
    _raises(lambda: load_mpiifacegaze_raw(fresh("subj"), subjects=[7]), "7")


# =============================================================== MPIIFaceGaze normalised
H, W = 20, 28  # non-square so any stray transpose changes the shape


def _face_labels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.empty((n, 16))
    lab[:, :4] = rng.uniform(-0.6, 0.6, (n, 4))
    lab[:, 4:] = rng.uniform(2, 18, (n, 12))
    return lab


@pytest.mark.parametrize("v73", [True, False])
def test_normalized_layout_round_trip(tmp_path: Path, v73: bool) -> None:
    imgs, lab = pattern_images(3, H, W, seed=1), _face_labels(3, 1)
    path = write_mpiifacegaze_normalized(tmp_path / "p05.mat", imgs, lab, v73=v73)
    if v73:
        assert path.read_bytes()[:10] == b"MATLAB 7.3"
        with h5py.File(path, "r") as f:  # what h5py sees of MATLAB's 16 x N and H x W x 3 x N
            assert f["Data/label"].shape == (3, 16) and f["Data/data"].shape == (3, 3, H, W)
    else:
        assert scipy.io.loadmat(path)["Data"][0, 0]["data"].shape == (W, H, 3, 3)
    ds = load_mpiifacegaze_normalized(path, size=(H, W))
    np.testing.assert_array_equal(ds.images, imgs)  # upright and RGB again
    np.testing.assert_allclose(ds.annotations["gaze"], lab[:, :2], atol=1e-6)
    np.testing.assert_allclose(ds.annotations["head_pose"], lab[:, 2:4], atol=1e-6)
    assert ds.annotations["identity"].tolist() == [5, 5, 5]
    assert "eye_corners" not in ds.annotations
    assert ds.meta["name"] == "mpiifacegaze-normalized"
    small = load_mpiifacegaze_normalized(path, size=16, with_eye_corners=True)
    assert small.images.shape == (3, 16, 16, 3) and small.images.dtype == np.uint8
    np.testing.assert_array_equal(small.images[1], resize_area(imgs[1], (16, 16)))
    corners = small.annotations["eye_corners"]
    np.testing.assert_allclose(corners[:, :, 0], (lab[:, 4:12:2] + 0.5) * 16 / W - 0.5, atol=1e-5)
    np.testing.assert_allclose(corners[:, :, 1], (lab[:, 5:12:2] + 0.5) * 16 / H - 0.5, atol=1e-5)


def test_normalized_folder_subjects_and_subsample(tmp_path: Path) -> None:
    for num in (0, 1):
        write_mpiifacegaze_normalized(tmp_path / f"p{num:02d}.mat", pattern_images(4, H, W, num), _face_labels(4, num))
    ds = load_mpiifacegaze_normalized(tmp_path, size=8)
    assert ds.annotations["identity"].tolist() == [0] * 4 + [1] * 4
    part = load_mpiifacegaze_normalized(tmp_path, subjects=["p01"], size=8, max_per_subject=2, chunk=1)
    assert part.annotations["identity"].tolist() == [1, 1]
    np.testing.assert_allclose(part.annotations["gaze"], _face_labels(4, 1)[[0, 3], :2], atol=1e-6)


def test_normalized_errors_name_file_and_field(tmp_path: Path) -> None:
    imgs, lab = pattern_images(2, H, W), _face_labels(2, 0)
    _raises(lambda: load_mpiifacegaze_normalized(tmp_path / "p00.mat"), "p00.mat")

    path = truncate(write_mpiifacegaze_normalized(tmp_path / "t" / "p00.mat", imgs, lab), 0.5)
    _raises(lambda: load_mpiifacegaze_normalized(path), "p00.mat", "Data")

    path = write_mpiifacegaze_normalized(tmp_path / "m" / "p00.mat", imgs, lab)
    with h5py.File(path, "r+") as f:
        del f["Data/label"]
    _raises(lambda: load_mpiifacegaze_normalized(path), "p00.mat", "Data/label", "missing")

    path = write_mpiifacegaze_normalized(tmp_path / "s" / "p00.mat", imgs, lab)
    with h5py.File(path, "r+") as f:
        del f["Data/label"]
        f["Data/label"] = np.zeros((5, 16))
    _raises(lambda: load_mpiifacegaze_normalized(path), "p00.mat", "Data/label", "shape")

    path = write_mpiifacegaze_normalized(tmp_path / "d" / "p00.mat", imgs, lab)
    with h5py.File(path, "r+") as f:
        del f["Data/data"]
        f["Data/data"] = np.zeros((2, H, W), np.uint8)
    _raises(lambda: load_mpiifacegaze_normalized(path), "p00.mat", "Data/data", "shape")

    path = write_mpiifacegaze_normalized(tmp_path / "v5" / "p00.mat", imgs, lab, v73=False)
    scipy.io.savemat(path, {"Data": {"data": np.zeros((W, H, 3, 2), np.uint8)}})
    _raises(lambda: load_mpiifacegaze_normalized(path), "p00.mat", "Data/label")
    truncate(path, 0.5)
    _raises(lambda: load_mpiifacegaze_normalized(path), "p00.mat", "Data")


# =========================================================================== MPIIGaze
def _eye(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gaze_py = rng.uniform(-0.5, 0.5, (n, 2))
    head_py = rng.uniform(-0.4, 0.4, (n, 2))
    rolls = rng.uniform(-0.3, 0.3, n)
    poses = np.stack(
        [cv2.Rodrigues(rotation_matrix(y, p, r))[0].ravel() for (p, y), r in zip(head_py, rolls, strict=True)]
    )
    image = rng.integers(0, 256, (n, 36, 60), dtype=np.uint8)
    image[:, :, :10] = 255  # bright left edge: a flip moves it to the right
    return {"image": image, "gaze": pitchyaw_to_vector(gaze_py), "pose": poses}, gaze_py, head_py


@pytest.fixture(scope="module")
def mpiigaze_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mpiigaze")
    truth: dict = {}
    for subj, days in ((0, (3, 2)), (1, (2,))):
        for d, n in enumerate(days, 1):
            left, lg, lh = _eye(n, seed=10 * subj + d)
            right, rg, rh = _eye(n, seed=100 + 10 * subj + d)
            names = [f"{i + 1:04d}.jpg" for i in range(n)]
            write_mpiigaze_day(
                root / "Data" / "Normalized" / f"p{subj:02d}" / f"day{d:02d}.mat",
                left,
                right,
                names,
            )
            truth[(subj, d)] = dict(left=(left, lg, lh), right=(right, rg, rh), names=names)
    write_mpiigaze_eval_list(
        root,
        0,
        [("day02/0002.jpg", "right"), ("day01/0001.jpg", "left"), ("day01/0003.jpg", "right")],
    )
    return root, truth


def test_mpiigaze_both_eyes_flip_and_labels(mpiigaze_root) -> None:
    root, truth = mpiigaze_root
    ds = load_mpiigaze_normalized(root)
    assert ds.images.shape == (14, 36, 60, 1) and ds.images.dtype == np.uint8
    assert ds.annotations["identity"].tolist() == [0] * 10 + [1] * 4
    assert ds.annotations["eye_side"].tolist()[:6] == [0, 0, 0, 1, 1, 1]
    left, lg, lh = truth[(0, 1)]["left"]
    right, rg, rh = truth[(0, 1)]["right"]
    np.testing.assert_array_equal(ds.images[:3, :, :, 0], left["image"])
    np.testing.assert_allclose(ds.annotations["gaze"][:3], lg, atol=1e-5)
    np.testing.assert_allclose(ds.annotations["head_pose"][:3], lh, atol=1e-5)
    np.testing.assert_array_equal(ds.images[3:6, :, :, 0], right["image"][:, :, ::-1])
    np.testing.assert_allclose(ds.annotations["gaze"][3:6], rg * [1, -1], atol=1e-5)  # mirrored yaw
    np.testing.assert_allclose(ds.annotations["head_pose"][3:6], rh * [1, -1], atol=1e-5)
    assert ds.meta["name"] == "mpiigaze-normalized" and ds.meta["flip_right"] is True


def test_mpiigaze_options(mpiigaze_root) -> None:
    root, truth = mpiigaze_root
    right, rg, _ = truth[(0, 1)]["right"]
    plain = load_mpiigaze_normalized(root / "Data" / "Normalized", subjects=[0], eye="right", flip_right=False)
    assert plain.images.shape[0] == 5 and set(plain.annotations["eye_side"].tolist()) == {1}
    np.testing.assert_array_equal(plain.images[:3, :, :, 0], right["image"])
    np.testing.assert_allclose(plain.annotations["gaze"][:3], rg, atol=1e-5)
    left = load_mpiigaze_normalized(root, subjects=["p01"], eye="left", size=(18, 30), max_per_subject=1)
    assert left.images.shape == (1, 18, 30, 1) and left.annotations["identity"].tolist() == [1]
    with pytest.raises(DatasetError, match="eye"):
        load_mpiigaze_normalized(root, eye="middle")


def test_mpiigaze_evaluation_subset(mpiigaze_root) -> None:
    root, truth = mpiigaze_root
    ds = load_mpiigaze_normalized(root, subjects=[0], evaluation_subset=True)
    assert ds.annotations["eye_side"].tolist() == [0, 1, 1]  # day01 lines first, in list order
    _, lg, _ = truth[(0, 1)]["left"]
    _, rg1, _ = truth[(0, 1)]["right"]
    _, rg2, _ = truth[(0, 2)]["right"]
    expected = np.stack([lg[0], rg1[2] * [1, -1], rg2[1] * [1, -1]])
    np.testing.assert_allclose(ds.annotations["gaze"], expected, atol=1e-5)
    _raises(lambda: load_mpiigaze_normalized(root, subjects=[1], evaluation_subset=True), "p01.txt")


def test_mpiigaze_errors_name_file_and_field(tmp_path: Path) -> None:
    left, _, _ = _eye(2, 0)
    right, _, _ = _eye(2, 1)
    day = tmp_path / "Data" / "Normalized" / "p00" / "day01.mat"

    write_mpiigaze_day(day, {"image": left["image"], "pose": left["pose"]}, right, ["a", "b"])
    _raises(lambda: load_mpiigaze_normalized(tmp_path), "day01.mat", "data.left.gaze", "missing")

    write_mpiigaze_day(day, {**left, "gaze": left["gaze"][:, :2]}, right, ["a", "b"])
    _raises(lambda: load_mpiigaze_normalized(tmp_path), "day01.mat", "data.left.gaze", "shape")

    write_mpiigaze_day(day, left, {**right, "pose": right["pose"][:1]}, ["a", "b"])
    _raises(lambda: load_mpiigaze_normalized(tmp_path), "day01.mat", "data.right.pose", "shape")

    scipy.io.savemat(day, {"filenames": np.array(["a"])})
    _raises(lambda: load_mpiigaze_normalized(tmp_path), "day01.mat", "data")

    write_mpiigaze_day(day, left, right, ["a", "b"])
    truncate(day, 0.5)
    _raises(lambda: load_mpiigaze_normalized(tmp_path), "day01.mat", "data")

    _raises(lambda: load_mpiigaze_normalized(tmp_path / "missing"), "missing")


# ========================================================================== ETH-XGaze
def _eth_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lm = rng.uniform(1, 15, (n, 68, 2))
    return rng.uniform(-1, 1, (n, 2)), rng.uniform(-0.8, 0.8, (n, 2)), lm


def test_ethxgaze_train_files(tmp_path: Path) -> None:
    truth = {}
    for num in (3, 7):
        imgs = pattern_images(5, 16, 16, seed=num)
        g, h, lm = _eth_labels(5, num)
        write_ethxgaze_subject(tmp_path / "train" / f"subject{num:04d}.h5", imgs, g, h, lm)
        truth[num] = (imgs, g, h, lm)
    ds = load_ethxgaze(tmp_path / "train", size=16)
    assert ds.images.shape == (10, 16, 16, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[:5], truth[3][0])  # BGR on disk, RGB here
    np.testing.assert_allclose(ds.annotations["gaze"][5:], truth[7][1], atol=1e-6)
    np.testing.assert_allclose(ds.annotations["head_pose"][:5], truth[3][2], atol=1e-6)
    assert ds.annotations["identity"].tolist() == [3] * 5 + [7] * 5
    assert ds.annotations["cam_index"].tolist()[:5] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(ds.annotations["eye_corners"][:5], truth[3][3][:, [36, 39, 42, 45]], atol=1e-5)
    assert ds.annotations["landmarks"].shape == (10, 5, 2)
    assert ds.meta["name"] == "ethxgaze"
    one = load_ethxgaze(tmp_path / "train" / "subject0007.h5", size=8, max_per_subject=2, chunk=1)
    assert one.images.shape == (2, 8, 8, 3) and one.annotations["identity"].tolist() == [7, 7]
    np.testing.assert_allclose(one.annotations["gaze"], truth[7][1][[0, 4]], atol=1e-6)
    np.testing.assert_array_equal(one.images[1], resize_area(truth[7][0][4], (8, 8)))


def test_ethxgaze_test_split_without_gaze(tmp_path: Path) -> None:
    path = write_ethxgaze_subject(tmp_path / "test" / "subject0010.h5", pattern_images(3, 16, 16))
    _raises(lambda: load_ethxgaze(path, size=8), "subject0010.h5", "face_gaze", "require_gaze")
    ds = load_ethxgaze(tmp_path / "test", size=8, require_gaze=False)
    assert "gaze" not in ds.annotations and ds.annotations["identity"].tolist() == [10] * 3


def test_ethxgaze_errors_name_file_and_field(tmp_path: Path) -> None:
    imgs = pattern_images(4, 16, 16)
    g, h, _ = _eth_labels(4, 0)
    _raises(lambda: load_ethxgaze(tmp_path / "subject0001.h5"), "subject0001.h5")

    path = truncate(write_ethxgaze_subject(tmp_path / "t" / "subject0001.h5", imgs, g, h), 0.5)
    _raises(lambda: load_ethxgaze(path), "subject0001.h5", "face_patch")

    path = write_ethxgaze_subject(tmp_path / "s" / "subject0001.h5", imgs, np.zeros((4, 3)), h)
    _raises(lambda: load_ethxgaze(path), "subject0001.h5", "face_gaze", "shape")

    path = write_ethxgaze_subject(tmp_path / "p" / "subject0001.h5", imgs, g, h)
    with h5py.File(path, "r+") as f:
        del f["face_patch"]
    _raises(lambda: load_ethxgaze(path), "subject0001.h5", "face_patch", "missing")

    path = write_ethxgaze_subject(tmp_path / "n" / "scan.h5", imgs, g, h)
    _raises(lambda: load_ethxgaze(path), "scan.h5", "identity")


# =========================================================================== registry
def test_registry(tmp_path: Path) -> None:
    assert set(REAL_LOADERS) == {
        "mpiifacegaze",
        "mpiifacegaze-normalized",
        "mpiigaze",
        "ethxgaze",
        "widerface",
        "widerface-retinaface",
        "celeba",
        "casia-webface",
        "lfw",
        "ffhq",
        "aligned-crops",
    }
    err = _raises(lambda: load_real_dataset("gaze360", str(tmp_path)), "gaze360")
    for name in REAL_LOADERS:
        assert name in str(err)
    g, h, _ = _eth_labels(2, 0)
    write_ethxgaze_subject(tmp_path / "subject0002.h5", pattern_images(2, 16, 16), g, h)
    ds = load_real_dataset("ethxgaze", str(tmp_path), size=8)
    assert len(ds) == 2
    with pytest.raises(ConfigError, match="size"):
        load_real_dataset("ethxgaze", str(tmp_path), colour=True)


def test_every_registered_loader_is_a_config_source() -> None:
    """``data.source`` is a Literal (no loader import at config time); it must list every registered loader."""
    from typing import get_args

    from backdoorlab.experiments.config import DataConfig

    sources = set(get_args(DataConfig.model_fields["source"].annotation))
    assert sources == {"synthetic", "folder", *REAL_LOADERS}
