"""ArrayDataset: construction checks, batching, fingerprints and the on-disk format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backdoorlab.data import arrays as arrays_mod
from backdoorlab.data.arrays import (
    META_FILE,
    ArrayDataset,
    compute_fingerprint,
    images_to_tensor,
    load_dataset,
    tensor_to_images,
)
from backdoorlab.errors import DatasetError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_ds(n: int = 10, h: int = 4, w: int = 5, seed: int = 0, name: str = "toy") -> ArrayDataset:
    """Random content; ``index`` holds each sample's own position, to trace reordering."""
    rng = np.random.default_rng(seed)
    return ArrayDataset(
        rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
        {
            "gaze": rng.uniform(-0.5, 0.5, (n, 2)).astype(np.float32),
            "identity": rng.integers(0, 3, n).astype(np.int64),
            "landmarks": rng.uniform(0, 4, (n, 5, 2)).astype(np.float32),
            "index": np.arange(n, dtype=np.int64),
        },
        {"name": name},
    )


def assert_same_data(a: ArrayDataset, b: ArrayDataset) -> None:
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert a.images.dtype == b.images.dtype
    assert sorted(a.annotations) == sorted(b.annotations)
    for k in a.annotations:
        assert a.annotations[k].dtype == b.annotations[k].dtype, k
        np.testing.assert_array_equal(np.asarray(a.annotations[k]), np.asarray(b.annotations[k]), err_msg=k)


# --------------------------------------------------------------- construction
def test_images_must_be_uint8_nhwc() -> None:
    with pytest.raises(DatasetError, match="uint8"):
        ArrayDataset(np.zeros((2, 4, 4, 3), np.float32), {})
    with pytest.raises(DatasetError, match="uint8"):
        ArrayDataset(np.zeros((2, 4, 4), np.uint8), {})


def test_annotation_length_mismatch_is_refused() -> None:
    with pytest.raises(DatasetError, match="'gaze' has 3 rows but there are 4 images"):
        ArrayDataset(np.zeros((4, 2, 2, 3), np.uint8), {"gaze": np.zeros((3, 2), np.float32)})


def test_len_and_image_shape() -> None:
    ds = make_ds(n=7, h=4, w=5)
    assert len(ds) == 7
    assert ds.image_shape == (3, 4, 5)


@given(
    imgs=arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.sampled_from([1, 3])))
)
@FAST
def test_images_tensor_round_trip(imgs: np.ndarray) -> None:
    t = images_to_tensor(imgs)
    assert t.dtype == torch.float32
    assert t.shape == (imgs.shape[0], imgs.shape[3], imgs.shape[1], imgs.shape[2])
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    np.testing.assert_allclose(t.numpy(), imgs.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(tensor_to_images(t), imgs)


def test_tensor_to_images_clamps_and_rounds() -> None:
    t = torch.tensor([-0.5, 0.0, 0.6 / 255, 1.4 / 255, 1.6 / 255, 1.0, 2.0]).view(1, 1, 1, 7)
    np.testing.assert_array_equal(tensor_to_images(t).ravel(), [0, 0, 1, 1, 2, 255, 255])


# ------------------------------------------------------------------- batching
def test_getitem_matches_batch_and_contract() -> None:
    ds = make_ds()
    img, ann = ds[3]
    assert img.shape == (3, 4, 5) and img.dtype == torch.float32
    np.testing.assert_allclose(img.numpy(), ds.images[3].transpose(2, 0, 1) / 255.0, rtol=1e-6)
    assert set(ann) == set(ds.annotations)
    assert ann["gaze"].shape == (2,) and ann["gaze"].dtype == torch.float32
    assert ann["identity"].dtype == torch.int64 and int(ann["index"]) == 3
    np.testing.assert_array_equal(ann["landmarks"].numpy(), ds.annotations["landmarks"][3])


index_lists = st.one_of(
    # contiguous runs (the slicing fast path)
    st.tuples(st.integers(0, 9), st.integers(1, 10)).map(lambda t: list(range(t[0], min(10, t[0] + t[1])))),
    # arbitrary gathers, repeats and descending runs included
    st.lists(st.integers(0, 9), min_size=1, max_size=12),
)


@given(idx=index_lists)
@FAST
def test_batch_equals_per_item(idx: list[int]) -> None:
    ds = make_ds()
    imgs, ann = ds.batch(np.asarray(idx))
    assert imgs.shape == (len(idx), 3, 4, 5)
    for j, i in enumerate(idx):
        one_img, one_ann = ds[i]
        torch.testing.assert_close(imgs[j], one_img, rtol=0, atol=0)
        for k in ds.annotations:
            torch.testing.assert_close(ann[k][j], one_ann[k], rtol=0, atol=0)
    assert ann["index"].tolist() == idx


def test_batch_accepts_plain_lists_and_is_same_for_contiguous_and_gathered() -> None:
    ds = make_ds()
    a_img, a_ann = ds.batch([2, 3, 4, 5])  # contiguous: slicing path
    b_img, b_ann = ds.batch([5, 4, 3, 2])  # gathered
    torch.testing.assert_close(a_img, b_img.flip(0), rtol=0, atol=0)
    for k in ds.annotations:
        torch.testing.assert_close(a_ann[k], b_ann[k].flip(0), rtol=0, atol=0)


def test_empty_batch() -> None:
    imgs, ann = make_ds().batch(np.array([], dtype=np.int64))
    assert imgs.shape == (0, 3, 4, 5)
    assert ann["gaze"].shape == (0, 2)


@pytest.mark.parametrize("idx", [[2, 3, 4], [4, 2, 3], [5]], ids=["contiguous", "gathered", "single"])
def test_batch_annotations_do_not_alias_the_dataset(idx: list[int]) -> None:
    """A batch transform that edits labels in place (poisoning) must not edit the dataset."""
    ds = make_ds()
    before = {k: v.copy() for k, v in ds.annotations.items()}
    _, ann = ds.batch(idx)
    for t in ann.values():
        t.zero_()
    for k in ds.annotations:
        np.testing.assert_array_equal(ds.annotations[k], before[k], err_msg=k)


def test_batch_of_memory_mapped_dataset_is_writable_copy(tmp_path: Path) -> None:
    """Tensors wrapping read-only memory maps would crash on an in-place label edit."""
    ds = ArrayDataset.load(make_ds().save(tmp_path / "ds"), mmap=True)
    assert isinstance(ds.annotations["gaze"], np.memmap)
    _, ann = ds.batch([1, 2, 3])
    for k, t in ann.items():
        assert not np.shares_memory(t.numpy(), ds.annotations[k]), k


@given(
    n=st.integers(1, 23), bs=st.integers(1, 8), shuffle=st.booleans(), drop_last=st.booleans(), seed=st.integers(0, 5)
)
@FAST
def test_iter_batches_cover_all_samples(n: int, bs: int, shuffle: bool, drop_last: bool, seed: int) -> None:
    ds = make_ds(n=n, h=2, w=2)
    batches = list(ds.iter_batches(bs, shuffle=shuffle, seed=seed, drop_last=drop_last))
    seen = np.concatenate([a["index"].numpy() for _, a in batches]) if batches else np.zeros(0, np.int64)
    sizes = [len(img) for img, _ in batches]
    assert all(s == bs for s in sizes[:-1])
    assert len(np.unique(seen)) == len(seen)  # no sample twice
    if drop_last:
        assert len(seen) == n - n % bs and all(s == bs for s in sizes)
    else:
        assert sorted(seen.tolist()) == list(range(n))
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(len(seen)))
    for img, a in batches:  # images travel with their labels
        np.testing.assert_array_equal(tensor_to_images(img), ds.images[a["index"].numpy()])


def test_iter_batches_shuffle_is_seeded() -> None:
    ds = make_ds(n=30, h=2, w=2)

    def order(seed: int) -> list[int]:
        return [i for _, a in ds.iter_batches(7, shuffle=True, seed=seed) for i in a["index"].tolist()]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1) != list(range(30))


# ----------------------------------------------------------- subset / require
def test_subset_keeps_order_and_copies() -> None:
    ds = make_ds()
    _ = ds.fingerprint  # cached in meta; must not leak into the subset
    sub = ds.subset([7, 1, 4])
    assert len(sub) == 3
    assert sub.annotations["index"].tolist() == [7, 1, 4]
    np.testing.assert_array_equal(sub.images, ds.images[[7, 1, 4]])
    assert sub.meta["name"] == "toy"
    assert sub.fingerprint == compute_fingerprint(sub.images, sub.annotations) != ds.fingerprint
    sub.images[:] = 0
    sub.annotations["gaze"][:] = 9
    assert ds.images[[7, 1, 4]].any() and not (ds.annotations["gaze"] == 9).any()


def test_require() -> None:
    ds = make_ds(name="my-data")
    ds.require("gaze", "identity")
    ds.require()
    with pytest.raises(DatasetError, match=r"my-data lacks annotation\(s\) \['eye_corners'\]") as err:
        ds.require("gaze", "eye_corners")
    assert "landmarks" in str(err.value)  # lists what it has


# ---------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_across_copies_and_origins(tmp_path: Path) -> None:
    a, b = make_ds(seed=3), make_ds(seed=3)
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 16
    c = ArrayDataset(a.images.copy(), dict(reversed(list(a.annotations.items()))))  # key order irrelevant
    assert c.fingerprint == a.fingerprint
    loaded = ArrayDataset.load(a.save(tmp_path / "a"))
    assert loaded.fingerprint == a.fingerprint == compute_fingerprint(loaded.images, loaded.annotations)
    assert make_ds(seed=4).fingerprint != a.fingerprint


@given(pos=st.integers(0, 10 * 4 * 5 * 3 - 1), delta=st.integers(1, 255))
@FAST
def test_fingerprint_sees_any_single_pixel_change(pos: int, delta: int) -> None:
    ds = make_ds()
    images = ds.images.copy()
    images.reshape(-1)[pos] = (int(images.reshape(-1)[pos]) + delta) % 256
    assert compute_fingerprint(images, ds.annotations) != compute_fingerprint(ds.images, ds.annotations)


def test_fingerprint_sees_annotations_names_and_dtypes() -> None:
    ds = make_ds()
    fp = compute_fingerprint(ds.images, ds.annotations)
    ann = {k: v.copy() for k, v in ds.annotations.items()}
    ann["gaze"][0, 0] += 1e-3
    assert compute_fingerprint(ds.images, ann) != fp
    renamed = {("gaze2" if k == "gaze" else k): v for k, v in ds.annotations.items()}
    assert compute_fingerprint(ds.images, renamed) != fp
    retyped = dict(ds.annotations, index=ds.annotations["index"].view(np.float64))  # same bytes
    assert compute_fingerprint(ds.images, retyped) != fp
    reshaped = dict(ds.annotations, landmarks=ds.annotations["landmarks"].reshape(10, 10))  # same bytes
    assert compute_fingerprint(ds.images, reshaped) != fp
    assert compute_fingerprint(ds.images, {}) != fp


# ----------------------------------------------------------------------- disk
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path: Path, mmap: bool) -> None:
    ds = make_ds()
    out = ds.save(tmp_path / "ds")
    assert out == tmp_path / "ds" and (out / META_FILE).is_file()
    assert not list(tmp_path.glob("ds.partial*"))
    loaded = load_dataset(out, mmap=mmap)
    assert_same_data(ds, loaded)
    assert isinstance(loaded.images, np.memmap) is mmap
    assert isinstance(loaded.annotations["gaze"], np.memmap) is mmap
    assert loaded.meta["name"] == "toy" and loaded.meta["n"] == 10
    assert loaded.meta["image_shape"] == [4, 5, 3]
    assert loaded.meta["annotations"]["landmarks"] == ["float32", [5, 2]]
    assert ds.meta["fingerprint"] == loaded.meta["fingerprint"]
    # the loaded copy batches like the original
    torch.testing.assert_close(loaded.batch([2, 3])[0], ds.batch([2, 3])[0], rtol=0, atol=0)


def test_save_replaces_an_existing_folder(tmp_path: Path) -> None:
    make_ds(seed=1).save(tmp_path / "ds")
    smaller = make_ds(n=3, seed=2)
    del smaller.annotations["landmarks"]
    smaller.save(tmp_path / "ds")
    loaded = ArrayDataset.load(tmp_path / "ds")
    assert_same_data(smaller, loaded)
    assert not (tmp_path / "ds" / "ann_landmarks.npy").exists()


def test_bad_annotation_key_is_refused(tmp_path: Path) -> None:
    ds = ArrayDataset(np.zeros((1, 2, 2, 3), np.uint8), {"../evil": np.zeros(1)})
    with pytest.raises(DatasetError, match="evil"):
        ds.save(tmp_path / "ds")
    assert not (tmp_path / "evil.npy").exists()


def test_interrupted_save_is_not_loadable_and_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = make_ds(seed=1), make_ds(seed=2)
    old.save(tmp_path / "ds")

    def crash(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt  # the process dies while writing meta.json

    monkeypatch.setattr(arrays_mod.json, "dumps", crash)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "ds")
    monkeypatch.undo()
    partial = tmp_path / f"ds.partial-{os.getpid()}"
    assert (partial / "images.npy").is_file()  # the arrays were written ...
    with pytest.raises(DatasetError, match=r"meta\.json is missing"):
        ArrayDataset.load(partial)  # ... but the folder is not complete
    assert_same_data(old, ArrayDataset.load(tmp_path / "ds"))  # previous version intact
    # a later save cleans up the leftover and completes
    new.save(tmp_path / "ds")
    assert not partial.exists()
    assert_same_data(new, ArrayDataset.load(tmp_path / "ds"))


def test_missing_folder_and_meta(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        ArrayDataset.load(tmp_path / "nope")
    out = make_ds().save(tmp_path / "ds")
    (out / META_FILE).unlink()
    with pytest.raises(DatasetError) as err:
        ArrayDataset.load(out)
    assert str(out / META_FILE) in str(err.value)


def test_invalid_meta_json(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    (out / META_FILE).write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        ArrayDataset.load(out)


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("victim", ["images.npy", "ann_gaze.npy"])
@pytest.mark.parametrize("keep", [0.5, 0.02])  # mid-data and mid-header
def test_truncated_npy_is_a_dataset_error(tmp_path: Path, mmap: bool, victim: str, keep: float) -> None:
    out = make_ds().save(tmp_path / "ds")
    path = out / victim
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DatasetError) as err:
        ArrayDataset.load(out, mmap=mmap)
    assert victim in str(err.value)


def test_missing_annotation_file(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    (out / "ann_identity.npy").unlink()
    with pytest.raises(DatasetError, match=r"ann_identity\.npy is missing"):
        ArrayDataset.load(out)


@pytest.mark.parametrize(
    "replacement",
    [np.zeros((10, 3), np.float32), np.zeros((10, 2), np.float64), np.zeros(10, np.float32)],
    ids=["shape", "dtype", "rank"],
)
def test_annotation_disagreeing_with_meta(tmp_path: Path, replacement: np.ndarray) -> None:
    out = make_ds().save(tmp_path / "ds")
    np.save(out / "ann_gaze.npy", replacement)
    with pytest.raises(DatasetError, match=r"ann_gaze\.npy: expected float32 \[2\]"):
        ArrayDataset.load(out)


def test_meta_shape_edit_is_detected(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    meta = json.loads((out / META_FILE).read_text())
    meta["annotations"]["landmarks"] = ["float32", [4, 2]]
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="ann_landmarks"):
        ArrayDataset.load(out)


def test_image_count_disagreeing_with_meta(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    np.save(out / "images.npy", np.zeros((9, 4, 5, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"meta\.json says 10 images, file has 9"):
        ArrayDataset.load(out)


def test_annotation_rows_disagreeing_with_images(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    np.save(out / "ann_gaze.npy", np.zeros((9, 2), np.float32))
    with pytest.raises(DatasetError, match=r"ann_gaze\.npy: its contents changed"):
        ArrayDataset.load(out)  # the recorded hash sees it first
    with pytest.raises(DatasetError, match="'gaze' has 9 rows"):
        ArrayDataset.load(out, verify=False)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    np.save(out / "ann_gaze.npy", np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="ann_gaze"):
        ArrayDataset.load(out, mmap=False)


# ------------------------------------------------------------ verification on open (issue 13)
def _alter_one_pixel(path: Path) -> None:
    arr = np.load(path, mmap_mode="r+")
    arr.flat[0] = (int(arr.flat[0]) + 1) % 256
    arr.flush()


def test_data_altered_on_disk_with_the_same_shapes_is_refused_naming_the_file(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    _alter_one_pixel(out / "images.npy")
    with pytest.raises(DatasetError, match=r"images\.npy: its contents changed since the dataset was written"):
        ArrayDataset.load(out)
    assert len(ArrayDataset.load(out, verify=False)) == 10  # the opt-out, for huge trusted data


def test_an_edited_fingerprint_is_refused(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    meta = json.loads((out / "meta.json").read_text())
    meta["fingerprint"] = "0" * 16
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"meta\.json: the fingerprint '0000000000000000' or the file hashes"):
        ArrayDataset.load(out)


def test_a_folder_from_before_file_hashes_is_checked_against_its_fingerprint(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    meta = json.loads((out / "meta.json").read_text())
    for key in ("files", "seal"):
        del meta[key]
    (out / "meta.json").write_text(json.dumps(meta))
    assert ArrayDataset.load(out).fingerprint == meta["fingerprint"]  # intact: opens as before
    _alter_one_pixel(out / "images.npy")
    with pytest.raises(DatasetError, match="no longer matches its fingerprint"):
        ArrayDataset.load(out)


def test_a_stray_array_in_a_verified_folder_is_named(tmp_path: Path) -> None:
    out = make_ds().save(tmp_path / "ds")
    np.save(out / "ann_extra.npy", np.zeros(10))
    with pytest.raises(DatasetError, match=r"ann_extra\.npy: not among the files"):
        ArrayDataset.load(out)
