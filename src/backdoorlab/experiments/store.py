"""The results store: one SQLite row per run (embedded, no server).

A run is inserted as ``running`` before any work, and moved to ``complete`` only
after every file of its directory has been written; a crash or an error moves it to
``failed`` with the message. So a half-written run can never be read as complete.
Metrics are kept as JSON (any task's metrics fit) with the headline numbers also in
columns, so comparisons are plain SQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    clean_error_deg REAL,
    metrics_json TEXT,
    error TEXT,
    library_version TEXT
);
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash);
"""


class ResultsStore:
    """Thin wrapper over an SQLite file; safe for several processes (WAL, retries)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.row_factory = sqlite3.Row
            with con:
                yield con
        finally:
            con.close()

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
                "created, model_name, library_version) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
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
                ),
            )

    def complete(self, run_id: str, metrics: dict[str, Any], data_fingerprint: str) -> None:
        with self._connect() as con:
            con.execute(
                "UPDATE runs SET status='complete', finished=?, metrics_json=?, clean_error_deg=?, "
                "data_fingerprint=?, error=NULL WHERE run_id=?",
                (
                    time.time(),
                    json.dumps(metrics, sort_keys=True),
                    metrics.get("clean_error_deg"),
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
        return _row(row) if row else None

    def list(self, status: str | None = None, name_like: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if status:
            sql += " AND status=?"
            args.append(status)
        if name_like:
            sql += " AND name LIKE ?"
            args.append(f"%{name_like}%")
        sql += " ORDER BY created DESC LIMIT ?"
        args.append(limit)
        with self._connect() as con:
            return [_row(r) for r in con.execute(sql, args).fetchall()]

    def find_complete(self, config_hash: str) -> dict[str, Any] | None:
        with self._connect() as con:
            row = con.execute(
                "SELECT * FROM runs WHERE config_hash=? AND status='complete' ORDER BY finished DESC", (config_hash,)
            ).fetchone()
        return _row(row) if row else None


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["metrics"] = json.loads(d.pop("metrics_json") or "{}")
    d["config"] = json.loads(d.pop("config_json") or "{}")
    return d
