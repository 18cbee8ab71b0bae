"""Face-recognition loaders (CASIA-WebFace, LFW + pairs.txt, FFHQ, aligned crops) read the published layouts.

Fixtures are real 250x250 JPEGs (CASIA, LFW) and PNGs (FFHQ) written with Pillow in
each release's folder layout, every image one flat colour chosen from its identity and
number, so the tests can check which file landed in which row. ``pairs.txt`` is
written as the release writes it (tab-separated, header ``folds n``, per fold n
matched then n mismatched lines). Every kind of damage is one DatasetError naming the
file (and line and field for text), and no pickle is ever unpickled.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.face_recognition_sets import (
    LfwPairs,
    export_aligned_crops,
    load_aligned_crops,
    load_casia_webface,
    load_ffhq,
    load_lfw,
    read_lfw_pairs,
    refuse_pickle,
)
from backdoorlab.data.real import REAL_LOADERS, load_real_dataset
from backdoorlab.errors import ConfigError

from .assertions import raises_naming

SIZE = 32


_raises = raises_naming


def colour(key: int) -> tuple[int, int, int]:
    """A flat colour per image, distinct for keys 0..~200 (JPEG keeps flat colours within 1-2 levels)."""
    return (30 + (37 * key) % 200, 30 + (91 * key) % 200, 30 + (53 * key) % 200)


def write_image(path: Path, key: int, hw: tuple[int, int] = (250, 250)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (hw[1], hw[0]), colour(key))
    if path.suffix.lower() == ".png":
        img.save(path)
    else:
        img.save(path, "JPEG", quality=95)
    return path


def assert_colour(image: np.ndarray, key: int) -> None:
    mean = image.reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - np.asarray(colour(key))).max() < 3, (mean, colour(key))


# ---------------------------------------------------------------------- CASIA
CASIA = {"0000045": 3, "0000099": 2, "0000100": 1, "0001000": 4}


def write_casia(root: Path, counts: dict[str, int] = CASIA) -> dict[tuple[str, int], int]:
    """``ROOT/<identity>/NNN.jpg``; returns {(identity, number): colour key}."""
    keys = {}
    for ident, n in counts.items():
        (root / ident).mkdir(parents=True, exist_ok=True)
        for j in range(1, n + 1):
            keys[(ident, j)] = len(keys)
            write_image(root / ident / f"{j:03d}.jpg", keys[(ident, j)])
    return keys


@pytest.fixture
def casia_root(tmp_path: Path) -> tuple[Path, dict[tuple[str, int], int]]:
    root = tmp_path / "casia"
    keys = write_casia(root)
    (root / "0000045" / "._001.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata: skipped
    (root / "0000045" / "Thumbs.db").write_bytes(b"junk")
    (root / "README.txt").write_text("a file at the top is not an identity")
    return root, keys


def test_casia_reads_identity_folders_in_order(casia_root) -> None:
    root, keys = casia_root
    ds = load_casia_webface(root, size=SIZE)
    assert isinstance(ds, ArrayDataset) and ds.images.shape == (10, SIZE, SIZE, 3) and ds.images.dtype == np.uint8
    assert ds.meta["identities"] == ["0000045", "0000099", "0000100", "0001000"]
    assert ds.annotations["label"].dtype == np.int64
    assert ds.annotations["label"].tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]
    np.testing.assert_array_equal(ds.annotations["identity"], ds.annotations["label"])
    assert ds.meta["image_files"][:4] == ["0000045/001.jpg", "0000045/002.jpg", "0000045/003.jpg", "0000099/001.jpg"]
    assert ds.meta["name"] == "casia-webface" and ds.meta["source"] == str(root) and ds.meta["dropped_identities"] == 0
    for i, rel in enumerate(ds.meta["image_files"]):
        ident, name = rel.split("/")
        assert_colour(ds.images[i], keys[(ident, int(name[:3]))])
    assert load_casia_webface(root).images.shape[1:] == (112, 112, 3)  # the default size


def test_casia_sorts_numerically_only_when_all_names_are_digits(tmp_path: Path) -> None:
    write_casia(tmp_path / "a", {"100": 1, "9": 1, "10": 1})
    assert load_casia_webface(tmp_path / "a", size=8).meta["identities"] == ["9", "10", "100"]
    write_casia(tmp_path / "b", {"100": 1, "9": 1, "x10": 1})
    assert load_casia_webface(tmp_path / "b", size=8).meta["identities"] == ["100", "9", "x10"]
    write_casia(tmp_path / "c", {"5": 12})  # 001.jpg .. 012.jpg: by number
    files = load_casia_webface(tmp_path / "c", size=8).meta["image_files"]
    assert files == [f"5/{j:03d}.jpg" for j in range(1, 13)]


def test_casia_selection_options(casia_root) -> None:
    root, keys = casia_root
    (root / "0000200").mkdir()  # an empty identity: dropped even at min_images=1
    ds = load_casia_webface(root, size=SIZE, min_images=2)
    assert ds.meta["identities"] == ["0000045", "0000099", "0001000"]
    assert ds.meta["dropped_identities"] == 2 and ds.meta["min_images"] == 2
    assert ds.annotations["label"].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    ds = load_casia_webface(root, size=SIZE, min_images=2, max_identities=2, limit_per_identity=2)
    assert ds.meta["identities"] == ["0000045", "0000099"]
    assert ds.meta["image_files"] == ["0000045/001.jpg", "0000045/002.jpg", "0000099/001.jpg", "0000099/002.jpg"]
    assert_colour(ds.images[3], keys[("0000099", 2)])
    for bad in ({"size": 0}, {"min_images": 0}, {"max_identities": -1}, {"limit_per_identity": 1.5}):
        _raises(lambda bad=bad: load_casia_webface(root, **bad), next(iter(bad)))


def test_casia_accepts_the_release_folder_name(tmp_path: Path) -> None:
    write_casia(tmp_path / "CASIA-WebFace", {"0000045": 2})
    ds = load_casia_webface(tmp_path, size=8)
    assert ds.meta["identities"] == ["0000045"] and ds.meta["source"] == str(tmp_path / "CASIA-WebFace")


def test_casia_errors(tmp_path: Path, casia_root) -> None:
    _raises(lambda: load_casia_webface(tmp_path / "nowhere"), "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    _raises(lambda: load_casia_webface(tmp_path / "empty"), "empty", "no identity folders", "ROOT/0000045/001.jpg")
    files_only = tmp_path / "files"
    write_image(files_only / "001.jpg", 0)
    _raises(lambda: load_casia_webface(files_only), "files", "no identity folders")
    (tmp_path / "noimg" / "0000001").mkdir(parents=True)
    (tmp_path / "noimg" / "0000001" / "notes.txt").write_text("x")
    _raises(lambda: load_casia_webface(tmp_path / "noimg"), "noimg", "holds no images")
    _raises(lambda: load_casia_webface(tmp_path / "noimg", min_images=3), "at least 3 images")
    rec = tmp_path / "faces_webface_112x112"
    rec.mkdir()
    for name in ("train.rec", "train.idx", "lfw.bin"):
        (rec / name).write_bytes(b"\x00")
    _raises(lambda: load_casia_webface(rec), "lfw.bin, train.idx, train.rec", "RecordIO")

    root, _ = casia_root
    bad = root / "0000099" / "002.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG at all" + b"\x00" * 64 + b"\xff\xd9")
    _raises(lambda: load_casia_webface(root, size=SIZE), "0000099/002.jpg", "field 'image'", "cannot be decoded")
    write_image(bad, 0)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # an interrupted download
    _raises(lambda: load_casia_webface(root, size=SIZE), "0000099/002.jpg", "truncated")
    bad.write_bytes(b"")
    _raises(lambda: load_casia_webface(root, size=SIZE), "0000099/002.jpg", "cannot be decoded")
    png = write_image(root / "0000099" / "003.png", 0)
    data = bytearray(png.read_bytes())
    data[-20] ^= 0xFF  # a damaged chunk: Image.verify's checksum fails
    png.write_bytes(bytes(data))
    bad.unlink()
    _raises(lambda: load_casia_webface(root, size=SIZE), "0000099/003.png", "cannot be decoded")


# ------------------------------------------------------------------------ LFW
PEOPLE = {"Aaron_Eckhart": 1, "Abel_Pacheco": 4, "Adam_Sandler": 4, "Akhmed_Zakayev": 3, "Zico": 3, "Abdullah": 2}
MATCHED = [
    [("Abel_Pacheco", 1, 4), ("Akhmed_Zakayev", 1, 3), ("Adam_Sandler", 2, 4)],
    [("Abdullah", 1, 2), ("Zico", 1, 3), ("Adam_Sandler", 1, 3)],
]
MISMATCHED = [
    [("Abdullah", 1, "Zico", 2), ("Aaron_Eckhart", 1, "Abel_Pacheco", 2), ("Adam_Sandler", 1, "Zico", 1)],
    [("Abel_Pacheco", 3, "Akhmed_Zakayev", 2), ("Aaron_Eckhart", 1, "Zico", 3), ("Abdullah", 2, "Adam_Sandler", 2)],
]
USED = sorted(
    {(n, i) for fold in MATCHED for n, a, b in fold for i in (a, b)}
    | {p for fold in MISMATCHED for n1, a, n2, b in fold for p in ((n1, a), (n2, b))}
)


def lfw_key(name: str, index: int) -> int:
    return sorted(PEOPLE).index(name) * 10 + index


def pairs_text(sep: str = "\t") -> str:
    lines = [f"2{sep}3"]
    for m, mm in zip(MATCHED, MISMATCHED, strict=True):
        lines += [sep.join(str(v) for v in row) for row in m]
        lines += [sep.join(str(v) for v in row) for row in mm]
    return "\n".join(lines) + "\n"


def write_lfw(root: Path, folder: str = "lfw-deepfunneled", pairs_in: str = "") -> Path:
    """``ROOT/<folder>/<name>/<name>_NNNN.jpg`` for every image of PEOPLE, and pairs.txt."""
    for name, n in PEOPLE.items():
        for i in range(1, n + 1):
            write_image(root / folder / name / f"{name}_{i:04d}.jpg", lfw_key(name, i))
    (root / pairs_in / "pairs.txt").write_text(pairs_text())
    return root


@pytest.fixture
def lfw_root(tmp_path: Path) -> Path:
    return write_lfw(tmp_path / "lfw_root")


def test_read_lfw_pairs(lfw_root: Path) -> None:
    pairs = read_lfw_pairs(lfw_root / "pairs.txt")
    assert len(pairs) == 12 and pairs.folds == 2 and pairs.pairs_per_fold == 3
    assert pairs.fold.tolist() == [0] * 6 + [1] * 6
    assert pairs.same.tolist() == ([True] * 3 + [False] * 3) * 2
    assert pairs.line.tolist() == list(range(2, 14))
    assert pairs.name_a.tolist()[:4] == ["Abel_Pacheco", "Akhmed_Zakayev", "Adam_Sandler", "Abdullah"]
    assert pairs.name_b.tolist()[:4] == ["Abel_Pacheco", "Akhmed_Zakayev", "Adam_Sandler", "Zico"]
    assert pairs.index_a.tolist()[:4] == [1, 1, 2, 1] and pairs.index_b.tolist()[:4] == [4, 3, 4, 2]
    assert pairs.a_row is None and pairs.b_row is None
    spaced = lfw_root / "spaced.txt"
    spaced.write_text(pairs_text(sep="   "))
    assert read_lfw_pairs(spaced).to_lists() == {**pairs.to_lists(), "source": str(spaced)}
    view1 = lfw_root / "pairsDevTest.txt"  # View 1: one-number header, one fold
    view1.write_text("2\nZico\t1\t2\nAbdullah\t1\t2\nZico\t1\tAbdullah\t1\nZico\t2\tAbdullah\t2\n")
    one = read_lfw_pairs(view1)
    assert (one.folds, one.pairs_per_fold, one.same.tolist()) == (1, 2, [True, True, False, False])


def test_load_lfw_loads_the_paired_images_once(lfw_root: Path) -> None:
    ds, pairs = load_lfw(lfw_root, size=SIZE)
    assert ds.images.shape == (len(USED), SIZE, SIZE, 3)
    assert ds.meta["image_files"] == [f"{n}/{n}_{i:04d}.jpg" for n, i in USED]
    people = sorted({n for n, _ in USED})
    assert ds.meta["identities"] == people and ds.meta["image_folder"] == "lfw-deepfunneled"
    assert ds.annotations["label"].tolist() == [people.index(n) for n, _ in USED]
    assert ds.annotations["image_number"].tolist() == [i for _, i in USED]
    for i, (n, k) in enumerate(USED):
        assert_colour(ds.images[i], lfw_key(n, k))
    assert "Abel_Pacheco/Abel_Pacheco_0002.jpg" in ds.meta["image_files"]
    assert "Abel_Pacheco/Abel_Pacheco_0003.jpg" in ds.meta["image_files"]
    for p in range(len(pairs)):
        a, b = ds.meta["image_files"][pairs.a_row[p]], ds.meta["image_files"][pairs.b_row[p]]
        assert a == f"{pairs.name_a[p]}/{pairs.name_a[p]}_{pairs.index_a[p]:04d}.jpg"
        assert b == f"{pairs.name_b[p]}/{pairs.name_b[p]}_{pairs.index_b[p]:04d}.jpg"
        assert (ds.annotations["label"][pairs.a_row[p]] == ds.annotations["label"][pairs.b_row[p]]) == pairs.same[p]
    assert load_lfw(lfw_root)[0].images.shape[1:] == (112, 112, 3)


def test_load_lfw_plain_folder_and_pairs_beside_the_images(tmp_path: Path) -> None:
    root = write_lfw(tmp_path / "r", folder="lfw", pairs_in="lfw")
    ds, pairs = load_lfw(root, size=8)
    assert ds.meta["image_folder"] == "lfw" and ds.meta["pairs_file"] == str(root / "lfw" / "pairs.txt")
    assert len(pairs) == 12 and len(ds) == len(USED)
    shutil.move(root / "lfw" / "pairs.txt", tmp_path / "elsewhere.txt")
    assert len(load_lfw(root, size=8, pairs=tmp_path / "elsewhere.txt")[1]) == 12


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda ls: ls[:-2], ["line 1", "truncated", "2 folds x 2 x 3 = 12 pair lines", "holds 10"]),
        (lambda ls: [*ls, "Zico\t1\t2"], ["line 14", "extra line"]),
        (lambda ls: [ls[0], "Abel_Pacheco\t1", *ls[2:]], ["line 2", "field 'n2' is missing", "name n1 n2"]),
        (lambda ls: [*ls[:3], "Adam_Sandler\t2\tZico\t4", *ls[4:]], ["line 4", "extra fields", "matched pair 3"]),
        (lambda ls: [*ls[:5], "Aaron_Eckhart\t1\tAbel_Pacheco", *ls[6:]], ["line 6", "field 'n2' is missing"]),
        # a lost line shifts the rest: fold 2's first matched line lands in fold 1's last mismatched slot
        (lambda ls: ls[:4] + ls[5:] + ["Zico\t1\t2"], ["line 7", "'n2' is missing", "mismatched pair 3 of fold 1"]),
        (lambda ls: [ls[0], "Abel_Pacheco\tx\t4", *ls[2:]], ["line 2: field 'n1' must be an integer, got 'x'"]),
        (lambda ls: [ls[0], "Abel_Pacheco\t1\t0", *ls[2:]], ["line 2: field 'n2' must be a positive integer"]),
        (lambda ls: [*ls[:5], "Zico\t1\tZico\t2", *ls[6:]], ["line 6", "field 'name2' must differ"]),
        (lambda ls: [ls[0], "../../etc\t1\t2", *ls[2:]], ["line 2", "field 'name'", "folder name"]),
        (lambda ls: ["2\tx", *ls[1:]], ["line 1: field 'pairs_per_fold' must be an integer"]),
        (lambda ls: ["0\t3", *ls[1:]], ["line 1: field 'folds' must be a positive integer"]),
        (lambda ls: ["2 3 4", *ls[1:]], ["line 1: field 'header' must be two positive integers"]),
        (lambda ls: [], ["pairs.txt", "field 'pairs'", "empty"]),
    ],
)
def test_pairs_errors_name_file_line_and_field(tmp_path: Path, edit, needles) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(edit(pairs_text().splitlines())) + "\n")
    msg = _raises(lambda: read_lfw_pairs(path), *needles)
    assert str(path) in msg


def test_load_lfw_errors(tmp_path: Path, lfw_root: Path) -> None:
    _raises(lambda: load_lfw(tmp_path / "nowhere"), "nowhere", "does not exist")
    (tmp_path / "bare").mkdir()
    _raises(lambda: load_lfw(tmp_path / "bare"), "bare", "lfw-deepfunneled/ nor lfw/")
    _raises(lambda: load_lfw(lfw_root, pairs="pairs_missing.txt"), "pairs_missing.txt", "does not exist")
    (lfw_root / "lfw-deepfunneled" / "Zico" / "Zico_0003.jpg").unlink()
    msg = _raises(lambda: load_lfw(lfw_root, size=SIZE), "Zico/Zico_0003.jpg", "does not exist")
    assert f"{lfw_root / 'pairs.txt'} line 9" in msg  # first named by 'Zico 1 3', fold 2's second matched pair
    write_image(lfw_root / "lfw-deepfunneled" / "Zico" / "Zico_0003.jpg", 0)
    cut = lfw_root / "lfw-deepfunneled" / "Abdullah" / "Abdullah_0002.jpg"
    cut.write_bytes(cut.read_bytes()[:300])
    _raises(lambda: load_lfw(lfw_root, size=SIZE), "Abdullah_0002.jpg", "truncated", "pairs.txt line 8")


# ----------------------------------------------------------------------- FFHQ
def test_ffhq_thousands_folders(tmp_path: Path) -> None:
    root = tmp_path / "images1024x1024"
    for k in (1000, 0, 1, 999, 1001):
        write_image(root / f"{k // 1000 * 1000:05d}" / f"{k:05d}.png", k % 200, hw=(64, 64))
    (root / "LICENSE.txt").write_text("CC BY-NC-SA 4.0")
    ds = load_ffhq(root, size=SIZE)
    assert ds.images.shape == (5, SIZE, SIZE, 3)
    want = ["00000/00000.png", "00000/00001.png", "00000/00999.png", "01000/01000.png", "01000/01001.png"]
    assert ds.meta["image_files"] == want
    assert ds.annotations["label"].tolist() == [-1] * 5 and ds.annotations["label"].dtype == np.int64
    assert ds.meta["labelled"] is False and ds.meta["name"] == "ffhq"
    for i, k in enumerate((0, 1, 999, 1000, 1001)):
        assert_colour(ds.images[i], k % 200)
    assert load_ffhq(root, size=SIZE, limit=2).meta["image_files"] == ["00000/00000.png", "00000/00001.png"]


def test_ffhq_flat_folder_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name, k in (("b.jpg", 1), ("a.png", 2), ("c.JPG", 3)):
        write_image(root / name, k, hw=(40, 30))
    ds = load_ffhq(root, size=16)
    assert ds.meta["image_files"] == ["a.png", "b.jpg", "c.JPG"] and ds.images.shape == (3, 16, 16, 3)
    _raises(lambda: load_ffhq(tmp_path / "nowhere"), "nowhere", "does not exist")
    (tmp_path / "none" / "00000").mkdir(parents=True)
    _raises(lambda: load_ffhq(tmp_path / "none"), "none", "no .png/.jpg images")
    _raises(lambda: load_ffhq(root, limit=0), "limit")


# -------------------------------------------------------------- aligned crops
def test_aligned_crops_round_trip_is_byte_identical(tmp_path: Path, casia_root) -> None:
    root, _ = casia_root
    ds = load_casia_webface(root, size=SIZE)
    ds.images[0, 0, 0] = (1, 2, 3)  # a pixel JPEG could not have kept: PNG must
    out = export_aligned_crops(ds, tmp_path / "crops")
    assert (out / "identities.txt").read_text() == "0000045\n0000099\n0000100\n0001000\n"
    assert sorted(p.name for p in (out / "0000099").iterdir()) == ["00003.png", "00004.png"]
    back = load_aligned_crops(out)
    assert back.images.tobytes() == ds.images.tobytes() and back.images.shape == ds.images.shape
    np.testing.assert_array_equal(back.annotations["label"], ds.annotations["label"])
    np.testing.assert_array_equal(back.annotations["identity"], ds.annotations["identity"])
    assert back.meta["identities"] == ds.meta["identities"] and back.meta["name"] == "aligned-crops"
    # any order survives (the file number is the row), and an identity without images keeps its label
    shuffled = ds.subset([9, 0, 4, 2])
    back = load_aligned_crops(export_aligned_crops(shuffled, tmp_path / "shuffled"))
    assert back.images.tobytes() == shuffled.images.tobytes()
    assert back.annotations["label"].tolist() == [3, 0, 1, 0] and back.meta["identities"] == ds.meta["identities"]
    assert load_aligned_crops(out, size=16).images.shape == (10, 16, 16, 3)


def test_aligned_crops_errors(tmp_path: Path, casia_root) -> None:
    root, _ = casia_root
    ds = load_casia_webface(root, size=SIZE)
    out = export_aligned_crops(ds, tmp_path / "crops")
    _raises(lambda: export_aligned_crops(ds, out), "crops", "not an empty folder")
    ffhq = ArrayDataset(ds.images[:2], {"label": np.full(2, -1, np.int64)}, {"name": "ffhq"})
    _raises(lambda: export_aligned_crops(ffhq, tmp_path / "u"), "labels >= 0", "unlabelled")
    nolabel = ArrayDataset(ds.images[:2], {}, {})
    _raises(lambda: export_aligned_crops(nolabel, tmp_path / "n"), "'label'")
    numbered = export_aligned_crops(ArrayDataset(ds.images[:2], {"label": np.array([1, 1])}, {}), tmp_path / "num")
    assert (numbered / "identities.txt").read_text() == "0\n1\n"

    names = out / "identities.txt"
    (out / "0009999").mkdir()
    _raises(lambda: load_aligned_crops(out), "0009999", "not listed in", "identities.txt")
    (out / "0009999").rmdir()
    (out / "0000100" / "notes.txt").write_text("x")
    _raises(lambda: load_aligned_crops(out), "0000100/notes.txt", "field 'index'")
    (out / "0000100" / "notes.txt").unlink()
    write_image(out / "0000100" / "00100.png", 0, hw=(20, 20))
    _raises(lambda: load_aligned_crops(out), "00100.png", "20x20", "pass size=")
    assert len(load_aligned_crops(out, size=8)) == 11
    names.write_text("0000045\n0000099\n0000045\n0000100\n0001000\n")
    _raises(lambda: load_aligned_crops(out), "identities.txt line 3", "repeats line 1")
    names.write_text("0000045\n0000099\n0000100\n0001000\n0002000\n")
    _raises(lambda: load_aligned_crops(out), "identities.txt line 5", "has no folder")
    names.unlink()
    _raises(lambda: load_aligned_crops(out), "identities.txt", "does not exist", "not a complete export")


# --------------------------------------------------------------------- pickles
def evil_pickle(marker: Path, protocol: int) -> bytes:
    """A pickle whose unpickling copies a file to ``marker`` (shutil.copyfile), as a hostile .bin could."""
    src = marker.with_name(marker.name + ".src")
    src.write_text("pwned")

    class Payload:
        def __reduce__(self):
            return (shutil.copyfile, (str(src), str(marker)))

    return pickle.dumps(Payload(), protocol=protocol)


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a loader unpickled a file")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, boom)


def test_the_evil_pickle_really_runs_code(tmp_path: Path) -> None:
    """The payload used below is live: unpickling it (here, on purpose) creates its marker."""
    marker = tmp_path / "control"
    pickle.loads(evil_pickle(marker, 4))
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_are_refused_unopened(tmp_path: Path, lfw_root: Path, casia_root, protocol, no_unpickling) -> None:
    marker = tmp_path / "marker"
    blob = evil_pickle(marker, protocol)
    assert blob[:2] == bytes((0x80, protocol))
    refusal = "is a pickle (insightface verification .bin); backdoorlab never unpickles data files"
    files = {}
    for name in ("lfw.bin", "cfp_fp.bin", "agedb_30.pkl", "x.pickle", "innocent.dat", "pairs.txt"):
        files[name] = tmp_path / "pickles" / name
        files[name].parent.mkdir(exist_ok=True)
        files[name].write_bytes(blob)
    for p in files.values():
        _raises(lambda p=p: refuse_pickle(p), str(p), refusal, "export the images as a folder")
    calls = [
        lambda: load_casia_webface(files["lfw.bin"]),
        lambda: load_lfw(files["cfp_fp.bin"]),
        lambda: load_lfw(lfw_root, pairs=files["agedb_30.pkl"]),
        lambda: load_lfw(lfw_root, pairs=files["pairs.txt"]),  # by its header: the name looks innocent
        lambda: read_lfw_pairs(files["pairs.txt"]),
        lambda: load_ffhq(files["x.pickle"]),
        lambda: load_ffhq(files["innocent.dat"]),
        lambda: load_aligned_crops(files["lfw.bin"]),
        lambda: load_real_dataset("lfw", str(files["lfw.bin"])),
        lambda: load_real_dataset("aligned-crops", str(files["innocent.dat"])),
    ]
    for call in calls:
        _raises(call, refusal)
    _raises(lambda: refuse_pickle(tmp_path / "not_there.bin"), "not_there.bin", refusal)  # by name alone
    root, _ = casia_root
    (root / "0000099" / "003.jpg").write_bytes(blob)  # a pickle dressed as an image
    _raises(lambda: load_casia_webface(root, size=SIZE), "0000099/003.jpg", refusal)
    assert not marker.exists()
    assert refuse_pickle(lfw_root) == lfw_root and refuse_pickle(lfw_root / "pairs.txt") == lfw_root / "pairs.txt"


# -------------------------------------------------------------------- registry
def test_registry_and_config_source(tmp_path: Path, lfw_root: Path, casia_root) -> None:
    from backdoorlab.experiments.config import DataConfig

    assert {"casia-webface", "lfw", "ffhq", "aligned-crops"} <= set(REAL_LOADERS)
    ds = load_real_dataset("lfw", str(lfw_root), size=SIZE)
    assert isinstance(ds, ArrayDataset) and len(ds) == len(USED)
    lists = ds.meta["pairs"]
    assert all(isinstance(v, list) for k, v in lists.items() if k not in ("folds", "pairs_per_fold", "source"))
    assert lists["same"][:4] == [True, True, True, False] and isinstance(lists["a_row"][0], int)
    saved = ArrayDataset.load(ds.save(tmp_path / "lfw_saved"))  # meta is JSON: the pairs travel with the data
    pairs = LfwPairs.from_lists(saved.meta["pairs"])
    _, direct = load_lfw(lfw_root, size=8)
    for key in LfwPairs.ARRAYS:
        np.testing.assert_array_equal(getattr(pairs, key), getattr(direct, key))
    root, _ = casia_root
    casia = load_real_dataset("casia-webface", str(root), size=8, min_images=2)
    assert casia.meta["identities"] == ["0000045", "0000099", "0001000"]
    crops = load_real_dataset("aligned-crops", str(export_aligned_crops(casia, tmp_path / "c")))
    assert crops.images.tobytes() == casia.images.tobytes()
    assert load_real_dataset("ffhq", str(root / "0000045"), size=8, limit=1).annotations["label"].tolist() == [-1]
    with pytest.raises(ConfigError, match="accepted options"):
        load_real_dataset("lfw", str(lfw_root), split="test")
    for source in ("casia-webface", "lfw", "ffhq", "aligned-crops"):
        assert DataConfig(source=source, path="/data").source == source
