"""The results store: one SQLite row per run (embedded, no server).

A run is inserted as ``running`` before any work, and moved to ``complete`` only
after every file of its directory has been written; a crash or an error moves it to
``failed`` with the message. So a half-written run can never be read as complete.
Metrics are kept as JSON (any task's metrics fit) with the task's headline metric also
in a column (its name in ``headline_metric``), so comparisons are plain SQL. What the
defences concluded about a run (``verdicts``) and their repairs (``mitigations``) are
kept beside it, keyed by the defence's settings, so a zoo bench resumes from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backdoorlab.errors import BackdoorLabError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    task TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
    config_hash TEXT NOT NULL,
    config_json TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    data_fingerprint TEXT,
    model_name TEXT,
    headline_metric TEXT,
    headline REAL,
    metrics_json TEXT,
    error TEXT,
    library_version TEXT
);
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash);
CREATE TABLE IF NOT EXISTS claims (
    config_hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    claimed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    run_id TEXT NOT NULL,
    method TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    settings_json TEXT NOT NULL,
    score REAL NOT NULL,
    threshold REAL,
    backdoored INTEGER,
    seconds REAL,
    estimates_json TEXT NOT NULL,
    details_json TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, method, settings_hash)
);
CREATE TABLE IF NOT EXISTS mitigations (
    run_id TEXT NOT NULL,
    method TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    settings_json TEXT NOT NULL,
    before_json TEXT NOT NULL,
    after_json TEXT NOT NULL,
    seconds REAL,
    details_json TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, method, settings_hash)
);
"""

# Columns added to ``runs`` after the first schema, with their SQL type: a store written
# before them gains them on opening (its old columns stay, unused), so it resumes as is.
ADDED_RUN_COLUMNS: dict[str, str] = {"headline_metric": "TEXT", "headline": "REAL", "host": "TEXT", "pid": "INTEGER"}
# ... and to the defence tables: the seal of the run folder a record judged (experiments/folder_seal.py)
ADDED_RECORD_COLUMNS: dict[str, str] = {"model_seal": "TEXT"}
# ... and to claims: when the owner last said it is alive (its lease)
ADDED_CLAIM_COLUMNS: dict[str, str] = {"renewed": "REAL"}


def lease_seconds() -> float:
    """How long a claim lives without renewal ($BACKDOORLAB_LEASE_SECONDS, default 600).

    Why a lease: a process on another host cannot be asked whether it is alive, so an
    owner renews its claim every third of the lease while it runs (:func:`keep_claim`);
    a claim not renewed for a whole lease belongs to a dead owner wherever it ran. The
    default tolerates a paused machine for minutes while a dead sweep's points are free
    again within ten.
    """
    return float(os.environ.get("BACKDOORLAB_LEASE_SECONDS", "600"))


# Keys ignored by :func:`settings_hash`: where a defence ran does not change what it concludes.
IGNORED_SETTINGS = frozenset({"device"})


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short, order-independent digest of a defence's settings (``device`` keys left out, at any depth).

    It keys a stored verdict or repair, so running the same settings again replaces the
    record instead of piling up copies; whether an older record with *different* settings
    still stands is decided by the caller (the zoo's cache rules), not by this hash.
    """
    text = json.dumps(_without_ignored(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without_ignored(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_ignored(v) for k, v in value.items() if k not in IGNORED_SETTINGS}
    return value


class ResultsStore:
    """Thin wrapper over an SQLite file; safe for several processes (WAL, retries)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._create_or_upgrade()
        except sqlite3.DatabaseError as exc:
            raise BackdoorLabError(_open_problem(self.path, exc)) from None

    def _create_or_upgrade(self) -> None:
        """Create the tables and add columns newer than the store, in one immediate transaction.

        Why one transaction: the columns are added after reading which ones exist, and two
        processes opening a new store at once (two sweeps) would otherwise both see a
        column missing and both add it ("duplicate column name").
        """
        with self._connect() as con:
            con.isolation_level = None  # transactions by hand: BEGIN IMMEDIATE takes the write lock first
            _when_unlocked(lambda: con.execute("BEGIN IMMEDIATE"))
            try:
                for statement in filter(str.strip, SCHEMA.split(";")):
                    con.execute(statement)
                _add_missing_columns(con, "runs", ADDED_RUN_COLUMNS)
                for table in ("verdicts", "mitigations"):
                    _add_missing_columns(con, table, ADDED_RECORD_COLUMNS)
                _add_missing_columns(con, "claims", ADDED_CLAIM_COLUMNS)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30)
        try:
            # switching the journal mode takes a lock SQLite's busy timeout does not wait for: two
            # processes opening a new store at once (two sweeps) would otherwise see "database is locked"
            _when_unlocked(lambda: con.execute("PRAGMA journal_mode=WAL"))
            con.row_factory = sqlite3.Row
            with con:
                yield con
        finally:
            con.close()

    def claim(self, config_hash: str, run_id: str, skip_complete: bool = False) -> str | None:
        """Take ownership of a config: ``None`` when this process now owns it, else who does (or that it is done).

        With ``skip_complete`` (sweeps) a config already complete in the store is not
        claimed either: a sweep that checked before another one finished the point must
        not train it again. A plain ``train`` of a finished config may run it anew.

        One owner per config hash, taken atomically (an immediate transaction), so two
        sweeps writing one store never train the same point twice. A claim names its
        owner's host and PID and is a lease the owner renews (:func:`lease_seconds`); a
        claim whose owner is dead (same host and no such process, or any host and the
        lease run out) is taken over, so a killed sweep's points are not locked forever.
        """
        host, pid = socket.gethostname(), os.getpid()
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            done = con.execute(
                "SELECT run_id FROM runs WHERE config_hash=? AND status='complete' LIMIT 1", (config_hash,)
            ).fetchone()
            if skip_complete and done is not None:
                con.execute("ROLLBACK")
                return f"already complete as {done[0]}"
            held = con.execute(
                "SELECT run_id, host, pid, claimed, renewed FROM claims WHERE config_hash=?", (config_hash,)
            ).fetchone()
            if held is not None and (held[1], held[2]) != (host, pid) and _claim_alive(*held[1:]):
                con.execute("ROLLBACK")
                return f"claimed by {held[1]} pid {held[2]} (run {held[0]})"
            now = time.time()
            con.execute(
                "INSERT OR REPLACE INTO claims (config_hash, run_id, host, pid, claimed, renewed) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (config_hash, run_id, host, pid, now, now),
            )
            con.execute("COMMIT")
            return None
        finally:
            con.close()

    def require_claim(self, config_hash: str) -> None:
        """Raise :class:`BackdoorLabError` unless this process still holds the claim on a config.

        Checked just before a run is recorded complete: an owner whose lease ran out (a
        machine paused for longer than the lease) may have been replaced, and two complete
        rows for one config must not happen.
        """
        with self._connect() as con:
            held = con.execute("SELECT host, pid FROM claims WHERE config_hash=?", (config_hash,)).fetchone()
        if held is None or (held["host"], held["pid"]) != (socket.gethostname(), os.getpid()):
            who = "nobody" if held is None else f"{held['host']} pid {held['pid']}"
            raise BackdoorLabError(
                f"lost the claim on config {config_hash[:12]} (now held by {who}; the lease ran out): "
                "not recorded complete"
            )

    def renew(self, config_hash: str) -> None:
        """Extend this process's lease on a config it claimed (see :func:`keep_claim`)."""
        with self._connect() as con:
            con.execute(
                "UPDATE claims SET renewed=? WHERE config_hash=? AND host=? AND pid=?",
                (time.time(), config_hash, socket.gethostname(), os.getpid()),
            )

    def stale_running(self) -> list[dict[str, Any]]:
        """``running`` rows whose process is gone: a run killed outright.

        On this host: no such PID. On another host: its process holds no live claim on
        the config any more (it renews one while it runs; the lease ran out or was taken).
        """
        with self._connect() as con:
            claims = {
                (r["config_hash"], r["host"], r["pid"]): (r["claimed"], r["renewed"])
                for r in con.execute("SELECT * FROM claims")
            }

        def gone(r: dict[str, Any]) -> bool:
            if r.get("host") is None or r.get("pid") is None:
                return False  # a row from before hosts were recorded: nothing to judge it by
            if r["host"] == socket.gethostname():
                return not _owner_alive(r["host"], r["pid"])
            lease = claims.get((r["config_hash"], r["host"], r["pid"]))
            return lease is None or not _claim_alive(r["host"], r["pid"], *lease)

        return [r for r in self.list(status="running", limit=None) if gone(r)]

    def release(self, config_hash: str) -> None:
        """Give up this process's claim on a config (after the run is recorded complete or failed)."""
        with self._connect() as con:
            con.execute(
                "DELETE FROM claims WHERE config_hash=? AND host=? AND pid=?",
                (config_hash, socket.gethostname(), os.getpid()),
            )

    def start(
        self,
        run_id: str,
        name: str,
        task: str,
        config_hash: str,
        config: dict[str, Any],
        run_dir: str,
        model_name: str,
        library_version: str,
    ) -> None:
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO runs (run_id, name, task, status, config_hash, config_json, run_dir, "
                "created, model_name, library_version, host, pid) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    name,
                    task,
                    config_hash,
                    json.dumps(config, sort_keys=True),
                    run_dir,
                    time.time(),
                    model_name,
                    library_version,
                    socket.gethostname(),
                    os.getpid(),
                ),
            )

    def complete(
        self, run_id: str, metrics: dict[str, Any], data_fingerprint: str, headline_metric: str | None = None
    ) -> None:
        """Mark a run complete with its metrics.

        ``headline_metric`` names the metric that sums the run up (the task knows which);
        its value is copied into the ``headline`` column so runs compare in plain SQL.
        Without it (or when the metric is missing or not a number) the headline stays empty.
        """
        value = metrics.get(headline_metric) if headline_metric else None
        headline = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        with self._connect() as con:
            con.execute(
                "UPDATE runs SET status='complete', finished=?, metrics_json=?, headline_metric=?, headline=?, "
                "data_fingerprint=?, error=NULL WHERE run_id=?",
                (
                    time.time(),
                    json.dumps(metrics, sort_keys=True),
                    headline_metric if headline is not None else None,
                    headline,
                    data_fingerprint,
                    run_id,
                ),
            )

    def fail(self, run_id: str, error: str) -> None:
        with self._connect() as con:
            con.execute(
                "UPDATE runs SET status='failed', finished=?, error=? WHERE run_id=?",
                (time.time(), error[:4000], run_id),
            )

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _decoded(row) if row else None

    def list(
        self,
        status: str | None = None,
        name_like: str | None = None,
        limit: int | None = 200,
        oldest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Runs, newest first (``oldest_first``: in the order they were started); ``limit=None``: all of them."""
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if status:
            sql += " AND status=?"
            args.append(status)
        if name_like:
            sql += " AND name LIKE ?"
            args.append(f"%{name_like}%")
        sql += f" ORDER BY created {'ASC' if oldest_first else 'DESC'}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._connect() as con:
            return [_decoded(r) for r in con.execute(sql, args).fetchall()]

    def find_complete(self, config_hash: str) -> dict[str, Any] | None:
        with self._connect() as con:
            row = con.execute(
                "SELECT * FROM runs WHERE config_hash=? AND status='complete' ORDER BY finished DESC", (config_hash,)
            ).fetchone()
        return _decoded(row) if row else None

    # ------------------------------------------------------------------ defence records

    def record_verdict(
        self,
        run_id: str,
        method: str,
        settings: Mapping[str, Any],
        score: float,
        threshold: float | None = None,
        backdoored: bool | None = None,
        seconds: float | None = None,
        estimates: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
        model_seal: str | None = None,
    ) -> None:
        """Keep what ``method`` with ``settings`` concluded about a run (same settings: replaced).

        ``estimates`` are the task's own numbers (e.g. what the reversed trigger drives the
        model to), kept as an opaque JSON object. ``model_seal`` names the exact folder
        contents judged, so a reader can tell a verdict about other weights. A run the
        store does not call complete gets no verdict (:meth:`_require_complete`).
        """
        with self._connect() as con:
            self._require_complete(con, run_id)
            con.execute(
                "INSERT OR REPLACE INTO verdicts (run_id, method, settings_hash, settings_json, score, threshold, "
                "backdoored, seconds, estimates_json, details_json, created, model_seal) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    method,
                    settings_hash(settings),
                    json.dumps(settings, sort_keys=True),
                    float(score),
                    threshold,
                    None if backdoored is None else int(backdoored),
                    seconds,
                    json.dumps(estimates or {}, sort_keys=True),
                    json.dumps(details or {}, sort_keys=True),
                    time.time(),
                    model_seal,
                ),
            )

    def verdicts(self, run_id: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Stored verdicts, newest first; ``settings``, ``estimates`` and ``details`` decoded."""
        return self._records("verdicts", run_id, method)

    def record_mitigation(
        self,
        run_id: str,
        method: str,
        settings: Mapping[str, Any],
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        seconds: float | None = None,
        details: Mapping[str, Any] | None = None,
        model_seal: str | None = None,
    ) -> None:
        """Keep a repair of a run: the task's metrics ``before`` and ``after`` it (same settings: replaced).

        ``model_seal`` and the refusal of a run that is not complete: as :meth:`record_verdict`.
        """
        with self._connect() as con:
            self._require_complete(con, run_id)
            con.execute(
                "INSERT OR REPLACE INTO mitigations (run_id, method, settings_hash, settings_json, before_json, "
                "after_json, seconds, details_json, created, model_seal) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    method,
                    settings_hash(settings),
                    json.dumps(settings, sort_keys=True),
                    json.dumps(before, sort_keys=True),
                    json.dumps(after, sort_keys=True),
                    seconds,
                    json.dumps(details or {}, sort_keys=True),
                    time.time(),
                    model_seal,
                ),
            )

    def mitigations(self, run_id: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Stored repairs, newest first; ``settings``, ``before``, ``after`` and ``details`` decoded."""
        return self._records("mitigations", run_id, method)

    @staticmethod
    def _require_complete(con: sqlite3.Connection, run_id: str) -> None:
        """A defence record about a run the store has but does not call complete is refused.

        A run this store never saw (a folder judged on its own) may still be recorded.
        """
        row = con.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is not None and row["status"] != "complete":
            raise BackdoorLabError(f"run {run_id} is {row['status']}, not complete: its defence records are refused")

    def _records(self, table: str, run_id: str | None, method: str | None) -> list[dict[str, Any]]:
        sql, args = f"SELECT * FROM {table} WHERE 1=1", []  # table: one of ours, never user input
        for column, value in (("run_id", run_id), ("method", method)):
            if value is not None:
                sql += f" AND {column}=?"
                args.append(value)
        with self._connect() as con:
            rows = con.execute(sql + " ORDER BY created DESC, rowid DESC", args).fetchall()
        return [_decoded(r) for r in rows]


def _when_unlocked(action: Callable[[], Any], patience: float = 30.0) -> Any:
    """Run ``action``, retrying while another process holds the database lock (up to ``patience`` s)."""
    deadline = time.monotonic() + patience
    delay = 0.01
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _owner_alive(host: str, pid: int) -> bool:
    """Whether a claim's owner may still be working (another host: assumed so)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _open_problem(path: Path, exc: sqlite3.DatabaseError) -> str:
    """Why a store did not open, told apart: not SQLite at all, or SQLite that cannot be written here."""
    try:
        with path.open("rb") as fh:
            is_sqlite = fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        is_sqlite = False
    if is_sqlite and any(word in str(exc) for word in ("readonly", "unable to open", "disk I/O")):
        return (
            f"results store {path} cannot be opened for writing ({exc}): is its folder read-only? "
            "(the store keeps its journal beside the file, so even reading it needs a writable folder)"
        )
    if is_sqlite:
        return f"results store {path} cannot be opened: {exc}"
    return f"results store {path} cannot be opened as SQLite: {exc}"


def _claim_alive(host: str, pid: int, claimed: float, renewed: float | None) -> bool:
    """Whether a claim's owner may still be working: lease not run out, and its process there on this host."""
    if time.time() - (renewed if renewed is not None else claimed) > lease_seconds():
        return False
    return _owner_alive(host, pid)


@contextmanager
def keep_claim(store: ResultsStore, config_hash: str) -> Iterator[None]:
    """Renew this process's claim every third of the lease while the block runs (a daemon thread)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_seconds() / 3):
            try:
                store.renew(config_hash)
            except sqlite3.Error:  # a busy store: the next beat tries again, well within the lease
                continue

    thread = threading.Thread(target=beat, name=f"lease-{config_hash[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _add_missing_columns(con: sqlite3.Connection, table: str, columns: Mapping[str, str]) -> None:
    have = {r["name"] for r in con.execute(f"PRAGMA table_info({table})")}
    for name, sql_type in columns.items():
        if name not in have:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    """A record with every ``*_json`` column decoded under its name without the suffix."""
    out: dict[str, Any] = {}
    for key, value in dict(row).items():
        if key.endswith("_json"):
            out[key.removesuffix("_json")] = json.loads(value or "{}")
        else:
            out[key] = value
    if out.get("backdoored") is not None:
        out["backdoored"] = bool(out["backdoored"])
    return out
