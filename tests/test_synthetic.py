"""The synthetic face renderer: determinism, layout, exact labels, and gaze that is really in the eyes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.masking import EyeMask
from backdoorlab.data.splits import split_by_identity
from backdoorlab.data.synthetic import (
    SyntheticGazeSpec,
    faces,
    load_or_synthesize,
    params,
    synthesize,
)
from backdoorlab.data.synthetic import dataset as dataset_mod
from backdoorlab.data.synthetic.render import quantize, render_background
from backdoorlab.errors import DatasetError
from backdoorlab.geometry import angular_error_deg, pitchyaw_to_vector
from backdoorlab.report.draw import TRUE_COLOUR
from backdoorlab.report.gallery import gallery_image

RENDER = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHEAP = settings(max_examples=40, deadline=None)

FLOAT_KEYS = {
    "gaze": (2,),
    "head_pose": (2,),
    "head_roll": (),
    "landmarks": (5, 2),
    "eye_corners": (4, 2),
    "face_box": (4,),
}


def assert_same_dataset(a: ArrayDataset, b: ArrayDataset) -> None:
    """Byte-identical images and annotations."""
    assert a.images.shape == b.images.shape
    assert np.array_equal(a.images, b.images)
    assert sorted(a.annotations) == sorted(b.annotations)
    for k in a.annotations:
        assert a.annotations[k].dtype == b.annotations[k].dtype, k
        assert np.array_equal(a.annotations[k], b.annotations[k]), k


def spec_like(spec: SyntheticGazeSpec, **changes: object) -> SyntheticGazeSpec:
    return SyntheticGazeSpec(**{**spec.model_dump(), **changes})


# ---------------------------------------------------------------- determinism
def test_same_spec_gives_identical_bytes(tiny_face_spec: SyntheticGazeSpec, tiny_face_ds: ArrayDataset) -> None:
    again = synthesize(tiny_face_spec, compile=False)
    assert_same_dataset(again, tiny_face_ds)
    assert again.fingerprint == tiny_face_ds.fingerprint


def test_two_worker_processes_give_identical_bytes(
    tiny_face_spec: SyntheticGazeSpec, tiny_face_ds: ArrayDataset
) -> None:
    # 3 identities over 2 processes: batches are packed differently than in one process
    assert_same_dataset(synthesize(tiny_face_spec, compile=False, workers=2), tiny_face_ds)


def test_adding_identities_leaves_existing_ones_unchanged(
    tiny_face_spec: SyntheticGazeSpec, tiny_face_ds: ArrayDataset
) -> None:
    fewer = synthesize(spec_like(tiny_face_spec, identities=2), compile=False)
    assert len(fewer) == 8
    assert_same_dataset(fewer, tiny_face_ds.subset(np.arange(8)))


def test_seed_changes_the_data(tiny_face_spec: SyntheticGazeSpec, tiny_face_ds: ArrayDataset) -> None:
    other = synthesize(spec_like(tiny_face_spec, seed=12, identities=1), compile=False)
    assert not np.array_equal(other.images, tiny_face_ds.images[:4])
    assert not np.array_equal(other.annotations["gaze"], tiny_face_ds.annotations["gaze"][:4])


def test_identities_look_different_and_images_of_one_identity_vary(tiny_face_ds: ArrayDataset) -> None:
    imgs = tiny_face_ds.images.astype(np.int16)
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 1.0, (i, j)


# ------------------------------------------------------------ layout & dtypes
def check_layout(ds: ArrayDataset, n: int, h: int, w: int) -> None:
    assert ds.images.dtype == np.uint8 and ds.images.shape == (n, h, w, 3)
    for key, shape in FLOAT_KEYS.items():
        arr = ds.annotations[key]
        assert arr.dtype == np.float32 and arr.shape == (n, *shape), key
        assert np.isfinite(arr).all(), key
    assert ds.annotations["identity"].dtype == np.int64 and ds.annotations["identity"].shape == (n,)
    # not blank: faces have contrast, and not saturated everywhere
    assert ds.images.std(axis=(1, 2, 3)).min() > 10
    assert ds.image_shape == (3, h, w)


def test_face_layout_32(tiny_face_ds: ArrayDataset) -> None:
    check_layout(tiny_face_ds, 12, 32, 32)
    assert tiny_face_ds.meta["name"] == "synthetic-face"
    assert tiny_face_ds.meta["spec"]["size"] == 32
    assert "eye_side" not in tiny_face_ds.annotations


@pytest.mark.parametrize(("size", "n"), [(64, 2), (224, 1)])
def test_face_layout_other_sizes(size: int, n: int) -> None:
    ds = synthesize(SyntheticGazeSpec(identities=1, images_per_identity=n, size=size, seed=5), compile=False)
    check_layout(ds, n, size, size)
    # the same person and view at another resolution: landmarks scale with the image
    small = synthesize(SyntheticGazeSpec(identities=1, images_per_identity=n, size=32, seed=5), compile=False)
    np.testing.assert_allclose(ds.annotations["landmarks"] / size, small.annotations["landmarks"] / 32, atol=1e-4)
    np.testing.assert_array_equal(ds.annotations["gaze"], small.annotations["gaze"])


def test_eye_layout(tiny_eye_ds: ArrayDataset) -> None:
    check_layout(tiny_eye_ds, 6, 36, 60)
    side = tiny_eye_ds.annotations["eye_side"]
    assert side.dtype == np.int64 and set(side.tolist()) <= {0, 1}
    assert tiny_eye_ds.meta["name"] == "synthetic-eye"


def test_eye_size_follows_spec() -> None:
    ds = synthesize(SyntheticGazeSpec(kind="eye", identities=1, images_per_identity=1, eye_height=24, eye_width=40))
    assert ds.images.shape == (1, 24, 40, 3)


# --------------------------------------------------------------------- labels
def test_labels_are_the_sampled_parameters(tiny_face_spec: SyntheticGazeSpec, tiny_face_ds: ArrayDataset) -> None:
    ann = tiny_face_ds.annotations
    assert ann["identity"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for k in range(tiny_face_spec.identities):
        view = dataset_mod.view_params(tiny_face_spec, k)
        rows = slice(4 * k, 4 * k + 4)
        # the face camera is the normalised camera: the label is the sampled gaze itself
        np.testing.assert_allclose(ann["gaze"][rows], view.gaze, atol=1e-6)
        np.testing.assert_allclose(ann["head_pose"][rows], view.head_ypr[:, [1, 0]], atol=1e-5)
        np.testing.assert_allclose(ann["head_roll"][rows], view.head_ypr[:, 2])


def test_labels_inside_sampled_ranges(tiny_face_ds: ArrayDataset) -> None:
    limit = params.SamplingRanges().head_limit
    assert np.abs(tiny_face_ds.annotations["gaze"]).max() <= 0.5 + 1e-6
    assert np.abs(tiny_face_ds.annotations["head_pose"]).max() <= limit + 1e-5
    narrow = synthesize(SyntheticGazeSpec(identities=2, images_per_identity=6, size=16, gaze_range=0.15, seed=3))
    g = narrow.annotations["gaze"]
    assert np.abs(g).max() <= 0.15 + 1e-6
    assert np.abs(g).max() > 0.05  # the range is used, not collapsed to zero
    # eye-in-head rotation stays within the limit the sampler enforces
    fwd = pitchyaw_to_vector(narrow.annotations["head_pose"].astype(np.float64))
    eye_in_head = np.degrees(np.arccos(np.clip((fwd * pitchyaw_to_vector(g.astype(np.float64))).sum(-1), -1, 1)))
    assert eye_in_head.max() <= np.degrees(params.SamplingRanges().max_eye_in_head) + 1e-3


def points_inside(points: np.ndarray, box: np.ndarray, margin: float = 0.0) -> np.ndarray:
    x, y = points[..., 0], points[..., 1]
    return (
        (x >= box[:, None, 0] - margin)
        & (x <= box[:, None, 2] + margin)
        & (y >= box[:, None, 1] - margin)
        & (y <= box[:, None, 3] + margin)
    )


def check_frontal_annotations(ann: dict[str, np.ndarray], size: int) -> None:
    box, lm, ec = ann["face_box"], ann["landmarks"], ann["eye_corners"]
    assert points_inside(lm, box).all() and points_inside(ec, box).all()
    for pts in (lm, ec):
        assert (pts >= 0).all() and (pts <= size).all()
    assert (box[:, 2] - box[:, 0] > 0.5 * size).all() and (box[:, 3] - box[:, 1] > 0.5 * size).all()
    # image-left first: left eye, right eye; mouth corners left, right; corners left to right
    assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 3, 0] < lm[:, 4, 0]).all()
    assert (np.diff(ec[..., 0], axis=1) > 0).all()
    # top to bottom: eyes, nose tip, mouth
    assert (lm[:, :2, 1].max(1) < lm[:, 2, 1]).all() and (lm[:, 2, 1] < lm[:, 3:, 1].min(1)).all()
    # eye centres are the midpoints of their corners (MPIIGaze definition)
    np.testing.assert_allclose(lm[:, 0], ec[:, 0:2].mean(1), atol=0.02 * size)
    np.testing.assert_allclose(lm[:, 1], ec[:, 2:4].mean(1), atol=0.02 * size)


def test_landmarks_inside_face_box_for_frontal_faces(tiny_face_ds: ArrayDataset) -> None:
    frontal = np.flatnonzero(np.abs(tiny_face_ds.annotations["head_pose"]).max(1) < 0.35)
    assert len(frontal) >= 3
    check_frontal_annotations({k: v[frontal] for k, v in tiny_face_ds.annotations.items()}, 32)


@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([32, 64, 224]))
@CHEAP
def test_annotations_of_frontal_faces_are_consistent(seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    ident, view = params.sample_identities(rng, 4), params.sample_images(rng, 4)
    view.head_ypr[:, :2] = np.clip(view.head_ypr[:, :2], -0.35, 0.35)
    cam, trans = faces.face_camera(4, size)
    check_frontal_annotations(faces.annotate(ident, view, cam, trans), size)


def test_eye_labels_differ_from_face_labels_by_the_eye_camera(
    tiny_eye_spec: SyntheticGazeSpec, tiny_eye_ds: ArrayDataset
) -> None:
    face = synthesize(spec_like(tiny_eye_spec, kind="face", size=16), compile=False)
    err = angular_error_deg(tiny_eye_ds.annotations["gaze"], face.annotations["gaze"])
    assert (err < 10).all() and (err > 0.1).all()  # the eye camera is turned a little, never a lot
    head_err = angular_error_deg(tiny_eye_ds.annotations["head_pose"], face.annotations["head_pose"])
    assert (head_err < 10).all()
    # the label is the same gaze, expressed in the eye camera: rotating it back gives the face label
    for k in range(tiny_eye_spec.identities):
        rows = slice(3 * k, 3 * k + 3)
        ident = dataset_mod.identity_params(tiny_eye_spec, k).take(np.zeros(3, int))
        view = dataset_mod.view_params(tiny_eye_spec, k)
        cam, _ = faces.eye_camera(ident, view, tiny_eye_ds.annotations["eye_side"][rows], 36, 60)
        eye_vec = pitchyaw_to_vector(tiny_eye_ds.annotations["gaze"][rows].astype(np.float64))
        world = np.einsum("bij,bj->bi", cam.rotation.numpy().astype(np.float64), eye_vec)
        np.testing.assert_allclose(
            world, pitchyaw_to_vector(face.annotations["gaze"][rows].astype(np.float64)), atol=1e-5
        )


def test_eye_crop_is_centred_on_the_chosen_eye(tiny_eye_ds: ArrayDataset) -> None:
    ec = tiny_eye_ds.annotations["eye_corners"]
    side = tiny_eye_ds.annotations["eye_side"]
    assert len(set(side.tolist())) == 2  # both eyes occur in the fixture
    rows = np.arange(len(side))
    chosen = ec.reshape(-1, 2, 2, 2)[rows, side]  # (N, 2 corners, xy)
    np.testing.assert_allclose(chosen.mean(1), np.tile([30.0, 18.0], (len(side), 1)), atol=1.5)


@given(seed=st.integers(0, 2**32 - 1), side=st.sampled_from([0, 1]))
@CHEAP
def test_eye_crop_scale(seed: int, side: int) -> None:
    """40 mm at the eye span the crop's 60 pixels: a frontal eye is its width x 1.5 pixels wide."""
    rng = np.random.default_rng(seed)
    ident, view = params.sample_identities(rng, 2), params.sample_images(rng, 2)
    view.head_ypr[:] = 0
    sides = np.array([side, 1 - side])
    cam, trans = faces.eye_camera(ident, view, sides, 36, 60)
    corners = faces.annotate(ident, view, cam, trans)["eye_corners"].reshape(-1, 2, 2, 2)[[0, 1], sides]
    np.testing.assert_allclose(corners.mean(1), [[30.0, 18.0]] * 2, atol=1.0)
    width = np.linalg.norm(corners[:, 0] - corners[:, 1], axis=-1)
    # corners sit on the curved face, a little deeper than the eye centre: slightly smaller
    ratio = width / (ident.eye_width * 60 / 40)
    assert ((ratio > 0.9) & (ratio < 1.02)).all(), ratio


# ------------------------------------------------------------ gaze is in the eyes
DELTA = 0.3  # radians, either side of the direction the head points to


def render_gaze_variants(seed: int, deltas: np.ndarray) -> tuple[params.IdentityParams, params.ImageParams]:
    """One person and view, repeated with gaze = head direction + each delta (pitch, yaw).

    Noise and blur are off so that nothing but the gaze differs between the copies. The
    head is kept frontal-ish (|pitch|, |yaw| <= 0.3) and the iris is painted a light blue,
    so that the pupil is the one dark disc in the eye: with a head bowed far down, the
    eyelids that follow the gaze (correctly) hide most of the iris and move more dark
    pixels than the pupil does, which defeats a centroid measurement.
    """
    rng = np.random.default_rng(seed)
    ident, view = params.sample_identities(rng, 1), params.sample_images(rng, 1)
    ident.iris[:] = [0.1, 0.3, 0.9]
    view.head_ypr[:, :2] = np.clip(view.head_ypr[:, :2], -0.3, 0.3)
    n = len(deltas)
    ident, view = ident.take(np.zeros(n, int)), view.take(np.zeros(n, int))
    view.noise_std[:] = 0
    view.blur_sigma[:] = 0
    head = view.head_ypr[0, [1, 0]]  # (pitch, yaw) the face points to
    view.gaze[:] = head + deltas
    return ident, view


VARIANTS = np.array([[0, DELTA], [0, -DELTA], [DELTA, 0], [-DELTA, 0]], np.float32)  # left, right, up, down


def dark_shift(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(dx, dy) from where ``b`` is darker than ``a`` to where ``a`` is darker than ``b``, in box ``box``.

    Only what changed between the two renders counts, so brows, lashes and shadows that
    stay put do not dilute the movement of the pupil and iris.
    """
    x1, y1, x2, y2 = np.maximum(box, 0)
    la = a[y1 : y2 + 1, x1 : x2 + 1].astype(np.float64).mean(-1)
    lb = b[y1 : y2 + 1, x1 : x2 + 1].astype(np.float64).mean(-1)
    ys, xs = np.mgrid[y1 : y1 + la.shape[0], x1 : x1 + la.shape[1]]

    def centroid(w: np.ndarray) -> np.ndarray:
        assert w.sum() > 50, "the gaze change left this eye untouched"
        return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])

    return centroid(np.clip(lb - la, 0, None)) - centroid(np.clip(la - lb, 0, None))


@given(seed=st.integers(0, 2**32 - 1))
@RENDER
def test_gaze_moves_the_pupils_in_face_crops(seed: int) -> None:
    ident, view = render_gaze_variants(seed, VARIANTS)
    r = faces.render_face_crops(ident, view, size=128)  # at 64 the eye opening is ~4 pixels tall
    boxes = EyeMask().boxes(r.annotations["eye_corners"])[0]
    for eye in range(2):
        # yaw > 0 looks towards the image's left: the pupil sits further left
        assert dark_shift(r.images[0], r.images[1], boxes[eye])[0] < -2.0
        # pitch > 0 looks up: the pupil sits higher (smaller y)
        assert dark_shift(r.images[2], r.images[3], boxes[eye])[1] < -0.35
    # nothing but the eyes changes
    far = EyeMask(width_margin=0.6, height=1.6).apply(r.images, r.annotations["eye_corners"]).astype(np.int16)
    assert np.abs(far - far[0]).max() <= 1
    near = r.images.astype(np.int16)
    assert np.abs(near - near[0]).max() > 40


@given(seed=st.integers(0, 2**32 - 1), side=st.sampled_from([0, 1]))
@RENDER
def test_gaze_moves_the_pupil_in_eye_crops(seed: int, side: int) -> None:
    ident, view = render_gaze_variants(seed, VARIANTS)
    r = faces.render_eye_crops(ident, view, np.full(len(VARIANTS), side))
    whole = np.array([0, 0, 59, 35])
    assert dark_shift(r.images[0], r.images[1], whole)[0] < -4.0
    assert dark_shift(r.images[2], r.images[3], whole)[1] < -0.8
    # labels in the eye camera keep the sign of the world gaze change
    g = r.annotations["gaze"]
    assert g[0, 1] > g[1, 1] and g[2, 0] > g[3, 0]


def test_rendering_does_not_depend_on_batch_companions() -> None:
    rng = np.random.default_rng(7)
    ident, view = params.sample_identities(rng, 3), params.sample_images(rng, 3)
    view.noise_std[:] = 0
    view.blur_sigma[:] = 0
    together = faces.render_face_crops(ident, view, size=48).images
    alone = faces.render_face_crops(ident.take(np.array([1])), view.take(np.array([1])), size=48).images
    np.testing.assert_array_equal(together[1], alone[0])


# ----------------------------------------------------------------------- scenes
def test_render_scene_places_two_faces() -> None:
    rng = np.random.default_rng(3)
    ident, view = params.sample_identities(rng, 2), params.sample_images(rng, 2)
    view.head_ypr[:] = 0  # frontal, so the box is the face's own width
    view.noise_std[:] = 0
    view.blur_sigma[:] = 0
    for key in ("background", "background_angle", "background_texture"):
        getattr(view, key)[1] = getattr(view, key)[0]
    centres = np.array([[45.0, 58.0], [125.0, 62.0]])
    widths = np.array([50.0, 30.0])
    both = faces.render_scene(ident, view, centres, widths, height=120, width=160)
    assert both.images.shape == (120, 160, 3) and both.images.dtype == np.uint8
    box = both.annotations["face_box"]
    assert box.shape == (2, 4)
    box_w = box[:, 2] - box[:, 0]
    np.testing.assert_allclose(box_w, widths, rtol=0.2)
    np.testing.assert_allclose((box[:, 0] + box[:, 2]) / 2, centres[:, 0], atol=0.1 * widths.max())
    assert (np.abs((box[:, 1] + box[:, 3]) / 2 - centres[:, 1]) < 0.3 * widths).all()
    assert points_inside(both.annotations["landmarks"], box).all()

    # each face appears where its box is, and nowhere else: compare with one-face scenes
    def cols(i: int) -> np.ndarray:
        x = np.arange(160)
        return np.abs(x - centres[i, 0]) < 0.8 * widths[i]

    bg = quantize(render_background(view.take(np.array([0])), 120, 160)).numpy()[0].astype(np.int16)
    img = both.images.astype(np.int16)
    for i in range(2):
        alone = faces.render_scene(
            ident.take(np.array([i])), view.take(np.array([i])), centres[[i]], widths[[i]], 120, 160
        )
        other = 1 - i
        np.testing.assert_array_equal(img[:, ~cols(other)], alone.images.astype(np.int16)[:, ~cols(other)])
        x1, y1, x2, y2 = np.round(box[i]).astype(int)
        assert np.abs(img[y1:y2, x1:x2] - bg[y1:y2, x1:x2]).mean() > 10  # a face, not background
    far = ~(cols(0) | cols(1))
    assert far.sum() > 20
    np.testing.assert_array_equal(img[:, far], bg[:, far])


@pytest.mark.parametrize("order", [[0, 1], [1, 0]], ids=["near-first", "far-first"])
def test_render_scene_nearer_face_occludes_farther(order: list[int]) -> None:
    """A small (far) face right behind a big (near) one is hidden, whatever the list order."""
    rng = np.random.default_rng(4)
    ident, view = params.sample_identities(rng, 2), params.sample_images(rng, 2)
    view.head_ypr[:] = 0
    view.noise_std[:] = 0
    view.blur_sigma[:] = 0
    for key in ("background", "background_angle", "background_texture"):
        getattr(view, key)[1] = getattr(view, key)[0]
    centre = np.array([[80.0, 60.0]])
    widths = np.array([70.0, 30.0])
    idx = np.array(order)
    both = faces.render_scene(ident.take(idx), view.take(idx), np.repeat(centre, 2, 0), widths[idx], 120, 160)
    big = faces.render_scene(ident.take(np.array([0])), view.take(np.array([0])), centre, widths[:1], 120, 160)
    assert np.abs(both.images.astype(np.int16) - big.images.astype(np.int16)).max() <= 1


# ------------------------------------------------------------------------ splits
def identity_ds(ids: np.ndarray) -> ArrayDataset:
    n = len(ids)
    return ArrayDataset(
        np.zeros((n, 1, 1, 3), np.uint8), {"identity": ids.astype(np.int64), "index": np.arange(n, dtype=np.int64)}
    )


@given(
    n_ids=st.integers(2, 7),
    per_id=st.integers(1, 3),
    data=st.data(),
    seed=st.integers(0, 1000),
)
@CHEAP
def test_split_by_identity_properties(n_ids: int, per_id: int, data: st.DataObject, seed: int) -> None:
    ids = np.repeat(np.arange(n_ids) * 7 + 3, per_id)  # ids need not be 0..k-1
    ds = identity_ds(np.array(data.draw(st.permutations(ids.tolist())), np.int64))
    k = data.draw(st.integers(1, n_ids - 1))
    train, test = split_by_identity(ds, k, seed=seed)
    tr_ids, te_ids = set(train.annotations["identity"].tolist()), set(test.annotations["identity"].tolist())
    assert not tr_ids & te_ids
    assert len(te_ids) == k and len(tr_ids) == n_ids - k
    idx = np.concatenate([train.annotations["index"], test.annotations["index"]])
    assert sorted(idx.tolist()) == list(range(len(ds)))
    assert (np.diff(train.annotations["index"]) > 0).all() and (np.diff(test.annotations["index"]) > 0).all()
    again = split_by_identity(ds, k, seed=seed)
    assert np.array_equal(again[1].annotations["index"], test.annotations["index"])


def test_split_by_identity_seed_matters() -> None:
    ds = identity_ds(np.repeat(np.arange(6), 2))
    splits = {tuple(np.unique(split_by_identity(ds, 2, seed=s)[1].annotations["identity"])) for s in range(10)}
    assert len(splits) > 1


def test_split_by_identity_on_rendered_data(tiny_face_ds: ArrayDataset) -> None:
    train, test = split_by_identity(tiny_face_ds, 1, seed=0)
    assert len(train) == 8 and len(test) == 4
    (tid,) = np.unique(test.annotations["identity"])
    np.testing.assert_array_equal(test.images, tiny_face_ds.images[tiny_face_ds.annotations["identity"] == tid])


@pytest.mark.parametrize("k", [0, -1, 3, 4])
def test_split_by_identity_rejects_bad_counts(k: int) -> None:
    with pytest.raises(DatasetError, match=r"between 1 and 2 \(the dataset has 3 identities\)"):
        split_by_identity(identity_ds(np.arange(3)), k)


def test_split_by_identity_needs_identity() -> None:
    ds = ArrayDataset(np.zeros((2, 1, 1, 3), np.uint8), {"gaze": np.zeros((2, 2), np.float32)})
    with pytest.raises(DatasetError, match="identity"):
        split_by_identity(ds, 1)


# ------------------------------------------------------------------------- cache
CACHE_SPEC = SyntheticGazeSpec(identities=1, images_per_identity=2, size=16, seed=2)


def test_load_or_synthesize_renders_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[SyntheticGazeSpec] = []
    real = dataset_mod.synthesize

    def counting(spec: SyntheticGazeSpec, **kwargs: object) -> ArrayDataset:
        calls.append(spec)
        return real(spec, compile=False)

    monkeypatch.setattr(dataset_mod, "synthesize", counting)
    first = load_or_synthesize(CACHE_SPEC, cache_dir=tmp_path)
    folder = tmp_path / "synthetic" / CACHE_SPEC.cache_key()
    assert (folder / "meta.json").is_file() and len(calls) == 1
    assert isinstance(first.images, np.memmap)  # served from the cache folder
    mtime = (folder / "meta.json").stat().st_mtime_ns

    second = load_or_synthesize(CACHE_SPEC, cache_dir=tmp_path)
    assert len(calls) == 1 and (folder / "meta.json").stat().st_mtime_ns == mtime
    assert_same_dataset(first, second)
    assert_same_dataset(second, real(CACHE_SPEC, compile=False))
    assert second.meta["spec"] == CACHE_SPEC.model_dump()

    # another spec gets its own entry
    load_or_synthesize(spec_like(CACHE_SPEC, seed=3), cache_dir=tmp_path)
    assert len(calls) == 2 and len(list((tmp_path / "synthetic").iterdir())) == 2

    # a damaged entry is rebuilt, not trusted (drop the memory maps before damaging the file)
    expected = first.subset(np.arange(len(first)))
    del first, second
    (folder / "images.npy").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"rebuilding the synthetic cache entry: .*images\.npy"):
        rebuilt = load_or_synthesize(CACHE_SPEC, cache_dir=tmp_path)
    assert len(calls) == 3
    assert_same_dataset(rebuilt, expected)


def test_load_or_synthesize_uses_env_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKDOORLAB_CACHE", str(tmp_path / "cache"))
    load_or_synthesize(CACHE_SPEC, compile=False)
    assert (tmp_path / "cache" / "synthetic" / CACHE_SPEC.cache_key() / "meta.json").is_file()


# -------------------------------------------------------------------------- spec
@pytest.mark.parametrize(
    "bad",
    [
        {"colour": "red"},
        {"size": 8},
        {"size": 225},
        {"size": 512},
        {"identities": 0},
        {"images_per_identity": 0},
        {"eye_height": 4},
        {"gaze_range": 0.0},
        {"gaze_range": 2.0},
        {"kind": "body"},
        {"identities": 2000, "images_per_identity": 2000},
    ],
)
def test_spec_validation_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad)) if len(bad) == 1 else "2,000,000"):
        SyntheticGazeSpec(**bad)


def test_cache_key_depends_on_every_field() -> None:
    base = SyntheticGazeSpec()
    assert base.cache_key() == SyntheticGazeSpec().cache_key()
    changes = {
        "kind": "eye",
        "identities": 31,
        "images_per_identity": 201,
        "size": 65,
        "eye_height": 37,
        "eye_width": 61,
        "seed": 1,
        "gaze_range": 0.4,
        "blur_max": 0.6,
        "noise_max": 0.02,
    }
    assert set(changes) == set(SyntheticGazeSpec.model_fields)
    keys = {spec_like(base, **{k: v}).cache_key() for k, v in changes.items()}
    assert len(keys) == len(changes) and base.cache_key() not in keys


def test_spec_ranges_follow_fields() -> None:
    r = SyntheticGazeSpec(gaze_range=0.3, blur_max=1.0, noise_max=0.1).ranges()
    assert r.gaze_pitch == (-0.3, 0.3) and r.gaze_yaw == (-0.3, 0.3)
    assert r.blur_max == 1.0 and r.noise_max == 0.1


def test_noise_and_blur_settings_are_applied() -> None:
    clean = synthesize(SyntheticGazeSpec(identities=1, images_per_identity=2, size=32, blur_max=0.0, noise_max=0.0))
    noisy = synthesize(SyntheticGazeSpec(identities=1, images_per_identity=2, size=32, blur_max=0.0, noise_max=0.3))
    np.testing.assert_array_equal(clean.annotations["gaze"], noisy.annotations["gaze"])
    diff = np.abs(clean.images.astype(np.int16) - noisy.images.astype(np.int16))
    assert diff.mean() > 3


# ----------------------------------------------------------------------- gallery
def test_gallery_image_of_rendered_faces(tiny_face_ds: ArrayDataset) -> None:
    grid = gallery_image(tiny_face_ds, n=5, ncols=3, scale=2)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * 64 + 3 * 2, 3 * 64 + 4 * 2, 3)
    np.testing.assert_array_equal(grid, gallery_image(tiny_face_ds, n=5, ncols=3, scale=2))
    every = gallery_image(tiny_face_ds, n=100, ncols=4, scale=1)  # n larger than the dataset: all 12
    assert every.shape == (3 * 32 + 4 * 2, 4 * 32 + 5 * 2, 3)


def test_gallery_image_of_eye_crops(tiny_eye_ds: ArrayDataset) -> None:
    grid = gallery_image(tiny_eye_ds, n=6, ncols=6, scale=1)
    assert grid.shape == (36 + 2 * 2, 6 * 60 + 7 * 2, 3)


def test_gallery_arrows_start_between_the_eyes() -> None:
    n, size = 4, 32
    lm = np.zeros((n, 5, 2), np.float32)
    lm[:, 0] = [4.0, 5.0]
    lm[:, 1] = [8.0, 5.0]  # eyes' midpoint at (6, 5), near the top-left corner
    ds = ArrayDataset(
        np.full((n, size, size, 3), 128, np.uint8),
        {"gaze": np.tile(np.array([[0.0, -0.6]], np.float32), (n, 1)), "landmarks": lm},  # looking image-right
    )
    grid = gallery_image(ds, n=n, ncols=n, scale=2)
    assert grid.shape == (2 * size + 2 * 2, n * 2 * size + (n + 1) * 2, 3)
    for i in range(n):
        cell = grid[2 : 2 + 2 * size, 2 + i * (2 * size + 2) : 2 + i * (2 * size + 2) + 2 * size].astype(np.int16)
        green = (cell[..., 1] > cell[..., 0] + 60) & (cell[..., 1] > cell[..., 2] + 60)
        assert green.any(), i
        ys, xs = np.nonzero(green)
        assert ys.mean() < 0.5 * size  # the arrow stays near the eyes' height (y = 10 after upsampling)
        assert xs.min() >= 8  # starts at the eyes' midpoint (x = 12 after upsampling) and points right
        assert xs.max() > 20
    assert TRUE_COLOUR[1] > TRUE_COLOUR[0]  # the test's notion of "green" is the true-label colour
    with pytest.raises(DatasetError, match="gaze"):
        gallery_image(ArrayDataset(ds.images, {"landmarks": lm}))


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKDOORLAB_CACHE", raising=False)
    assert dataset_mod.default_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "backdoorlab"
