"""The optional dlib landmarker: point-order conversion (pure numpy), the missing-extra
message, and (only with ``backdoorlab[dlib]`` installed) dlib on one rendered face."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from backdoorlab.errors import ConfigError, MissingExtraError
from backdoorlab.models import dlib_landmarker as dl


def _nme(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    iod = np.linalg.norm(true[:, 0] - true[:, 1], axis=-1)
    return np.linalg.norm(pred - true, axis=-1) / iod[:, None]


# ------------------------------------------------------------------ pure numpy
def test_five_from_68_picks_the_documented_points() -> None:
    pts = np.zeros((2, 68, 2), np.float32)
    pts[..., 0] = np.arange(68)  # x = point index
    pts[1, :, 1] = 1.0
    five = dl.five_from_68(pts)
    assert five.shape == (2, 5, 2) and five.dtype == np.float32
    # image-left eye = mean of 36..41, right eye = mean of 42..47, nose tip 30, mouth corners 48, 54
    np.testing.assert_allclose(five[0, :, 0], [38.5, 44.5, 30, 48, 54])
    np.testing.assert_allclose(five[1, :, 1], 1.0)
    with pytest.raises(ValueError, match="68, 2"):
        dl.five_from_68(np.zeros((5, 2)))


def test_five_from_dlib5_eye_midpoints_and_nan_for_missing_points() -> None:
    # dlib's 5-point order: image-right eye corners (0, 1), image-left eye corners (2, 3), under the nose (4)
    pts = np.array([[[110, 60], [90, 62], [40, 60], [60, 62], [75, 90]]], np.float32)
    five = dl.five_from_dlib5(pts)
    np.testing.assert_allclose(five[0, 0], [50, 61])
    np.testing.assert_allclose(five[0, 1], [100, 61])
    assert np.isnan(five[0, 2:]).all()
    assert dl.PROVIDES["5"].tolist() == [True, True, False, False, False]
    assert dl.PROVIDES["68"].all()


def test_box_conversion_is_square_and_inverts() -> None:
    face = np.array([[10.0, 20.0, 110.0, 140.0], [0.0, 0.0, 50.0, 50.0]])
    d = dl.face_box_to_dlib(face)
    np.testing.assert_allclose(d[:, 2] - d[:, 0], d[:, 3] - d[:, 1])
    back = dl.dlib_box_to_face(d)
    np.testing.assert_allclose(back[1], face[1], atol=1e-4)  # square boxes round-trip exactly
    # a non-square box comes back square; its centre moves by dy * (h - side), here about half a pixel
    np.testing.assert_allclose((back[0, :2] + back[0, 2:]) / 2, (face[0, :2] + face[0, 2:]) / 2, atol=1.0)


# ------------------------------------------------------------------ missing extra
def test_missing_dlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'backdoorlab\[dlib\]'"):
        dl.DlibLandmarker()
    assert issubclass(MissingExtraError, ConfigError)  # the CLI prints it like any config problem


def test_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        dl.importlib.util, "find_spec", lambda name, *a: None if name == "face_recognition_models" else real(name, *a)
    )
    with pytest.raises(MissingExtraError, match=r"face-recognition-models.*backdoorlab\[dlib\]"):
        dl.model_dir()
    assert dl.DlibLandmarker.available() is False


def test_bad_settings_are_config_errors() -> None:
    for kwargs in ({"predictor": "98"}, {"detector": "yolo"}, {"upsample": -1}):
        with pytest.raises(ConfigError):
            dl.DlibLandmarker(**kwargs)


# ------------------------------------------------------------------ with dlib installed
@pytest.fixture(scope="module")
def frontal_face():
    """One 160 px frontal rendered face that dlib's HOG detector finds (identity 7 of seed 0)."""
    pytest.importorskip("dlib")
    if not dl.DlibLandmarker.available():
        pytest.skip("face-recognition-models model files not installed")
    from backdoorlab.data.synthetic.faces import render_face_crops
    from backdoorlab.data.synthetic.params import sample_identities, sample_images

    rng = np.random.default_rng(0)
    ident, view = sample_identities(rng, 16), sample_images(rng, 16)
    view.head_ypr[:] = 0
    pick = np.array([7])
    return render_face_crops(ident.take(pick), view.take(pick), 160)


# Bounds: on 16 frontal 160 px faces (seed 0) dlib's 68-point model measured a mean NME
# of 0.03-0.14 per face (0.048 on this one) inside HOG boxes and 0.03-0.09 (0.030 here)
# inside the true boxes; 0.1 leaves room for build-to-build differences.
NME_BOUND = 0.1


def test_detect_finds_the_face_and_its_landmarks(frontal_face) -> None:
    out = dl.DlibLandmarker("68", "hog", upsample=1).detect(frontal_face.images)
    assert len(out) == 1
    found = out[0]
    assert found["boxes"].shape == (1, 4) and found["scores"].shape == (1,) and found["landmarks"].shape == (1, 5, 2)
    true_box = frontal_face.annotations["face_box"][0]
    box = found["boxes"][0]
    inter = np.clip(np.minimum(box[2:], true_box[2:]) - np.maximum(box[:2], true_box[:2]), 0, None).prod()
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    assert inter / (area(box) + area(true_box) - inter) > 0.5
    assert _nme(found["landmarks"], frontal_face.annotations["landmarks"]).mean() < NME_BOUND


def test_landmarks_in_given_boxes(frontal_face) -> None:
    true = frontal_face.annotations["landmarks"]
    boxes = [frontal_face.annotations["face_box"]]
    lm68 = dl.DlibLandmarker("68").landmarks(frontal_face.images, boxes)
    assert len(lm68) == 1 and lm68[0].shape == (1, 5, 2) and lm68[0].dtype == np.float32
    assert _nme(lm68[0], true).mean() < NME_BOUND
    lm5 = dl.DlibLandmarker("5").landmarks(list(frontal_face.images), boxes)[0]
    assert np.isnan(lm5[0, 2:]).all()
    assert _nme(lm5, true)[:, :2].mean() < NME_BOUND
    empty = dl.DlibLandmarker("68").landmarks(frontal_face.images, [np.zeros((0, 4))])
    assert empty[0].shape == (0, 5, 2)
