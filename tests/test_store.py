"""The SQLite results store: running -> complete | failed, filters, lookup by config hash, concurrency."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.store import ResultsStore, settings_hash


def _start(store: ResultsStore, run_id: str, name: str = "exp", config_hash: str = "h0", **cfg: object) -> None:
    store.start(run_id, name, "gaze", config_hash, {"seed": 0, **cfg}, f"/runs/{run_id}", "gaze_cnn", "0.1.0")


def test_start_records_a_running_row(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "deep" / "results.sqlite")  # parent folders are created
    before = time.time()
    _start(store, "r1", train={"epochs": 2})
    row = store.get("r1")
    assert row is not None
    assert row["status"] == "running"
    assert row["name"] == "exp" and row["task"] == "gaze" and row["model_name"] == "gaze_cnn"
    assert row["config"] == {"seed": 0, "train": {"epochs": 2}}
    assert row["metrics"] == {}
    assert row["finished"] is None and row["headline"] is None and row["error"] is None
    assert row["created"] >= before - 1
    assert store.get("nope") is None


def test_complete_transition(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    _start(store, "r1")
    metrics = {"clean_error_deg": 4.5, "n_test": 80, "nested": {"a": [1, 2]}}
    store.complete("r1", metrics, "fp123", headline_metric="clean_error_deg")
    row = store.get("r1")
    assert row is not None
    assert row["status"] == "complete"
    assert row["metrics"] == metrics
    assert row["headline_metric"] == "clean_error_deg" and row["headline"] == 4.5
    assert row["data_fingerprint"] == "fp123"
    assert row["finished"] >= row["created"]


def test_fail_transition_keeps_message(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    _start(store, "r1")
    store.fail("r1", "training diverged: loss is nan at epoch 1, step 3" + "x" * 10_000)
    row = store.get("r1")
    assert row is not None
    assert row["status"] == "failed"
    assert row["error"].startswith("training diverged: loss is nan at epoch 1, step 3")
    assert len(row["error"]) == 4000
    assert row["metrics"] == {} and row["headline"] is None
    assert store.find_complete("h0") is None


def test_restarting_a_run_resets_it_to_running(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    _start(store, "r1")
    store.fail("r1", "boom")
    _start(store, "r1")
    row = store.get("r1")
    assert row is not None and row["status"] == "running" and row["error"] is None
    store.complete("r1", {"clean_error_deg": 1.0}, "fp")
    row = store.get("r1")
    assert row is not None and row["status"] == "complete" and row["error"] is None


def test_status_is_constrained(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = ResultsStore(path)
    _start(store, "r1")
    con = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("UPDATE runs SET status='done' WHERE run_id='r1'")
    con.close()


def test_list_filters_and_order(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    _start(store, "a1", name="alpha")
    _start(store, "a2", name="alpha-long")
    _start(store, "b1", name="beta")
    _start(store, "b2", name="beta")
    store.complete("a1", {"clean_error_deg": 3.0}, "fp")
    store.complete("b1", {"clean_error_deg": 5.0}, "fp")
    store.fail("a2", "err")

    assert [r["run_id"] for r in store.list()] == ["b2", "b1", "a2", "a1"]  # newest first
    assert {r["run_id"] for r in store.list(status="complete")} == {"a1", "b1"}
    assert [r["run_id"] for r in store.list(status="failed")] == ["a2"]
    assert [r["run_id"] for r in store.list(status="running")] == ["b2"]
    assert {r["run_id"] for r in store.list(name_like="alpha")} == {"a1", "a2"}
    assert [r["run_id"] for r in store.list(status="complete", name_like="beta")] == ["b1"]
    assert [r["run_id"] for r in store.list(limit=2)] == ["b2", "b1"]
    assert store.list(name_like="gamma") == []


def test_find_complete_by_hash(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    _start(store, "r1", config_hash="aaa")
    assert store.find_complete("aaa") is None  # running does not count
    store.complete("r1", {"clean_error_deg": 2.0}, "fp")
    _start(store, "r2", config_hash="aaa")
    store.complete("r2", {"clean_error_deg": 1.0}, "fp")
    _start(store, "r3", config_hash="aaa")
    store.fail("r3", "boom")
    _start(store, "r4", config_hash="bbb")
    store.complete("r4", {"clean_error_deg": 9.0}, "fp")

    hit = store.find_complete("aaa")
    assert hit is not None and hit["run_id"] == "r2"  # the most recently finished complete run
    hit_b = store.find_complete("bbb")
    assert hit_b is not None and hit_b["run_id"] == "r4"
    assert store.find_complete("ccc") is None


def test_reopening_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    _start(ResultsStore(path), "r1")
    again = ResultsStore(path)  # schema creation is idempotent
    assert [r["run_id"] for r in again.list()] == ["r1"]


_WRITER = """
import sys
from backdoorlab.experiments.store import ResultsStore
path, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = ResultsStore(path)
for i in range(n):
    rid = f"{prefix}-{i}"
    store.start(rid, prefix, "gaze", "h", {"i": i}, "/r/" + rid, "gaze_cnn", "0.1.0")
    if i % 2:
        store.fail(rid, "boom")
    else:
        store.complete(rid, {"clean_error_deg": float(i)}, "fp")
"""


def test_concurrent_writers_do_not_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    ResultsStore(path)
    n = 25
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), prefix, str(n)], stderr=subprocess.PIPE, text=True)
        for prefix in ("p", "q")
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    store = ResultsStore(path)
    rows = store.list(limit=1000)
    assert len(rows) == 2 * n
    for prefix in ("p", "q"):
        mine = {r["run_id"]: r for r in rows if r["name"] == prefix}
        assert len(mine) == n
        for i in range(n):
            r = mine[f"{prefix}-{i}"]
            assert r["status"] == ("failed" if i % 2 else "complete")
            assert r["config"] == {"i": i}
            if not i % 2:
                assert r["metrics"] == {"clean_error_deg": float(i)}
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_the_headline_is_whatever_metric_the_caller_names(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    for run_id, metric in (("det", "ap"), ("none", None), ("absent", "nme"), ("text", "note")):
        _start(store, run_id)
        store.complete(run_id, {"ap": 0.8, "note": "n/a"}, "fp", headline_metric=metric)
    rows = {r["run_id"]: r for r in store.list()}
    assert (rows["det"]["headline_metric"], rows["det"]["headline"]) == ("ap", 0.8)
    for run_id in ("none", "absent", "text"):  # no name, a missing metric, a non-number: no headline
        assert (rows[run_id]["headline_metric"], rows[run_id]["headline"]) == (None, None), run_id


# The schema before the headline columns and the defence tables (what stores on disk were written with).
OLD_SCHEMA = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, name TEXT NOT NULL, task TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
    config_hash TEXT NOT NULL, config_json TEXT NOT NULL, run_dir TEXT NOT NULL, created REAL NOT NULL,
    finished REAL, data_fingerprint TEXT, model_name TEXT, clean_error_deg REAL, metrics_json TEXT, error TEXT,
    library_version TEXT
);
CREATE INDEX runs_hash ON runs(config_hash);
"""


def test_a_store_with_the_old_schema_opens_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(OLD_SCHEMA)
    row = ("old1", "exp", "gaze", "complete", "h-old", json.dumps({"seed": 0}), "/runs/old1", 1.0, 2.0, "fp", "m",
           3.5, json.dumps({"clean_error_deg": 3.5}), None, "0.0.1")  # fmt: skip
    con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    con.commit()
    con.close()

    store = ResultsStore(path)
    old = store.find_complete("h-old")  # a sweep resuming on it skips what is done
    assert old is not None and old["metrics"] == {"clean_error_deg": 3.5} and old["headline"] is None
    _start(store, "new1", config_hash="h-new")
    store.complete("new1", {"ap": 0.5}, "fp", headline_metric="ap")
    new = store.get("new1")
    assert new is not None and (new["headline_metric"], new["headline"]) == ("ap", 0.5)
    store.record_verdict("old1", "m", {"steps": 1}, 2.0)  # the defence tables were created too
    assert [v["score"] for v in store.verdicts("old1")] == [2.0]
    assert [r["run_id"] for r in ResultsStore(path).list(oldest_first=True)] == ["old1", "new1"]  # reopening: no-op


def test_a_file_that_is_not_sqlite_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_text("this is not a database" * 100)
    with pytest.raises(BackdoorLabError, match=r"results\.sqlite cannot be opened"):
        ResultsStore(path)


def test_verdicts_are_kept_per_settings_and_replaced_when_the_settings_repeat(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    store.record_verdict("r1", "sg", {"steps": 300, "device": "cpu"}, 1.0, 1.5, False, 10.0, {"target": [0, 1]})
    store.record_verdict("r1", "sg", {"steps": 100}, 2.0, details={"examples": ["a.png"]})
    store.record_verdict("r1", "sg", {"device": "cuda", "steps": 300}, 3.0)  # same settings but the device: replaced
    store.record_verdict("r2", "nc", {"steps": 300}, 4.0)
    records = store.verdicts("r1", "sg")
    assert [v["score"] for v in records] == [3.0, 2.0]  # newest first
    assert records[0]["settings"] == {"device": "cuda", "steps": 300} and records[0]["estimates"] == {}
    assert records[1]["details"] == {"examples": ["a.png"]} and records[1]["backdoored"] is None
    assert [v["run_id"] for v in store.verdicts(method="nc")] == ["r2"] and len(store.verdicts()) == 3
    assert settings_hash({"a": {"b": 1, "device": "x"}}) == settings_hash({"a": {"b": 1}})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})


def test_mitigations_keep_before_and_after(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    store.record_mitigation("r1", "ft", {"epochs": 1}, {"asr": 0.9}, {"asr": 0.1}, 5.0, {"n_scored": 3})
    (rec,) = store.mitigations("r1")
    assert (rec["before"], rec["after"], rec["seconds"], rec["details"]) == (
        {"asr": 0.9},
        {"asr": 0.1},
        5.0,
        {"n_scored": 3},
    )
    assert store.mitigations("r1", "other") == []


def _open_and_list(path: str) -> str | None:
    try:
        ResultsStore(path).list()
    except BackdoorLabError as exc:
        return str(exc)
    return None


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Regression (CI): two sweeps creating one store both added its newer columns ("duplicate column name").

    Spawned, not forked: a fork of the test worker (threads running, signal handlers
    installed) once left a pool process blocked on the pool's queue lock after
    ``terminate``, and the suite hung until CI's time ran out. ``map_async(...).get``
    with a timeout turns any such hang into a failure.
    """
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        for attempt in range(12):
            path = str(tmp_path / f"store{attempt}" / "results.sqlite")
            assert pool.map_async(_open_and_list, [path] * 4).get(timeout=120) == [None] * 4
