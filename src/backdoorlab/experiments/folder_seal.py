"""The seal of a run folder: what makes "complete" in the results store checkable.

Why a seal: the store's ``complete`` is only a claim about files on disk. Sealing writes
``status.json`` (complete, with the SHA-256 of every file the run wrote, synced to disk)
before the store row changes, so any later reader can check the claim against the
folder: a sweep before skipping a point, ``runs --repair``, and the zoo before reusing a
stored verdict or repair of the model (:func:`checked_seal`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from backdoorlab.data.arrays import file_sha256

STATUS_FILE = "status.json"


def write_synced(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, sync it to disk and move it into place."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def seal_run_folder(path: Path, run_id: str) -> None:
    """``status.json`` = complete, with the SHA-256 of every file the run wrote (later sub-folders excluded)."""
    files = {p.name: file_sha256(p) for p in sorted(path.iterdir()) if p.is_file() and p.name != STATUS_FILE}
    write_synced(path / STATUS_FILE, json.dumps({"status": "complete", "run_id": run_id, "files": files}, indent=2))


def run_folder_problem(run_dir: str | os.PathLike[str]) -> str | None:
    """Why a run folder the store calls complete cannot be trusted as one (``None`` when it can).

    A sealed folder's files must exist and match their recorded hashes; a folder from
    before the seal needs at least its model, card and metrics.
    """
    path = Path(run_dir)
    status_path = path / STATUS_FILE
    try:
        status = json.loads(status_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"{status_path} is missing or unreadable ({exc.__class__.__name__})"
    if status.get("status") != "complete":
        return f"{status_path} says {status.get('status')!r}, not complete"
    files = status.get("files")
    if files is None:
        missing = [n for n in ("model.safetensors", "model.json", "metrics.json") if not (path / n).is_file()]
        return f"{path / missing[0]} is missing" if missing else None
    for name, want in sorted(files.items()):
        if not (path / name).is_file():
            return f"{path / name} is missing"
        if file_sha256(path / name) != want:
            return f"{path / name} changed since the run completed"
    return None


def checked_seal(run_dir: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """``(problem, seal)`` of a run folder, its files hashed once.

    ``problem`` is what :func:`run_folder_problem` finds (then ``seal`` is None). Otherwise
    ``seal`` identifies the folder's sealed contents (a hash of its recorded file hashes),
    or is None for an intact folder written before seals. Two folders with the same seal
    hold the same files, byte for byte: a verdict recorded with a seal is about exactly
    these weights.
    """
    if (problem := run_folder_problem(run_dir)) is not None:
        return problem, None
    files = json.loads((Path(run_dir) / STATUS_FILE).read_text()).get("files")
    if files is None:
        return None, None
    return None, hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
