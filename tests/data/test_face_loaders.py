"""Face-detection loaders (WIDER FACE, RetinaFace labels, CelebA) read the published layouts.

Fixtures (``fixtures_faces``) are real JPEGs and annotation files in the releases'
exact text formats, with a white square drawn at every face box, so the checks cover
parsing (box conversion, landmark order, flags, the 0-face quirk, splits), the
letterbox geometry against the pixels themselves, and one DatasetError per kind of
damage, naming file, line and field.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backdoorlab.data._face_letterbox import (
    boxes_to_canvas,
    boxes_to_original,
    letterbox,
    points_to_canvas,
    points_to_original,
)
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.celeba import load_celeba, read_celeba_landmarks
from backdoorlab.data.real import REAL_LOADERS, load_real_dataset
from backdoorlab.data.wider_face import load_widerface, load_widerface_retinaface
from backdoorlab.errors import ConfigError

from .assertions import raises_naming
from .fixtures_faces import (
    CelebaImage,
    RetinaImage,
    WiderImage,
    retina_face,
    truncate_bytes,
    wider_face,
    write_celeba,
    write_jpeg,
    write_retinaface,
    write_wider,
)

SIZE = 48


_raises = raises_naming


def _orig_boxes(ds: ArrayDataset, i: int) -> np.ndarray:
    return boxes_to_original(ds.instances.rows(i)["boxes"], ds.annotations["scale"][i])


# ===================================================================== letterbox
def test_letterbox_pixels_follow_the_coordinate_map() -> None:
    """A white square's pixels land where its centre maps to; padding is bottom/right only.

    The intensity-weighted centroid agrees with ``(x + 0.5) * scale - 0.5`` to a few
    hundredths of a pixel (a plain ``x * scale`` would be off by ~0.3-0.4 px here).
    """
    cases = (
        ((90, 150), (100, 40, 12)),
        ((150, 90), (20, 110, 14)),
        ((30, 40), (10, 8, 6)),
        ((333, 101), (40, 300, 20)),
    )
    for hw, (x, y, s) in cases:
        img = np.zeros((*hw, 3), np.uint8)
        img[y : y + s, x : x + s] = 255
        canvas, scale = letterbox(img, SIZE, pad_value=7)
        assert canvas.shape == (SIZE, SIZE, 3) and scale == pytest.approx(min(SIZE / hw[0], SIZE / hw[1]))
        h2, w2 = round(hw[0] * scale), round(hw[1] * scale)
        assert (canvas[h2:] == 7).all() and (canvas[:, w2:] == 7).all()
        assert not (canvas[:h2, :w2] == 7).all()
        weight = canvas[:h2, :w2, 0].astype(float)
        ys, xs = np.mgrid[:h2, :w2]
        centroid = [(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()]
        centre = points_to_canvas(np.array([x + (s - 1) / 2, y + (s - 1) / 2]), scale)  # pixel-centre centre
        np.testing.assert_allclose(centroid, centre, atol=0.1)


def test_coordinate_maps_round_trip() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-5, 500, size=(7, 5, 2))
    boxes = rng.uniform(0, 500, size=(7, 4))
    for scale in (0.1, 0.384, 1.0, 2.5):
        np.testing.assert_allclose(points_to_original(points_to_canvas(pts, scale), scale), pts, atol=1e-3)
        np.testing.assert_allclose(boxes_to_original(boxes_to_canvas(boxes, scale), scale), boxes, atol=1e-3)
        w = boxes[:, 2] - boxes[:, 0]
        c = boxes_to_canvas(boxes, scale)
        np.testing.assert_allclose(c[:, 2] - c[:, 0], w * scale, rtol=1e-5)


# ===================================================================== WIDER FACE
WIDER_IMAGES = [
    WiderImage(
        "0--Parade/0_Parade_marchingband_1_5.jpg",
        (60, 100),
        [wider_face(10, 12, 20, 24, blur=2, occlusion=1), wider_face(60, 5, 14, 16, pose=1, expression=1)],
    ),
    WiderImage("0--Parade/0_Parade_Parade_0_452.jpg", (80, 40)),  # count 0 + the zero line
    WiderImage(
        "12--Group/12_Group_Group_12_Group_Group_12_10.jpg",
        (50, 50),
        [
            wider_face(5, 5, 10, 10, illumination=1),
            wider_face(30, 30, 0, 0, invalid=1),  # degenerate and flagged, as in the release
            wider_face(20, 20, 6, -1),  # degenerate, not flagged
            wider_face(30, 10, 12, 12, invalid=1),
        ],
    ),
]


@pytest.fixture(scope="module")
def wider_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("widerface")
    write_wider(root, "train", WIDER_IMAGES)
    write_wider(root, "val", WIDER_IMAGES[:1])
    return root


def test_wider_parses_boxes_attributes_and_geometry(wider_root: Path) -> None:
    ds = load_widerface(wider_root, size=SIZE)
    assert ds.images.shape == (3, SIZE, SIZE, 3) and ds.meta["name"] == "widerface"
    assert ds.instances.counts().tolist() == [2, 0, 4]
    np.testing.assert_allclose(ds.annotations["orig_size"], [[60, 100], [80, 40], [50, 50]])
    np.testing.assert_allclose(ds.annotations["scale"], [SIZE / 100, SIZE / 80, SIZE / 50], rtol=1e-6)
    np.testing.assert_allclose(_orig_boxes(ds, 0), [[10, 12, 30, 36], [60, 5, 74, 21]], atol=1e-3)
    np.testing.assert_allclose(_orig_boxes(ds, 2)[2], [20, 20, 26, 19], atol=1e-3)  # kept as published
    cols = ds.instances.columns
    assert cols["blur"].dtype == np.int8 and cols["blur"].tolist() == [2, 0, 0, 0, 0, 0]
    assert cols["occlusion"].tolist() == [1, 0, 0, 0, 0, 0] and cols["pose"].tolist() == [0, 1, 0, 0, 0, 0]
    assert cols["expression"].tolist() == [0, 1, 0, 0, 0, 0]
    assert cols["illumination"].tolist() == [0, 0, 1, 0, 0, 0]
    assert cols["invalid"].tolist() == [False, False, False, True, True, True]
    assert cols["ignore"].tolist() == cols["invalid"].tolist()
    assert not cols["visible"].any() and not cols["landmarks"].any() and (cols["label"] == -1).all()
    # pixels: the white square of face 0 sits inside its canvas box
    x1, y1, x2, y2 = ds.instances.rows(0)["boxes"][0]
    assert ds.images[0, round((y1 + y2) / 2), round((x1 + x2) / 2)].min() > 200
    assert ds.images[0, SIZE - 1].max() == 0  # padding below the 60x100 image


def test_wider_zero_face_quirk_with_and_without_the_zero_line(tmp_path: Path) -> None:
    images = [
        WiderImage("1--Handshaking/a.jpg", (20, 30)),
        WiderImage("1--Handshaking/b.jpg", (20, 30), [wider_face(1, 2, 5, 6)]),
    ]
    for zero_line in (True, False):
        root = tmp_path / str(zero_line)
        write_wider(root, "val", images, zero_line=zero_line)
        ds = load_widerface(root, split="val", size=SIZE)
        assert ds.instances.counts().tolist() == [0, 1]
        np.testing.assert_allclose(_orig_boxes(ds, 1), [[1, 2, 6, 8]], atol=1e-3)


def test_wider_limit_min_face_and_registry(wider_root: Path) -> None:
    ds = load_real_dataset("widerface", str(wider_root), split="train", size=SIZE, limit=1, min_face=7.0)
    assert len(ds) == 1 and ds.meta["image_paths"][0].endswith("0_Parade_marchingband_1_5.jpg")
    # face 1 is 14x16 in a 100-wide image -> 6.7 x 7.7 canvas px: under 7, kept but ignored
    assert ds.instances.columns["ignore"].tolist() == [False, True]
    assert ds.instances.columns["invalid"].tolist() == [False, False]
    assert {"widerface", "widerface-retinaface", "celeba"} <= set(REAL_LOADERS)
    with pytest.raises(ConfigError, match="accepted options"):
        load_real_dataset("widerface", str(wider_root), subjects=[1])


def test_wider_saves_and_loads_with_its_columns(wider_root: Path, tmp_path: Path) -> None:
    ds = load_widerface(wider_root, size=SIZE)
    back = ArrayDataset.load(ds.save(tmp_path / "saved"))
    assert back.instances.equals(ds.instances) and back.fingerprint == ds.fingerprint


def _wider_error_root(tmp_path: Path, text: str, images=()) -> Path:
    root = tmp_path / "bad"
    write_wider(root, "train", list(images))
    (root / "wider_face_split" / "wider_face_train_bbx_gt.txt").write_text(text)
    return root


def test_wider_errors_name_file_line_and_field(tmp_path: Path) -> None:
    good = "0--Parade/a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n"
    cases = [
        # non-integer h on line 7
        (
            good + "0--Parade/b.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n1 2 3 x 0 0 0 0 0 0\n",
            ["wider_face_train_bbx_gt.txt line 7: field 'h' must be an integer, got 'x'"],
        ),
        # count larger than the lines that follow, at the end of the file
        (good + "0--Parade/b.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n", ["line 5", "truncated", "'count' says 3 faces"]),
        # count larger than the lines before the next image
        (
            "0--Parade/a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n0--Parade/b.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n",
            ["line 2", "truncated record", "next image on line 4"],
        ),
        (good.replace("1 2 3 4 0 0 0 0 0 0", "1 2 3 4 0 0 0 0 0"), ["line 3", "expected 10 integers", "got 9"]),
        (good.replace("1 2 3 4 0 0 0 0 0 0", "1 2 3 4 0 0 0 2 0 0"), ["line 3", "field 'invalid' must be 0 or 1"]),
        (good.replace("\n1\n", "\none\n"), ["line 2: field 'count' must be an integer, got 'one'"]),
        (good + "0--Parade/b.jpg\n0\n1 0 0 0 0 0 0 0 0 0\n", ["line 6", "all-zero line"]),
        (good + "0--Parade/b.jpg\n", ["line 4", "no face-count line"]),
        ("1 2 3 4\n", ["line 1: field 'image' must be an image path"]),
    ]
    for text, needles in cases:
        root = _wider_error_root(tmp_path, text)
        _raises(lambda root=root: load_widerface(root, size=SIZE), *needles)


def test_wider_missing_files_and_images(tmp_path: Path) -> None:
    _raises(lambda: load_widerface(tmp_path / "nowhere"), "does not exist")
    _raises(lambda: load_widerface(tmp_path, split="val"), "wider_face_val_bbx_gt.txt", "does not exist")
    _raises(lambda: load_widerface(tmp_path, split="test"), "unknown split 'test'")
    images = [WiderImage("0--Parade/a.jpg", (20, 20)), WiderImage("0--Parade/b.jpg", (20, 20), write_image=False)]
    root = tmp_path / "missing"
    write_wider(root, "train", images)
    _raises(lambda: load_widerface(root, size=SIZE), "b.jpg: field 'image'", "does not exist", "line 4")
    assert len(load_widerface(root, size=SIZE, limit=1)) == 1  # only selected images are read
    truncate_bytes(root / "WIDER_train" / "images" / "0--Parade" / "a.jpg")
    _raises(lambda: load_widerface(root, size=SIZE, limit=1), "a.jpg: field 'image' is a truncated JPEG", "line 1")
    (root / "WIDER_train" / "images" / "0--Parade" / "a.jpg").write_bytes(b"not an image at all")
    _raises(lambda: load_widerface(root, size=SIZE, limit=1), "cannot be decoded")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hw=st.tuples(st.integers(8, 120), st.integers(8, 120)),
    raw=st.lists(st.tuples(*[st.integers(0, 200)] * 4), min_size=0, max_size=6),
    size=st.sampled_from([16, 48, 64]),
)
def test_property_wider_boxes_round_trip(hw, raw, size) -> None:
    faces = [wider_face(x, y, w + 1, h + 1) for x, y, w, h in raw]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_wider(root, "val", [WiderImage("9--Press/x.jpg", hw, faces)])
        ds = load_widerface(root, split="val", size=size)
    want = np.array([[x, y, x + w, y + h] for x, y, w, h, *_ in faces], np.float64).reshape(-1, 4)
    np.testing.assert_allclose(_orig_boxes(ds, 0), want, atol=1e-3 * max(1.0, 1 / ds.annotations["scale"][0]))
    assert ds.annotations["orig_size"][0].tolist() == list(hw)


# ===================================================================== RetinaFace
PTS = [(20.5, 22.25), (34.0, 21.5), (27.125, 30.0), (22.0, 38.5), (33.5, 38.0)]


@pytest.fixture(scope="module")
def retina_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retinaface")
    write_retinaface(
        root,
        "train",
        [
            RetinaImage(
                "0--Parade/0_Parade_marchingband_1_849.jpg",
                (60, 90),
                [
                    retina_face((14, 16, 26, 30), PTS, flags=(0, 0, 1, 0, -1), blur=0.82),
                    retina_face((60, 10, 12, 14), None),
                    retina_face((50, 40, 0, 5), None),
                ],
            ),
            RetinaImage("1--Handshaking/b.jpg", (30, 30)),
        ],
    )
    write_retinaface(root, "val", [RetinaImage("2--Demonstration/c.jpg", (40, 60), [(5, 6, 10, 12), (30, 2, 8, 8)])])
    return root


def test_retinaface_train_landmarks_flags_and_order(retina_root: Path) -> None:
    ds = load_widerface_retinaface(retina_root, size=SIZE)
    assert ds.meta["name"] == "widerface-retinaface" and ds.instances.counts().tolist() == [3, 0]
    r = ds.instances.rows(0)
    scale = ds.annotations["scale"][0]
    np.testing.assert_allclose(
        boxes_to_original(r["boxes"], scale), [[14, 16, 40, 46], [60, 10, 72, 24], [50, 40, 50, 45]], atol=1e-3
    )
    assert r["visible"].tolist()[0] == [True, True, True, True, False]
    assert r["occluded"].tolist()[0] == [False, False, True, False, False]
    assert not r["visible"][1].any() and not r["landmarks"][1].any()
    got = points_to_original(r["landmarks"][0], scale)
    np.testing.assert_allclose(got[:4], PTS[:4], atol=1e-3)  # file order = RetinaFace order
    assert got[0, 0] < got[1, 0]  # image-left eye first
    assert r["landmarks"][0, 4].tolist() == [0.0, 0.0]  # missing point zeroed
    assert r["blur_score"][0] == pytest.approx(0.82) and r["blur_score"][1] == -1
    assert r["ignore"].tolist() == [False, False, True]  # zero-width box kept, ignored
    assert (r["label"] == -1).all()


def test_retinaface_val_four_number_variant(retina_root: Path) -> None:
    ds = load_real_dataset("widerface-retinaface", str(retina_root), split="val", size=SIZE)
    r = ds.instances.rows(0)
    np.testing.assert_allclose(
        boxes_to_original(r["boxes"], ds.annotations["scale"][0]), [[5, 6, 15, 18], [30, 2, 38, 10]], atol=1e-3
    )
    assert not r["visible"].any() and np.isnan(r["blur_score"]).all()


def test_retinaface_errors(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    write_retinaface(root, "train", [RetinaImage("0--Parade/a.jpg", (30, 30))])
    label = root / "train" / "label.txt"
    ok = " ".join(["1", "2", "10", "12", *["5.0", "6.0", "0.0"] * 5, "0.5"])
    head = "# 0--Parade/a.jpg\n" + (ok + "\n") * 10  # lines 1..11
    cases = [
        (head + ok.rsplit(" ", 1)[0] + "\n", ["label.txt line 12: expected 4 or 20 numbers, got 19"]),
        (head + ok.replace("10 12", "-3 12", 1) + "\n", ["line 12", "field 'w' must be >= 0", "negative size"]),
        (head + ok.replace("0.0", "2.0", 1) + "\n", ["line 12", "field 'lefteye_flag' must be -1, 0 or 1, got 2"]),
        (head + ok.replace("6.0", "y", 1) + "\n", ["line 12", "field 'lefteye_y' must be a number, got 'y'"]),
        (ok + "\n", ["line 1", "before any '# <image path>' line"]),
        ("#\n", ["line 1", "field 'image' is empty"]),
    ]
    for text, needles in cases:
        label.write_text(text)
        _raises(lambda: load_widerface_retinaface(root, size=SIZE), *needles)
    label.write_text(head + "# 0--Parade/missing.jpg\n1 1 3 3\n")
    _raises(lambda: load_widerface_retinaface(root, size=SIZE), "missing.jpg: field 'image'", "label.txt line 12")
    _raises(lambda: load_widerface_retinaface(root, split="val"), "val/label.txt", "does not exist")
    _raises(lambda: load_widerface_retinaface(root, size=0), "size must be a positive integer")


# ===================================================================== CelebA
# image-left eye has the smaller x, as in the release (row 1: lefteye 165 < righteye 244)
CELEBA = [
    CelebaImage("000001.jpg", (120, 100), (20, 15, 50, 70), (35, 40, 55, 41, 45, 55, 37, 68, 54, 69), 0, 2880),
    CelebaImage("000002.jpg", (90, 140), (60, 10, 40, 60), (70, 30, 90, 29, 80, 40, 72, 55, 88, 56), 1, 2937),
    CelebaImage("000003.jpg", (100, 100), (5, 5, 60, 80), (20, 30, 45, 32, 33, 45, 22, 60, 43, 62), 2, 8692),
    CelebaImage("000004.jpg", (100, 100), (30, 20, 50, 60), (42, 40, 66, 40, 55, 52, 45, 66, 63, 66), 0, 5805),
]


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_celeba(tmp_path_factory.mktemp("celeba"), CELEBA)


def test_celeba_split_identity_order_and_geometry(celeba_root: Path) -> None:
    ds = load_celeba(celeba_root, split="train", size=SIZE)
    assert ds.meta["name"] == "celeba"
    assert [Path(p).name for p in ds.meta["image_paths"]] == ["000001.jpg", "000004.jpg"]
    assert ds.instances.counts().tolist() == [1, 1]
    assert ds.instances.columns["label"].tolist() == [2880, 5805]
    r = ds.instances.rows(0)
    scale = ds.annotations["scale"][0]
    np.testing.assert_allclose(boxes_to_original(r["boxes"], scale), [[20, 15, 70, 85]], atol=1e-3)
    lm = points_to_original(r["landmarks"][0], scale)
    np.testing.assert_allclose(lm, np.reshape(CELEBA[0].landmarks, (5, 2)), atol=1e-3)
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left eye and mouth corner first
    assert r["visible"].all() and not r["ignore"].any()
    assert [len(load_celeba(celeba_root, split=s, size=SIZE)) for s in ("val", "test", "all")] == [1, 1, 4]
    assert len(load_real_dataset("celeba", str(celeba_root), split="all", limit=3, size=SIZE)) == 3


def test_celeba_without_identity_or_partition_files(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "c", CELEBA[:2], identities=False, partition=False)
    ds = load_celeba(root, split="all", size=SIZE)
    assert ds.instances.columns["label"].tolist() == [-1, -1]
    only_train = write_celeba(tmp_path / "t", CELEBA[:1])
    _raises(lambda: load_celeba(only_train, split="test"), "split 'test' holds no images")
    _raises(lambda: load_celeba(root, split="train"), "list_eval_partition.txt", "does not exist")


def test_celeba_refuses_the_aligned_landmarks(celeba_root: Path, tmp_path: Path) -> None:
    _raises(
        lambda: load_celeba(celeba_root, landmarks_file="list_landmarks_align_celeba.txt"),
        "list_landmarks_align_celeba.txt",
        "img_align_celeba",
    )
    aligned = read_celeba_landmarks(celeba_root / "Anno" / "list_landmarks_align_celeba.txt")
    assert aligned["000001.jpg"].tolist()[0] == [69, 109]  # the reader takes either file
    # the aligned numbers under the in-the-wild name: caught by geometry
    root = write_celeba(tmp_path / "renamed", CELEBA)
    (root / "Anno" / "list_landmarks_celeba.txt").write_bytes(
        (root / "Anno" / "list_landmarks_align_celeba.txt").read_bytes()
    )
    _raises(lambda: load_celeba(root, split="all"), "list_landmarks_celeba.txt", "outside their box", "aligned")
    only_aligned = write_celeba(tmp_path / "only", CELEBA, wild_landmarks=False)
    _raises(lambda: load_celeba(only_aligned), "list_landmarks_celeba.txt", "does not exist", "img_align_celeba")


def test_celeba_errors(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "c", CELEBA)
    anno = root / "Anno"
    bbox = anno / "list_bbox_celeba.txt"
    text = bbox.read_text()
    lines = text.splitlines()
    marks = anno / "list_landmarks_celeba.txt"
    marks_cut = "\n".join(marks.read_text().splitlines()[:-2]) + "\n"
    cases = [
        (bbox, text.replace("image_id x_1", "image_id x1"), ["list_bbox_celeba.txt line 2: field 'header'"]),
        (bbox, "\n".join(lines[:-1]) + "\n", ["list_bbox_celeba.txt line 1", "truncated", "says 4 rows", "holds 3"]),
        (bbox, text.replace(" 50 ", " 5x "), ["line 3: field 'width' must be an integer, got '5x'"]),
        (bbox, text.replace(" 50 ", " -50 "), ["line 3: field 'width' must be >= 0"]),
        (bbox, text.replace("000002.jpg", "000001.jpg"), ["line 4", "repeats line 3"]),
        (bbox, "\n".join([*lines[:3], lines[3] + " 9"]) + "\n", ["line 4", "expected an image name and 4 integers"]),
        (marks, marks_cut, ["list_landmarks_celeba.txt line 1: truncated", "says 4 rows", "holds 2"]),
        (
            root / "Eval" / "list_eval_partition.txt",
            "000001.jpg 0\n000002.jpg 3\n",
            ["line 2: field 'split' must be 0, 1 or 2"],
        ),
    ]
    for path, new, needles in cases:
        old = path.read_bytes()
        path.write_text(new)
        split = "train" if "partition" in path.name else "all"
        _raises(lambda split=split: load_celeba(root, split=split), *needles)
        path.write_bytes(old)
    (root / "img_celeba" / "000004.jpg").unlink()
    _raises(lambda: load_celeba(root), "000004.jpg: field 'image'", "list_bbox_celeba.txt line 6")
    _raises(lambda: load_celeba(root, split="dev"), "unknown split 'dev'", "train, val, test, all")


def test_write_jpeg_is_a_real_jpeg(tmp_path: Path) -> None:
    data = write_jpeg(tmp_path / "x.jpg", (10, 12)).read_bytes()
    assert data[:2] == b"\xff\xd8" and data.rstrip()[-2:] == b"\xff\xd9"
