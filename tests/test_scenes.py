"""Synthetic face-detection scenes: determinism, ground truth layout, occlusion and visibility, caching, spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.instances import FACE_SCHEMA
from backdoorlab.data.synthetic import params, scenes
from backdoorlab.data.synthetic.scenes import (
    SCENE_SCHEMA,
    SceneLayout,
    SyntheticSceneSpec,
    difficulty_level,
    load_or_synthesize_scenes,
    render_layout,
    synthesize_scenes,
)

TINY = SyntheticSceneSpec.tiny()


@pytest.fixture(scope="module")
def tiny() -> dict[str, ArrayDataset]:
    return synthesize_scenes(TINY, workers=1)


def assert_same(a: ArrayDataset, b: ArrayDataset) -> None:
    assert np.array_equal(a.images, b.images)
    assert a.annotations.keys() == b.annotations.keys()
    for k in a.annotations:
        assert np.array_equal(a.annotations[k], b.annotations[k]), k
    assert a.instances is not None and b.instances is not None
    assert a.instances.equals(b.instances)
    assert a.fingerprint == b.fingerprint


# ---------------------------------------------------------------- determinism
def test_same_spec_same_bytes(tiny: dict[str, ArrayDataset]) -> None:
    again = synthesize_scenes(TINY, ["val", "test"], workers=1)
    for name in ("val", "test"):
        assert_same(again[name], tiny[name])


def test_worker_count_does_not_change_the_bytes(tiny: dict[str, ArrayDataset], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenes, "CHUNK_SCENES", 5)  # 16 scenes -> 4 chunks over 2 processes
    assert_same(synthesize_scenes(TINY, ["train"], workers=2)["train"], tiny["train"])


def test_a_scene_does_not_depend_on_the_others(tiny: dict[str, ArrayDataset]) -> None:
    some = scenes.render_split(TINY, "train", [5, 2])
    assert_same(some, tiny["train"].subset([5, 2]))


def test_seed_and_split_change_the_scenes(tiny: dict[str, ArrayDataset]) -> None:
    other = synthesize_scenes(SyntheticSceneSpec.tiny(seed=1), ["val"], workers=1)["val"]
    assert not np.array_equal(other.images, tiny["val"].images)
    assert not np.array_equal(tiny["val"].images, tiny["test"].images)


# --------------------------------------------------------------- ground truth
def test_schema_and_shapes(tiny: dict[str, ArrayDataset]) -> None:
    for name, ds in tiny.items():
        n = TINY.splits[name].n_images
        assert ds.images.shape == (n, 96, 96, 3) and ds.images.dtype == np.uint8
        assert ds.instances is not None
        assert ds.instances.schema() == {k: (dt, shape) for k, (dt, shape) in SCENE_SCHEMA.items()}
        assert FACE_SCHEMA.items() <= SCENE_SCHEMA.items()
        assert np.array_equal(ds.annotations["n_faces"], ds.instances.counts())
        assert ds.annotations["n_faces"].dtype == np.int64 and ds.annotations["n_hidden"].dtype == np.int64
        assert ds.meta["name"] == "synthetic-scenes" and ds.meta["split"] == name
        for col in ds.instances.columns.values():
            assert np.isfinite(col.astype(np.float64)).all()


def test_boxes_inside_the_canvas_and_visible_landmarks_inside_their_boxes(tiny: dict[str, ArrayDataset]) -> None:
    total = 0
    for ds in tiny.values():
        assert ds.instances is not None
        c = ds.instances.columns
        b = c["boxes"]
        assert (b >= 0).all() and (b <= 95).all()
        assert (b[:, 2] - b[:, 0] >= 1).all() and (b[:, 3] - b[:, 1] >= 1).all()
        lm, vis = c["landmarks"], c["visible"]
        inside = (lm[..., 0] >= b[:, None, 0] - 1e-3) & (lm[..., 0] <= b[:, None, 2] + 1e-3)
        inside &= (lm[..., 1] >= b[:, None, 1] - 1e-3) & (lm[..., 1] <= b[:, None, 3] + 1e-3)
        assert inside[vis].all()
        on_canvas = ((lm >= 0) & (lm <= 95)).all(-1)
        assert not (vis & ~on_canvas).any()
        assert ((c["occlusion"] >= 0) & (c["occlusion"] <= TINY.drop_occlusion)).all()
        assert (c["truncation"] <= c["occlusion"] + 1e-6).all()
        assert np.array_equal(c["difficulty"], difficulty_level(b[:, 2] - b[:, 0], c["occlusion"]))
        assert (np.abs(c["yaw"]) <= 60).all() and (np.abs(c["roll"]) <= 30).all() and (np.abs(c["pitch"]) <= 25).all()
        total += len(b)
    assert total > 30


def test_identities_come_from_disjoint_pools_and_differ_within_a_scene(tiny: dict[str, ArrayDataset]) -> None:
    seen: dict[str, set[int]] = {}
    for name, ds in tiny.items():
        assert ds.instances is not None
        lo = TINY.identity_offset(name)
        labels = ds.instances.columns["label"]
        assert ((labels >= lo) & (labels < lo + TINY.splits[name].identities)).all()
        for i in range(len(ds)):
            row = ds.instances.rows(i)["label"]
            assert len(set(row.tolist())) == len(row)
        seen[name] = set(labels.tolist())
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]


def test_empty_scenes_occur_at_the_specified_rate(tiny: dict[str, ArrayDataset]) -> None:
    assert any((ds.annotations["n_faces"] == 0).any() for ds in tiny.values())
    spec = SyntheticSceneSpec()
    counts = np.array([len(scenes.sample_layout(spec, "train", i).ids) for i in range(1500)])
    assert 0.05 < (counts == 0).mean() < 0.11
    assert counts.max() <= spec.max_faces and (counts == spec.max_faces).any()
    probs = spec.count_probs()
    assert probs.sum() == pytest.approx(1) and probs[0] == pytest.approx(0.08)


def test_face_sizes_span_small_to_most_of_the_canvas() -> None:
    spec = SyntheticSceneSpec()
    widths = np.concatenate([scenes.sample_layout(spec, "train", i).widths for i in range(600)])
    assert widths.min() >= 10 and widths.max() <= 0.9 * 192
    assert (widths < 20).mean() > 0.15 and (widths > 80).mean() > 0.15  # log-uniform: as many per octave


def test_difficulty_rule() -> None:
    w = np.array([40, 40, 39.9, 20, 20, 19.9, 100, 100, 100])
    occ = np.array([0.29, 0.3, 0.0, 0.59, 0.6, 0.0, 0.3, 0.6, 0.85])
    assert difficulty_level(w, occ).tolist() == [0, 1, 1, 1, 2, 2, 1, 2, 2]
    assert difficulty_level(w, occ).dtype == np.int8


# ------------------------------------------------------ hand-placed scenes
def layout(centres: list[list[float]], widths: list[float], seed: int = 3) -> SceneLayout:
    """Frontal faces at given places, no blur or noise, plain background."""
    rng = np.random.default_rng(seed)
    n = len(widths)
    ident = params.sample_identities(rng, n)
    ident.hair_cover[:] = 0.0  # bald: the face outline is the whole silhouette
    view = params.sample_images(rng, n)
    view.head_ypr[:] = 0
    view.gaze[:] = 0
    scene_view = params.sample_images(rng, 1)
    scene_view.blur_sigma[:] = 0
    scene_view.noise_std[:] = 0
    return SceneLayout(np.arange(n), ident, view, np.array(centres, float), np.array(widths, float), scene_view, 0, 0)


PLAIN = SyntheticSceneSpec.tiny(clutter=0)


def test_a_nearer_face_hides_the_landmarks_behind_it() -> None:
    # the near face (50 px) ends near x = 55; the far face's (24 px) eyes are at ~50 and ~60
    r = render_layout(PLAIN, layout([[35, 48], [56, 48]], [50, 24]))
    near, far = 0, 1
    assert r.n_hidden == 0 and r.faces["label"].tolist() == [0, 1]
    assert r.faces["visible"][near].all() and r.faces["occlusion"][near] < 0.01
    vis = r.faces["visible"][far]
    lm = r.faces["landmarks"][far]
    assert lm[0, 0] < 53 and lm[1, 0] > 58
    assert not vis[0] and vis[1] and vis[4]  # image-left eye hidden; right eye and mouth corner seen
    assert 0.1 < r.faces["occlusion"][far] < 0.7 and r.faces["truncation"][far] == 0

    # the same face alone: nothing hidden, and it looks the same where the near face is not
    alone = render_layout(PLAIN, layout([[35, 48], [56, 48]], [50, 24]) | _only(1))
    assert alone.faces["visible"].all() and alone.faces["occlusion"][0] < 0.01
    assert np.abs(alone.image[:, 70:].astype(int) - r.image[:, 70:].astype(int)).max() <= 1


def _only(i: int) -> _Keep:
    return _Keep(i)


class _Keep:
    """``layout | _only(i)``: the layout reduced to face ``i``."""

    def __init__(self, i: int) -> None:
        self.i = i

    def __ror__(self, lay: SceneLayout) -> SceneLayout:
        k = [self.i]
        assert lay.ident is not None and lay.view is not None
        return SceneLayout(
            lay.ids[k], lay.ident.take(k), lay.view.take(k), lay.centres[k], lay.widths[k], lay.scene_view, 0, 0
        )


def test_a_face_cut_by_the_border_has_a_clipped_box_and_invisible_outside_landmarks() -> None:
    # off-axis, perspective pulls the head's silhouette towards the image centre (the
    # head lies behind its face centre), so the centre is placed beyond the border
    r = render_layout(PLAIN, layout([[-4.0, 48.0]], [40.0]))
    box, lm, vis = r.faces["boxes"][0], r.faces["landmarks"][0], r.faces["visible"][0]
    assert box[0] == 0 and box[2] > 10
    outside = lm[:, 0] < 0
    assert outside[0] and not outside[1]
    assert not vis[outside].any() and vis[~outside].all()
    assert 0.25 < r.faces["truncation"][0] < 0.6
    assert r.faces["occlusion"][0] == pytest.approx(r.faces["truncation"][0])


def test_an_almost_hidden_face_is_dropped_but_still_drawn() -> None:
    lay = layout([[48, 48], [48, 50]], [70, 20])
    r = render_layout(PLAIN, lay)
    assert r.n_hidden == 1 and r.faces["label"].tolist() == [0]
    behind = render_layout(PLAIN, lay | _only(0))
    assert np.abs(behind.image.astype(int) - r.image.astype(int)).max() <= 1  # fully behind the big face


# -------------------------------------------------------------------- cache
def test_cache_round_trip_and_altered_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    real = scenes.synthesize_scenes

    def counting(spec: SyntheticSceneSpec, splits: list[str], **kw: object) -> dict[str, ArrayDataset]:
        calls.append(list(splits))
        return real(spec, splits, workers=1)

    monkeypatch.setattr(scenes, "synthesize_scenes", counting)
    two = {"val": {"n_images": 3, "identities": 8}, "test": {"n_images": 2, "identities": 8}}
    spec = SyntheticSceneSpec.tiny(splits=two)
    first = load_or_synthesize_scenes(spec, cache_dir=tmp_path)
    assert calls == [["val", "test"]] and list(first) == ["val", "test"]
    folder = scenes.scene_cache_folder(spec, "val", tmp_path)
    assert folder == tmp_path / "synthetic-scenes" / spec.cache_key() / "val"
    assert isinstance(first["val"].images, np.memmap) and (folder / "inst_boxes.npy").is_file()

    second = load_or_synthesize_scenes(spec, cache_dir=tmp_path)
    assert len(calls) == 1
    for name in first:
        assert_same(first[name], second[name])
    assert second["val"].meta["spec"] == spec.model_dump()

    # an altered file (same shape) is detected: that split alone is rendered again
    expected = first["val"].subset(np.arange(3))
    del first, second
    boxes = np.load(folder / "inst_boxes.npy")
    boxes[0, 0] += 1
    np.save(folder / "inst_boxes.npy", boxes)
    with pytest.warns(UserWarning, match=r"rebuilding the synthetic cache entry: .*inst_boxes\.npy"):
        rebuilt = load_or_synthesize_scenes(spec, cache_dir=tmp_path)
    assert calls[-1] == ["val"]
    assert_same(rebuilt["val"], expected)


# --------------------------------------------------------------------- spec
@pytest.mark.parametrize(
    "bad",
    [
        {"size": 16},
        {"max_faces": 0},
        {"empty_fraction": 1.5},
        {"min_face_px": 90.0},  # above max_face_frac * size
        {"max_yaw_deg": 90.0},
        {"splits": {}},
        {"splits": {"tr ain": {"n_images": 2, "identities": 8}}},
        {"splits": {"train": {"n_images": 2, "identities": 2}}},  # fewer identities than max_faces
        {"splits": {"train": {"n_images": 0, "identities": 8}}},
        {"unknown": 1},
    ],
)
def test_spec_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SyntheticSceneSpec.tiny(**bad)


def test_cache_key_follows_the_spec() -> None:
    base = SyntheticSceneSpec()
    assert base.cache_key() == SyntheticSceneSpec().cache_key()
    changed = [base.model_copy(update={k: v}) for k, v in {"seed": 1, "clutter": 0, "size": 128}.items()]
    keys = {s.cache_key() for s in changed} | {TINY.cache_key()}
    assert len(keys) == 4 and base.cache_key() not in keys
    with pytest.raises(Exception, match="unknown split"):
        synthesize_scenes(TINY, ["nope"])
