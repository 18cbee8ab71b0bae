"""Instance tables: the ragged container, its torch batch form, and ArrayDataset integration."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backdoorlab.data.arrays import META_FILE, ArrayDataset, compute_fingerprint
from backdoorlab.data.instances import FACE_SCHEMA, OFFSETS_FILE, InstanceBatch, InstanceTable, column_file
from backdoorlab.errors import DatasetError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def faces(image: int, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``k`` random faces of one image; ``label`` = 100 * image + j traces every instance."""
    rng = np.random.default_rng([seed, image])
    return {
        "boxes": rng.uniform(0, 30, (k, 4)).astype(np.float32),
        "landmarks": rng.uniform(0, 30, (k, 5, 2)).astype(np.float32),
        "visible": rng.random((k, 5)) < 0.8,
        "label": 100 * image + np.arange(k, dtype=np.int64),
    }


def make_table(counts: list[int], seed: int = 0) -> InstanceTable:
    return InstanceTable.from_lists([faces(i, k, seed) for i, k in enumerate(counts)], FACE_SCHEMA)


def make_ds(counts: list[int] | None = None, seed: int = 0) -> ArrayDataset:
    counts = [2, 0, 1, 3, 0, 1] if counts is None else counts
    n = len(counts)
    rng = np.random.default_rng(seed)
    return ArrayDataset(
        rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8),
        {"index": np.arange(n, dtype=np.int64), "gaze": rng.normal(size=(n, 2)).astype(np.float32)},
        {"name": "faces"},
        instances=make_table(counts, seed),
    )


def assert_rows_equal(got: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    assert set(got) == set(want)
    for k in want:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.dtype == w.dtype and g.shape == w.shape, k
        np.testing.assert_array_equal(g, w, err_msg=k)


counts_lists = st.lists(st.integers(0, 4), min_size=0, max_size=8)


# ------------------------------------------------------------- InstanceTable
def test_from_lists_layout_and_zero_instance_images() -> None:
    per_image = [faces(0, 2), {}, faces(2, 0), faces(3, 3)]
    t = InstanceTable.from_lists(per_image, FACE_SCHEMA)
    assert len(t) == 4 and t.n_instances == 5
    assert t.offsets.dtype == np.int64 and t.offsets.tolist() == [0, 2, 2, 2, 5]
    assert t.counts().tolist() == [2, 0, 0, 3]
    assert t.schema() == FACE_SCHEMA
    assert t.columns["label"].tolist() == [0, 1, 300, 301, 302]
    for i, want in enumerate(per_image):
        got = t.rows(i)
        assert_rows_equal(got, want or {k: np.zeros((0, *s), d) for k, (d, s) in FACE_SCHEMA.items()})


def test_from_lists_casts_to_the_schema_and_accepts_plain_lists() -> None:
    t = InstanceTable.from_lists(
        [{"boxes": [[1, 2, 3, 4]], "label": [7]}, {"boxes": [], "label": []}],
        {"boxes": ("float32", (4,)), "label": ("int64", ())},
    )
    assert t.columns["boxes"].dtype == np.float32 and t.columns["boxes"].shape == (1, 4)
    assert t.columns["label"].dtype == np.int64 and t.counts().tolist() == [1, 0]


def test_from_lists_of_no_images_and_empty() -> None:
    t = InstanceTable.from_lists([], FACE_SCHEMA)
    assert len(t) == 0 and t.n_instances == 0 and t.columns["landmarks"].shape == (0, 5, 2)
    e = InstanceTable.empty(3, FACE_SCHEMA)
    assert len(e) == 3 and e.counts().tolist() == [0, 0, 0] and e.schema() == FACE_SCHEMA


@pytest.mark.parametrize(
    ("sample", "match"),
    [
        ({"boxes": np.zeros((1, 4))}, r"image 1: instance columns \['boxes'\] differ"),
        (dict(faces(1, 2), label=np.zeros(3, np.int64)), "image 1: .*disagree.*'label': 3"),
        (dict(faces(1, 1), boxes=np.zeros((1, 5))), r"image 1: instance column 'boxes' has shape \(1, 5\)"),
    ],
    ids=["missing-column", "count-disagrees", "wrong-shape"],
)
def test_from_lists_refuses_bad_images(sample: dict[str, Any], match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        InstanceTable.from_lists([faces(0, 1), sample], FACE_SCHEMA)


@pytest.mark.parametrize(
    ("offsets", "columns", "match"),
    [
        (np.array([0, 2], np.int32), {}, "1-D int64"),
        (np.array([[0, 2]], np.int64), {}, "1-D int64"),
        ([0, 2], {}, "1-D int64.*list"),
        (np.zeros(0, np.int64), {}, "N\\+1 >= 1"),
        (np.array([1, 2], np.int64), {"label": np.zeros(2, np.int64)}, r"start at 0, got offsets\[0\] = 1"),
        (np.array([0, 3, 2], np.int64), {"label": np.zeros(2, np.int64)}, r"offsets\[2\] = 2 < offsets\[1\] = 3"),
        (np.array([0, 1, 3], np.int64), {"boxes": np.zeros((2, 4), np.float32)}, "'boxes' has 2 rows but .* 3"),
        (np.array([0, 0], np.int64), {"offsets": np.zeros(0, np.int64)}, "not 'offsets'"),
        (np.array([0, 0], np.int64), {"../x": np.zeros(0, np.int64)}, "alphanumeric"),
        (np.array([0, 1], np.int64), {"label": 5}, "'label' must be an array"),
    ],
    ids=["int32", "2d", "list", "empty", "start", "decreasing", "rows", "offsets-name", "bad-name", "scalar"],
)
def test_table_validation_names_the_problem(offsets: Any, columns: dict[str, Any], match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        InstanceTable(offsets, columns)


def test_rows_negative_and_out_of_range() -> None:
    t = make_table([1, 2])
    assert_rows_equal(t.rows(-1), t.rows(1))
    assert t.rows(1)["label"].tolist() == [100, 101]
    with pytest.raises(IndexError, match="row 2 is out of range for 2 images"):
        t.rows(2)
    with pytest.raises(IndexError):
        t.rows(-3)


def test_gather_order_repeats_masks_and_copies() -> None:
    t = make_table([2, 0, 1, 3])
    g = t.gather([3, 0, 3, 1])
    assert g.counts().tolist() == [3, 2, 3, 0]
    assert g.columns["label"].tolist() == [300, 301, 302, 0, 1, 300, 301, 302]
    assert g.gather(np.array([True, False, False, True])).counts().tolist() == [3, 0]
    assert t.gather(slice(1, 3)).equals(t.gather([1, 2]))
    assert t.gather(torch.tensor([-1])).equals(t.gather([3]))
    empty = t.gather([])
    assert len(empty) == 0 and empty.n_instances == 0 and empty.schema() == t.schema()
    g.columns["boxes"][:] = -1  # a copy: the source is untouched
    assert (t.columns["boxes"] >= 0).all()
    with pytest.raises(IndexError, match="out of range"):
        t.gather([4])
    with pytest.raises(IndexError, match="boolean mask of length 2"):
        t.gather(np.array([True, False]))
    with pytest.raises(IndexError, match="integers"):
        t.gather(np.array([0.0]))


def test_equals_sees_values_dtypes_columns_and_offsets() -> None:
    t = make_table([1, 2])
    assert t.equals(make_table([1, 2]))
    assert not t.equals(make_table([1, 2], seed=1))  # values
    assert not t.equals(make_table([2, 1]))  # same M, other split
    assert not t.equals(InstanceTable(t.offsets, {k: v for k, v in t.columns.items() if k != "visible"}))
    assert not t.equals(InstanceTable(t.offsets, dict(t.columns, label=t.columns["label"].astype(np.int32))))
    nan = dict(t.columns, boxes=np.full_like(t.columns["boxes"], np.nan))
    assert InstanceTable(t.offsets, nan).equals(InstanceTable(t.offsets.copy(), dict(nan)))


def test_repr_is_a_summary() -> None:
    assert repr(make_table([1, 2])) == (
        "InstanceTable(images=2, instances=3, columns={boxes: float32 (4,), landmarks: float32 (5, 2), "
        "visible: bool (5,), label: int64 ()})"
    )


# ------------------------------------------------------------- InstanceBatch
def test_batch_from_table_and_tensor_like_selection() -> None:
    t = make_table([2, 0, 1, 3])
    b = InstanceBatch.from_table(t)
    assert len(b) == 4 and b.n_instances == 6 and b.counts().tolist() == [2, 0, 1, 3]
    assert b.offsets.dtype == torch.int64 and b.columns["visible"].dtype == torch.bool
    for rows in ([3, 0], np.array([3, 0]), torch.tensor([3, 0]), torch.tensor([True, False, False, True])):
        sub = b[rows]
        assert isinstance(sub, InstanceBatch)
        assert sub.to_table().equals(t.gather(np.asarray(rows)))
    assert b[1:3].to_table().equals(t.gather([1, 2]))
    assert_rows_equal({k: v.numpy() for k, v in b[3].items()}, t.rows(3))  # int drops the batch axis
    assert b[np.int64(1)]["boxes"].shape == (0, 4) and b[torch.tensor(0)]["label"].tolist() == [0, 1]
    with pytest.raises(IndexError):
        b[4]


def test_generic_dense_code_selects_instances_too() -> None:
    """The loop poisoning and triggers run over every column must work unchanged."""
    ds = make_ds()
    _, ann = ds.batch([0, 2, 3, 5])
    rows = torch.tensor([1, 2])
    sub = {k: v[rows] for k, v in ann.items()}
    assert sub["index"].tolist() == [2, 3]
    assert sub["instances"].to_table().equals(ds.instances.gather([2, 3]))


def test_per_sample_and_from_samples_round_trip() -> None:
    b = InstanceBatch.from_table(make_table([2, 0, 3]))
    samples = b.per_sample()
    assert [s["label"].tolist() for s in samples] == [[0, 1], [], [200, 201, 202]]
    assert InstanceBatch.from_samples(samples).equals(b)
    assert len(InstanceBatch.from_samples([], FACE_SCHEMA)) == 0
    with pytest.raises(DatasetError, match="needs a schema"):
        InstanceBatch.from_samples([])
    with pytest.raises(DatasetError, match="image 1"):
        InstanceBatch.from_samples([samples[0], {"boxes": samples[0]["boxes"]}])


def test_replace_rows_adds_and_removes_instances_without_touching_the_input() -> None:
    b = InstanceBatch.from_table(make_table([2, 0, 1, 3]))
    before = b.to_table()
    other = InstanceBatch.from_table(
        InstanceTable.from_lists([faces(7, 3), {}], FACE_SCHEMA)  # image 1 gains 3 faces, image 3 loses all
    )
    out = b.replace_rows(torch.tensor([1, 3]), other)
    assert out.counts().tolist() == [2, 3, 1, 0]
    assert out.columns["label"].tolist() == [0, 1, 700, 701, 702, 200]
    assert out[[1, 3]].equals(other) and out[[0, 2]].equals(b[[0, 2]])
    assert b.to_table().equals(before)  # never in place
    assert b.replace_rows(slice(0, 0), other[[]]).equals(b)


def test_replace_rows_casts_dtypes_and_refuses_mismatches() -> None:
    b = InstanceBatch.from_table(make_table([1, 1]))
    other = b[[0]]
    as_double = InstanceBatch(other.offsets, dict(other.columns, boxes=other.columns["boxes"].double()))
    out = b.replace_rows([1], as_double)
    assert out.columns["boxes"].dtype == torch.float32 and out[[1]].equals(other)
    with pytest.raises(DatasetError, match="2 rows but the replacement holds 1 images"):
        b.replace_rows([0, 1], other)
    with pytest.raises(DatasetError, match="must not repeat"):
        b.replace_rows([1, 1], b)
    no_vis = InstanceBatch(other.offsets, {k: v for k, v in other.columns.items() if k != "visible"})
    with pytest.raises(DatasetError, match="instance columns differ"):
        b.replace_rows([0], no_vis)
    with pytest.raises(IndexError):
        b.replace_rows([2], other)


def test_cat_and_to_device() -> None:
    t = make_table([1, 0, 2])
    b = InstanceBatch.from_table(t)
    assert InstanceBatch.cat([b[[0]], b[[1, 2]]]).equals(b)
    with pytest.raises(DatasetError, match="at least one"):
        InstanceBatch.cat([])
    moved = b.to("meta")  # a device without data: columns move, offsets stay on the CPU
    assert moved is not b and all(v.device.type == "meta" for v in moved.columns.values())
    assert moved.offsets.device.type == "cpu" and moved.counts().tolist() == [1, 0, 2]
    assert b.columns["boxes"].device.type == "cpu"
    assert b.to("cpu").equals(b)


def test_batch_validation() -> None:
    with pytest.raises(DatasetError, match="CPU int64"):
        InstanceBatch(torch.zeros(2, dtype=torch.int64, device="meta"), {})
    with pytest.raises(DatasetError, match="1-D int64"):
        InstanceBatch(torch.zeros(2, dtype=torch.int32), {})
    with pytest.raises(DatasetError, match="'label' has 1 rows but offsets say 2"):
        InstanceBatch(torch.tensor([0, 2]), {"label": torch.zeros(1)})


def test_batch_repr() -> None:
    b = InstanceBatch.from_table(make_table([1, 2]))
    assert repr(b).startswith("InstanceBatch(images=2, instances=3, columns={boxes: float32 (4,)")


# ---------------------------------------------------------- property tests
@given(counts=counts_lists, data=st.data())
@FAST
def test_gather_then_per_sample_equals_the_original_rows(counts: list[int], data: st.DataObject) -> None:
    t = make_table(counts)
    idx = data.draw(st.lists(st.integers(0, len(counts) - 1), max_size=10) if counts else st.just([]))
    g = t.gather(idx)
    assert g.counts().tolist() == [counts[i] for i in idx]
    samples = InstanceBatch.from_table(g).per_sample()
    assert len(samples) == len(idx)
    for s, i in zip(samples, idx, strict=True):
        assert_rows_equal({k: v.numpy() for k, v in s.items()}, t.rows(i))
    assert InstanceBatch.from_samples(samples, FACE_SCHEMA).to_table().equals(g)


@given(counts=counts_lists, mmap=st.booleans())
@FAST
def test_save_load_round_trip_property(counts: list[int], mmap: bool) -> None:
    ds = make_ds(counts)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = ArrayDataset.load(ds.save(Path(tmp) / "ds"), mmap=mmap)
        assert loaded.instances is not None and loaded.instances.equals(ds.instances)
        assert loaded.fingerprint == ds.fingerprint
        del loaded  # release the memory maps before the folder goes


@given(counts=counts_lists, data=st.data())
@FAST
def test_replace_rows_leaves_untouched_rows_equal(counts: list[int], data: st.DataObject) -> None:
    b = InstanceBatch.from_table(make_table(counts))
    before = b.to_table()
    rows = data.draw(st.lists(st.integers(0, max(len(counts) - 1, 0)), unique=True, max_size=len(counts)))
    new_counts = data.draw(st.lists(st.integers(0, 3), min_size=len(rows), max_size=len(rows)))
    other = InstanceBatch.from_table(
        InstanceTable.from_lists([faces(50 + j, k) for j, k in enumerate(new_counts)], FACE_SCHEMA)
    )
    out = b.replace_rows(rows, other)
    untouched = [i for i in range(len(counts)) if i not in rows]
    assert out[untouched].equals(b[untouched])
    assert out[rows].equals(other)
    assert out.counts().sum() == sum(counts) - sum(counts[i] for i in rows) + sum(new_counts)
    assert b.to_table().equals(before)


# ------------------------------------------------------ ArrayDataset: batches
def test_dataset_batch_carries_instances_and_dense_columns_as_before() -> None:
    ds = make_ds()
    dense = ArrayDataset(ds.images, ds.annotations, {})
    for idx in ([1, 2, 3], [5, 0, 3], [4]):  # contiguous, gathered, single
        img, ann = ds.batch(idx)
        d_img, d_ann = dense.batch(idx)
        assert set(ann) == {*d_ann, "instances"} and "instances" not in d_ann
        torch.testing.assert_close(img, d_img, rtol=0, atol=0)
        for k in d_ann:
            torch.testing.assert_close(ann[k], d_ann[k], rtol=0, atol=0)
        assert isinstance(ann["instances"], InstanceBatch)
        assert ann["instances"].to_table().equals(ds.instances.gather(idx))


def test_getitem_gives_the_images_instances() -> None:
    ds = make_ds()
    img, ann = ds[3]
    assert img.shape == (3, 4, 5) and int(ann["index"]) == 3
    assert_rows_equal({k: v.numpy() for k, v in ann["instances"].items()}, ds.instances.rows(3))
    assert ds[1][1]["instances"]["boxes"].shape == (0, 4)


@given(n=st.integers(1, 9), bs=st.integers(1, 4), shuffle=st.booleans(), seed=st.integers(0, 3))
@FAST
def test_iter_batches_instances_travel_with_their_images(n: int, bs: int, shuffle: bool, seed: int) -> None:
    counts = np.random.default_rng(seed).integers(0, 3, n).tolist()
    ds = make_ds(counts)
    seen = []
    for _, ann in ds.iter_batches(bs, shuffle=shuffle, seed=seed):
        for i, s in zip(ann["index"].tolist(), ann["instances"].per_sample(), strict=True):
            assert s["label"].tolist() == [100 * i + j for j in range(counts[i])]
            seen.append(i)
    assert sorted(seen) == list(range(n))


def test_batch_instances_of_a_memory_map_are_writable_copies(tmp_path: Path) -> None:
    ds = ArrayDataset.load(make_ds().save(tmp_path / "ds"), mmap=True)
    assert isinstance(ds.instances.columns["boxes"], np.memmap)
    for idx in ([0, 1, 2], [3, 0]):
        inst = ds.batch(idx)[1]["instances"]
        for k, v in inst.columns.items():
            assert not np.shares_memory(v.numpy(), ds.instances.columns[k]), k
            v.zero_()  # would crash on a read-only map
    assert ds.instances.equals(make_ds().instances)
    whole = InstanceBatch.from_table(ds.instances)  # wrapping the map itself copies it
    for k, v in whole.columns.items():
        assert not np.shares_memory(v.numpy(), ds.instances.columns[k]), k


def test_subset_require_and_construction_checks() -> None:
    ds = make_ds()
    sub = ds.subset([3, 0])
    assert sub.instances.equals(ds.instances.gather([3, 0]))
    assert sub.annotations["index"].tolist() == [3, 0]
    ds.require("instances", "gaze")
    dense = ArrayDataset(ds.images, ds.annotations, {"name": "dense"})
    assert dense.subset([1]).instances is None
    with pytest.raises(DatasetError, match=r"dense lacks annotation\(s\) \['instances'\]"):
        dense.require("instances")
    with pytest.raises(DatasetError, match="instances cover 2 images but there are 6"):
        ArrayDataset(ds.images, {}, instances=make_table([1, 1]))
    with pytest.raises(DatasetError, match="may not be called 'instances'"):
        ArrayDataset(ds.images, {"instances": np.zeros(6)}, instances=ds.instances)
    with pytest.raises(DatasetError, match="must be an InstanceTable"):
        ArrayDataset(ds.images, {}, instances={"boxes": np.zeros((0, 4))})  # type: ignore[arg-type]


# ------------------------------------------------- ArrayDataset: fingerprint
def _fingerprint_before_instances(images: np.ndarray, annotations: Mapping[str, np.ndarray]) -> str:
    """``compute_fingerprint`` as it was before instance tables (commit f02aefb), kept as the reference."""
    h = hashlib.sha256()
    for name, arr in [("images", images), *sorted(annotations.items())]:
        a = np.ascontiguousarray(arr)
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def pinned_dense() -> ArrayDataset:
    images = (np.arange(2 * 2 * 3 * 3) % 256).astype(np.uint8).reshape(2, 2, 3, 3)
    ann = {"gaze": np.array([[0.1, 0.2], [0.3, 0.4]], np.float32), "identity": np.array([3, 4], np.int64)}
    return ArrayDataset(images, ann, {"name": "pin"})


# written by the code before instance tables (f02aefb): sha256[:16] of each file of pinned_dense().save();
# meta.json has since gained the per-file hashes and the seal (issue 13), the arrays are byte for byte the same
PINNED_FILES = {
    "ann_gaze.npy": "b2e0f768a0f81a56",
    "ann_identity.npy": "e325c2dd4ef728e5",
    "images.npy": "98d8089ac71b4678",
    "meta.json": "d54c8908ee924a5b",
}


def test_dense_fingerprint_is_unchanged() -> None:
    ds = pinned_dense()
    assert ds.fingerprint == "334111fdb63935ba" == _fingerprint_before_instances(ds.images, ds.annotations)
    other = make_ds()
    dense = ArrayDataset(other.images, other.annotations)
    assert dense.fingerprint == _fingerprint_before_instances(other.images, other.annotations)
    assert compute_fingerprint(other.images, other.annotations, None) == dense.fingerprint


def test_dense_save_writes_the_same_files_as_before(tmp_path: Path) -> None:
    ds = pinned_dense()
    ds.meta["instances"] = {"n_instances": 9, "columns": {}}  # stale: must not leak into meta.json
    out = ds.save(tmp_path / "ds")
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in out.iterdir()}
    assert got == PINNED_FILES
    # and that folder (the format every existing cache has) loads unchanged, without instances
    loaded = ArrayDataset.load(out)
    assert loaded.instances is None and loaded.fingerprint == "334111fdb63935ba"
    assert "instances" not in loaded.batch([0, 1])[1]


def test_fingerprint_covers_instances() -> None:
    ds = make_ds()
    fp = ds.fingerprint
    assert fp == compute_fingerprint(ds.images, ds.annotations, ds.instances)
    assert fp != compute_fingerprint(ds.images, ds.annotations)  # instances count
    assert make_ds().fingerprint == fp  # content, not identity
    changed = {k: v.copy() for k, v in ds.instances.columns.items()}
    changed["landmarks"][0, 0, 0] += 1e-3
    assert compute_fingerprint(ds.images, ds.annotations, InstanceTable(ds.instances.offsets, changed)) != fp
    moved = make_ds([1, 1, 1, 3, 0, 1])  # same M = 7, one face moved from image 0 to image 1
    assert moved.instances.n_instances == ds.instances.n_instances
    assert moved.fingerprint != fp
    flags = dict(ds.instances.columns, visible=~ds.instances.columns["visible"])
    assert compute_fingerprint(ds.images, ds.annotations, InstanceTable(ds.instances.offsets, flags)) != fp


# --------------------------------------------------------- ArrayDataset: disk
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path: Path, mmap: bool) -> None:
    ds = make_ds()
    out = ds.save(tmp_path / "ds")
    names = {p.name for p in out.iterdir()}
    assert names == {"images.npy", "ann_index.npy", "ann_gaze.npy", META_FILE, OFFSETS_FILE} | {
        column_file(k) for k in FACE_SCHEMA
    }
    meta = json.loads((out / META_FILE).read_text())
    assert meta["instances"] == {
        "n_instances": 7,
        "columns": {
            "boxes": ["float32", [4]],
            "landmarks": ["float32", [5, 2]],
            "visible": ["bool", [5]],
            "label": ["int64", []],
        },
    }
    loaded = ArrayDataset.load(out, mmap=mmap)
    assert loaded.instances.equals(ds.instances)
    assert isinstance(loaded.instances.offsets, np.memmap) is mmap
    assert isinstance(loaded.instances.columns["landmarks"], np.memmap) is mmap
    assert loaded.fingerprint == ds.fingerprint
    assert loaded.batch([4, 3])[1]["instances"].equals(ds.batch([4, 3])[1]["instances"])
    # re-saving a loaded dataset gives the same folder content
    again = loaded.subset(np.arange(len(loaded))).save(tmp_path / "again")
    assert ArrayDataset.load(again).instances.equals(ds.instances)


def test_saving_a_dense_dataset_over_an_instance_folder_drops_the_instances(tmp_path: Path) -> None:
    ds = ArrayDataset.load(make_ds().save(tmp_path / "ds"))
    dense = ArrayDataset(np.asarray(ds.images), {k: np.asarray(v) for k, v in ds.annotations.items()}, dict(ds.meta))
    del ds
    out = dense.save(tmp_path / "ds")
    assert not list(out.glob("inst_*"))
    assert ArrayDataset.load(out).instances is None


def _npy(arr: np.ndarray) -> Any:
    return lambda path: np.save(path, arr)


def _edit_meta(fn: Any) -> Any:
    def apply(path: Path) -> None:  # any file of the folder: the edit is to its meta.json
        meta_path = path.parent / META_FILE
        meta = json.loads(meta_path.read_text())
        fn(meta["instances"])
        meta_path.write_text(json.dumps(meta))

    return apply


OFFS = np.array([0, 2, 2, 3, 6, 6, 7], np.int64)  # make_ds()'s offsets

BAD_FOLDERS: dict[str, tuple[str, Any, str]] = {
    # name: (file the error must name, how to break the folder, what the message says)
    "offsets-missing": (OFFSETS_FILE, Path.unlink, "is missing"),
    "column-missing": ("inst_boxes.npy", Path.unlink, "is missing"),
    "offsets-truncated": (OFFSETS_FILE, lambda p: p.write_bytes(p.read_bytes()[:60]), "truncated"),
    "offsets-pickled": (OFFSETS_FILE, lambda p: np.save(p, np.array([0, None]), allow_pickle=True), "not a .npy"),
    "offsets-int32": (OFFSETS_FILE, _npy(OFFS.astype(np.int32)), "expected int64 offsets of shape \\(7,\\)"),
    "offsets-short": (OFFSETS_FILE, _npy(OFFS[:-1]), "expected int64 offsets of shape \\(7,\\)"),
    "offsets-start": (OFFSETS_FILE, _npy(OFFS + 1), "must start at 0"),
    "offsets-decreasing": (OFFSETS_FILE, _npy(OFFS[[0, 3, 2, 3, 4, 5, 6]]), "non-decreasing"),
    "offsets-end": (OFFSETS_FILE, _npy(np.minimum(OFFS, 6)), "offsets end at 6 but meta.json says 7"),
    "column-dtype": ("inst_boxes.npy", _npy(np.zeros((7, 4), np.float64)), "expected float32 \\[4\\] per instance"),
    "column-shape": ("inst_landmarks.npy", _npy(np.zeros((7, 5, 3), np.float32)), "found float32 \\[5, 3\\]"),
    "column-rows": ("inst_label.npy", _npy(np.zeros(6, np.int64)), "'label' has 6 rows but offsets say 7"),
    "column-scalar": ("inst_label.npy", _npy(np.int64(3)), "per instance"),
    "meta-count": ("inst_offsets.npy", _edit_meta(lambda m: m.update(n_instances=8)), "meta.json says 8"),
    "meta-dtype": ("inst_visible.npy", _edit_meta(lambda m: m["columns"].update(visible=["uint8", [5]])), "uint8"),
    "meta-entry": (META_FILE, _edit_meta(lambda m: m.pop("columns")), "'n_instances' and 'columns'"),
    "meta-column": (META_FILE, _edit_meta(lambda m: m["columns"].update(boxes="float32")), "\\[dtype, shape\\]"),
}


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_malformed_instance_folder_is_refused_naming_the_file(tmp_path: Path, case: str, mmap: bool) -> None:
    victim, breaks, match = BAD_FOLDERS[case]
    out = make_ds().save(tmp_path / "ds")
    breaks(out / victim)
    with pytest.raises(DatasetError, match=match) as err:
        ArrayDataset.load(out, mmap=mmap)
    assert str(out / victim) in str(err.value)
