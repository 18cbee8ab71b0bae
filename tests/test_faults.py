"""Faults a long sweep meets, injected for real (issue 13): what the results store says is complete must be.

Each test fails on the code before the fault was handled: data altered on disk, configs
that would silently mean something else, a loss that blows up without a NaN.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers_experiments import invoke, seed_synthetic_cache, tiny_config, write_yaml
from typer.testing import CliRunner

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import DatasetError
from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.run import execute
from backdoorlab.experiments.store import ResultsStore


def _alter_first_image(folder: Path) -> None:
    arr = np.load(folder / "images.npy", mmap_mode="r+")
    arr[0] = 255 - arr[0]  # same shape and dtype: only the content changed
    arr.flush()


def test_a_run_on_an_altered_dataset_folder_fails_and_is_not_recorded_complete(tmp_path: Path) -> None:
    tiny = ArrayDataset.load(seed_synthetic_cache(tmp_path / "cache"))
    folder = ArrayDataset(np.asarray(tiny.images), dict(tiny.annotations), {"name": "copy"}).save(tmp_path / "data")
    _alter_first_image(folder)
    cfg = tiny_config(tmp_path / "cache", data={"source": "folder", "path": str(folder), "test_identities": 2})
    out = invoke(CliRunner(), "train", write_yaml(tmp_path / "run.yaml", cfg), "--runs-dir", tmp_path / "runs")
    assert out.exit_code == 2 and "images.npy: its contents changed" in " ".join(out.output.split())
    (row,) = ResultsStore(tmp_path / "runs" / "results.sqlite").list()
    assert row["status"] == "failed" and "images.npy" in row["error"]


def test_an_altered_synthetic_cache_is_rebuilt_not_trained_on(tmp_path: Path) -> None:
    intact = execute(validate_config(tiny_config(tmp_path / "cache-a")), tmp_path / "runs-a", progress=False)
    folder = seed_synthetic_cache(tmp_path / "cache-b")
    _alter_first_image(folder)
    with pytest.raises(DatasetError, match=r"images\.npy"):
        ArrayDataset.load(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = execute(validate_config(tiny_config(tmp_path / "cache-b")), tmp_path / "runs-b", progress=False)
    assert any("rebuilding the synthetic cache entry" in str(w.message) for w in caught)
    # it trained on the data the spec describes, not on the altered bytes
    assert rebuilt.metrics["data_fingerprint"] == intact.metrics["data_fingerprint"]
    assert rebuilt.metrics["clean_error_deg"] == intact.metrics["clean_error_deg"]


# ---------------------------------------------------------------- one line, exit 2, not a traceback
def test_an_unknown_status_filter_is_refused(tmp_path: Path) -> None:
    ResultsStore(tmp_path / "s.sqlite")
    out = invoke(CliRunner(), "runs", "--store", tmp_path / "s.sqlite", "--status", "finished")
    assert out.exit_code == 2 and "--status must be one of running, complete, failed" in out.output


def test_a_negative_model_width_is_a_config_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "cache", model={"name": "gaze_cnn", "kwargs": {"width": -1}})
    seed_synthetic_cache(tmp_path / "cache")
    out = invoke(CliRunner(), "train", write_yaml(tmp_path / "neg.yaml", cfg), "--runs-dir", tmp_path / "runs")
    assert out.exit_code == 2 and "model 'gaze_cnn' cannot be built with" in " ".join(out.output.split())


def test_a_pickle_is_refused_without_relaying_torchs_advice_to_unpickle(tmp_path: Path) -> None:
    import torch

    from backdoorlab.errors import CheckpointError
    from backdoorlab.models.checkpoint import read_state_dict

    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="never unpickles") as info:
        read_state_dict(path, unsafe=True)
    assert "weights_only=False" not in str(info.value) and "weights_only` set to `False" not in str(info.value)


class _Payload:
    """Any class: unpickling it needs code, which weights_only=True refuses."""


def test_an_os_error_is_one_line_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root ignores file permissions here, so the read-only folder is simulated where the run would write
    import backdoorlab.experiments.run as run_module

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "runs"))

    monkeypatch.setattr(run_module, "execute", read_only)
    seed_synthetic_cache(tmp_path / "cache")
    out = invoke(CliRunner(), "train", write_yaml(tmp_path / "r.yaml", tiny_config(tmp_path / "cache")))
    assert out.exit_code == 2 and f"{tmp_path / 'runs'}: Permission denied" in " ".join(out.output.split())
    assert "Traceback" not in out.output


def _read_only_command(folder: Path, argv: list[str]) -> list[str]:
    """``argv`` run where ``folder`` is really read-only: permissions for a normal user, else a read-only mount.

    Root ignores permissions, so as root the command runs in a private mount namespace
    with ``folder`` bind-mounted read-only (the kernel refuses every write: EROFS).
    """
    import os
    import shlex
    import shutil
    import subprocess

    if os.geteuid() != 0:
        folder.chmod(0o555)
        return argv
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("running as root without mount namespaces: no way to make a folder read-only here")
    f = shlex.quote(str(folder))
    script = f"mount --bind {f} {f} && mount -o remount,bind,ro {f} && exec {shlex.join(argv)}"
    return ["unshare", "-m", "sh", "-c", script]


def test_a_read_only_runs_folder_or_store_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """Issue 13: a real read-only folder (not simulated) gives one line naming the path, exit 2."""
    import subprocess
    import sys

    seed_synthetic_cache(tmp_path / "cache")
    runs = tmp_path / "runs"
    execute(validate_config(tiny_config(tmp_path / "cache", name="done")), runs, progress=False)
    cfg = write_yaml(tmp_path / "r.yaml", tiny_config(tmp_path / "cache", name="more"))
    cli = [sys.executable, "-m", "backdoorlab.cli"]
    store = str(runs / "results.sqlite")
    for argv in ([*cli, "train", str(cfg), "--runs-dir", str(runs), "--quiet"], [*cli, "runs", "--store", store]):
        proc = subprocess.run(_read_only_command(runs, argv), capture_output=True, text=True, timeout=120)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        assert "Traceback" not in out and str(runs) in out, out
        assert len(out.strip().splitlines()) <= 2 and "read-only" in out, out
    rows = ResultsStore(runs / "results.sqlite").list()
    assert [r["name"] for r in rows] == ["done"]  # nothing recorded by the refused run


# ---------------------------------------------------------------- complete means complete
def _sweep(tmp_path: Path, seeds: list[int] | None = None) -> Path:
    seed_synthetic_cache(tmp_path / "cache")
    base = write_yaml(tmp_path / "base.yaml", tiny_config(tmp_path / "cache"))
    return write_yaml(tmp_path / "sweep.yaml", {"base": base.name, "name": "f", "grid": {"seed": seeds or [0, 1]}})


@pytest.mark.parametrize("damage", ["delete the model", "edit the metrics"])
def test_a_complete_run_whose_folder_was_damaged_is_run_again(tmp_path: Path, damage: str) -> None:
    from backdoorlab.experiments.sweep import expand, load_sweep, run_sweep

    planned = expand(*load_sweep(_sweep(tmp_path)))
    first = run_sweep(planned, tmp_path / "runs")
    assert len(first.completed) == 2
    db = ResultsStore(tmp_path / "runs" / "results.sqlite")
    victim = Path(db.get(first.completed[0])["run_dir"])  # type: ignore[index]
    if damage == "delete the model":
        (victim / "model.safetensors").unlink()
    else:
        (victim / "metrics.json").write_text('{"clean_error_deg": 0.0}')
    again = run_sweep(planned, tmp_path / "runs")
    assert len(again.skipped) == 1 and len(again.completed) == 1  # the damaged one, trained anew
    row = db.get(victim.name)
    assert row is not None and row["status"] == "failed" and "run folder is not intact" in row["error"]
    assert sorted(r["status"] for r in db.list()) == ["complete", "complete", "failed"]


def test_sigterm_records_the_run_as_interrupted_not_running(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    seed_synthetic_cache(tmp_path / "cache")
    cfg = tiny_config(tmp_path / "cache", train={"epochs": 400, "batch_size": 32, "lr": 0.003})
    config = write_yaml(tmp_path / "long.yaml", cfg)
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "backdoorlab.cli", "train", str(config), "--runs-dir", str(runs), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(runs.glob("*/history.json")):  # training has started (an epoch is done)
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "interrupted by SIGTERM" in output
    (row,) = ResultsStore(runs / "results.sqlite").list()
    assert row["status"] == "failed" and row["error"] == "interrupted by SIGTERM"


# ---------------------------------------------------------------- two sweeps, one store
def test_two_sweeps_into_one_store_train_each_point_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    sweep = _sweep(tmp_path, seeds=[0, 1, 2, 3])
    cmd = [sys.executable, "-m", "backdoorlab.cli", "sweep", str(sweep), "--runs-dir", str(tmp_path / "runs")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    rows = ResultsStore(tmp_path / "runs" / "results.sqlite").list()
    assert sorted(r["status"] for r in rows) == ["complete"] * 4, [(r["name"], r["status"]) for r in rows]
    assert len({r["config_hash"] for r in rows}) == 4  # one complete row per config, none trained twice


def test_a_claim_is_refused_while_its_owner_lives_and_taken_over_when_it_died(tmp_path: Path) -> None:
    import os
    import socket
    import sqlite3
    import subprocess
    import sys
    import time

    store = ResultsStore(tmp_path / "s.sqlite")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid, expect_refused in ((os.getppid(), True), (dead.pid, False)):
        with sqlite3.connect(tmp_path / "s.sqlite") as con:
            row = (socket.gethostname(), pid)
            con.execute(
                "INSERT OR REPLACE INTO claims (config_hash, run_id, host, pid, claimed, renewed) "
                "VALUES ('h1', 'other-run', ?, ?, ?, ?)",
                (*row, time.time(), time.time()),
            )
        owner = store.claim("h1", "mine")
        assert (owner is not None) == expect_refused, owner
        if owner is not None:
            assert f"pid {pid}" in owner
    store.release("h1")
    assert store.claim("h1", "again") is None


def test_another_hosts_claim_is_a_lease_taken_over_once_it_runs_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: a claim from a host we cannot ask is judged by its lease, renewed while its owner runs."""
    import sqlite3
    import time

    from backdoorlab.errors import BackdoorLabError
    from backdoorlab.experiments.store import keep_claim

    monkeypatch.setenv("BACKDOORLAB_LEASE_SECONDS", "0.6")
    store = ResultsStore(tmp_path / "s.sqlite")
    store.start("far-run", "far", "task", "h1", {}, str(tmp_path / "far"), "m", "0")
    with sqlite3.connect(tmp_path / "s.sqlite") as con:  # the row and claim of a sweep on another machine
        con.execute("UPDATE runs SET host='far-away', pid=1 WHERE run_id='far-run'")
        con.execute(
            "INSERT INTO claims (config_hash, run_id, host, pid, claimed, renewed) "
            "VALUES ('h1', 'far-run', 'far-away', 1, ?, ?)",
            (time.time(), time.time()),
        )
    assert "claimed by far-away pid 1" in (store.claim("h1", "mine") or "")
    assert store.stale_running() == []  # its owner still holds a live lease
    time.sleep(0.8)  # no renewal for a whole lease: its owner is dead wherever it ran
    assert [r["run_id"] for r in store.stale_running()] == ["far-run"]
    assert store.claim("h1", "mine") is None

    with keep_claim(store, "h1"):  # while this owner works its lease stays fresh
        time.sleep(0.9)
        with sqlite3.connect(tmp_path / "s.sqlite") as con:
            renewed = con.execute("SELECT renewed FROM claims WHERE config_hash='h1'").fetchone()[0]
        assert time.time() - renewed < 0.6
    store.require_claim("h1")
    with sqlite3.connect(tmp_path / "s.sqlite") as con:  # paused past its lease, this owner was replaced
        con.execute("UPDATE claims SET host='far-away', pid=2 WHERE config_hash='h1'")
    with pytest.raises(BackdoorLabError, match=r"lost the claim .* not recorded complete"):
        store.require_claim("h1")


def test_a_run_that_lost_its_claim_is_not_recorded_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: one complete row per config even when a paused owner's lease was taken over."""
    from backdoorlab.errors import BackdoorLabError
    from backdoorlab.experiments import run as run_module

    seed_synthetic_cache(tmp_path / "cache")
    real = run_module._train_and_evaluate

    def taken_over_meanwhile(cfg, path, progress):  # type: ignore[no-untyped-def]
        metrics = real(cfg, path, progress)
        store = ResultsStore(tmp_path / "runs" / "results.sqlite")
        with store._connect() as con:
            con.execute("UPDATE claims SET host='far-away', pid=2")
        return metrics

    monkeypatch.setattr(run_module, "_train_and_evaluate", taken_over_meanwhile)
    with pytest.raises(BackdoorLabError, match="lost the claim"):
        execute(validate_config(tiny_config(tmp_path / "cache")), tmp_path / "runs", progress=False)
    [row] = ResultsStore(tmp_path / "runs" / "results.sqlite").list()
    assert row["status"] == "failed" and "lost the claim" in row["error"]


# ---------------------------------------------------------------- signals to a sweep with workers
def _start_long_sweep(tmp_path: Path) -> tuple[object, Path]:
    import subprocess
    import sys

    seed_synthetic_cache(tmp_path / "cache")
    base = write_yaml(tmp_path / "base.yaml", tiny_config(tmp_path / "cache", train={"epochs": 300, "batch_size": 32}))
    sweep = write_yaml(tmp_path / "sweep.yaml", {"base": base.name, "name": "long", "grid": {"seed": list(range(6))}})
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "backdoorlab.cli", "sweep", str(sweep), "--runs-dir", str(runs), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, runs


def _wait_for_running(proc: object, runs: Path, n: int) -> None:
    import time

    deadline = time.monotonic() + 120
    while len(list(runs.glob("*/history.json"))) < n:  # n runs are training (an epoch done)
        assert proc.poll() is None and time.monotonic() < deadline, "the runs never started"  # type: ignore[attr-defined]
        time.sleep(0.2)


def _group_gone(pgid: int, patience: float = 60.0) -> bool:
    import os
    import time

    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("how", ["Ctrl-C to the group", "SIGTERM to the sweep"])
def test_a_signal_stops_the_sweep_promptly_records_the_runs_in_flight_and_starts_nothing_new(
    tmp_path: Path, how: str
) -> None:
    import os
    import signal

    proc, runs = _start_long_sweep(tmp_path)
    pgid = proc.pid  # type: ignore[attr-defined]
    try:
        _wait_for_running(proc, runs, 2)
        if how == "Ctrl-C to the group":
            os.killpg(pgid, signal.SIGINT)
        else:
            os.kill(pgid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)  # type: ignore[attr-defined]
    finally:
        if not _group_gone(pgid, 1):
            os.killpg(pgid, signal.SIGKILL)
    assert proc.returncode == 130 and "run it again to resume" in output, output  # type: ignore[attr-defined]
    rows = ResultsStore(runs / "results.sqlite").list()
    assert len(rows) <= 3, [(r["name"], r["status"]) for r in rows]  # nothing new started (one may race)
    assert all(r["status"] == "failed" and "interrupted" in r["error"] for r in rows), (rows, output)
    assert _group_gone(pgid), "worker processes outlived the sweep"


def test_workers_die_with_a_killed_sweep_and_record_their_runs(tmp_path: Path) -> None:
    import os
    import signal

    proc, runs = _start_long_sweep(tmp_path)
    pgid = proc.pid  # type: ignore[attr-defined]
    try:
        _wait_for_running(proc, runs, 2)
        os.kill(pgid, signal.SIGKILL)
        proc.wait(timeout=30)  # type: ignore[attr-defined]
        assert _group_gone(pgid), "worker processes outlived the killed sweep"
    finally:
        if not _group_gone(pgid, 1):
            os.killpg(pgid, signal.SIGKILL)
    rows = ResultsStore(runs / "results.sqlite").list()
    assert rows and all(r["status"] == "failed" and "interrupted by SIGTERM" in r["error"] for r in rows), rows


def test_repair_marks_failed_a_run_killed_outright_and_a_damaged_complete_one(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    seed_synthetic_cache(tmp_path / "cache")
    runs = tmp_path / "runs"
    done = execute(validate_config(tiny_config(tmp_path / "cache", name="done")), runs, progress=False)
    (done.run_dir / "model.safetensors").unlink()
    cfg = tiny_config(tmp_path / "cache", name="killed", train={"epochs": 400, "batch_size": 32, "lr": 0.003})
    cmd = [sys.executable, "-m", "backdoorlab.cli", "train", str(write_yaml(tmp_path / "k.yaml", cfg)),
           "--runs-dir", str(runs), "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(runs.glob("killed-*/history.json")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to record anything
    proc.wait(timeout=30)
    db = ResultsStore(runs / "results.sqlite")
    assert sorted(r["status"] for r in db.list()) == ["complete", "running"]  # what the store believed
    out = invoke(CliRunner(), "runs", "--store", runs / "results.sqlite", "--repair")
    assert out.exit_code == 0 and "2 row(s) repaired" in out.output
    rows = {r["name"]: r for r in db.list()}
    assert rows["killed"]["status"] == "failed" and "is gone" in rows["killed"]["error"]
    assert rows["done"]["status"] == "failed" and "model.safetensors is missing" in rows["done"]["error"]
    out = invoke(CliRunner(), "runs", "--store", runs / "results.sqlite", "--repair")
    assert "0 row(s) repaired" in out.output  # idempotent


def test_dry_run_shows_each_points_resolved_config(tmp_path: Path) -> None:
    import yaml

    from backdoorlab.experiments.sweep import expand, load_sweep

    sweep = _sweep(tmp_path)
    out = invoke(CliRunner(), "sweep", sweep, "--runs-dir", tmp_path / "runs", "--dry-run", "--show-config")
    assert out.exit_code == 0, out.output
    blocks = out.output.split("--- ")[1:]
    planned = expand(*load_sweep(sweep))
    assert len(blocks) == len(planned) == 2
    for block, run in zip(blocks, planned, strict=True):
        header, _, body = block.partition("\n")
        assert run.config_hash in header
        assert validate_config(yaml.safe_load(body)).config_hash() == run.config_hash  # the full, resolved config
    assert not (tmp_path / "runs" / "results.sqlite").exists()  # nothing ran


def test_a_verdict_or_repair_is_kept_only_about_the_weights_it_judged(tmp_path: Path) -> None:
    """Issue 13: the store's defence records carry the folder's seal; other weights never reuse them."""
    from zoo_fixtures import add_run, run_config

    from backdoorlab.errors import BackdoorLabError
    from backdoorlab.experiments.zoo import MitigationRecord, Zoo, ZooVerdict

    store = ResultsStore(tmp_path / "results.sqlite")
    for i in range(3):
        add_run(store, f"r{i}", run_config(i, "patch" if i else "clean", "target" if i else None, [0, 0], False), {})
    zoo = Zoo.open(store.path)
    model = next(m for m in zoo.models if m.run_id == "r1")
    settings = {"steps": 3}
    zoo.record_verdict(model, "sg", ZooVerdict(score=2.0, settings=settings))
    zoo.record_mitigation(model, "ft", MitigationRecord(before={"asr": 1.0}, after={"asr": 0.1}, settings=settings))
    assert store.verdicts("r1")[0]["model_seal"]
    assert zoo.cached_verdict(model, "sg", settings) is not None
    assert zoo.cached_mitigation(model, "ft", settings) is not None

    (Path(model.run_dir) / "model.safetensors").write_bytes(b"other weights")  # altered in place
    assert zoo.cached_verdict(model, "sg", settings) is None  # not about these weights: judged again
    assert zoo.cached_mitigation(model, "ft", settings) is None
    with pytest.raises(BackdoorLabError, match="changed since the run completed"):
        zoo.record_verdict(model, "sg", ZooVerdict(score=1.0, settings=settings))

    store.start("r9", "zoo", "task", "r9", {"seed": 9}, str(tmp_path / "r9"), "model", "0")  # still running
    with pytest.raises(BackdoorLabError, match="r9 is running, not complete"):
        store.record_verdict("r9", "sg", settings, 1.0)
    with pytest.raises(BackdoorLabError, match="not complete"):
        store.record_mitigation("r9", "ft", settings, {}, {})
