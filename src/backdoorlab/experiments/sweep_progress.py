"""What a sweep is doing: progress events while it runs, and its status read from the store.

Why a module of its own: the same counts, durations and ETA serve two readers, the
process running the sweep (events, through a callback, so the library stays quiet and
the CLI prints) and anyone looking at a sweep from outside (``backdoorlab runs
--sweep``), who only has the results store. Nothing here names a task or a metric: the
headline metric comes from the run's outcome or from the task registry.
"""

from __future__ import annotations

import heapq
import os
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.store import ResultsStore

if TYPE_CHECKING:
    from backdoorlab.experiments.sweep import PlannedRun

EventKind = Literal["planned", "started", "finished", "failed", "claimed"]
PointState = Literal["complete", "running", "failed", "to run"]


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a progress line, exact enough to plan by."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_headline(headline: tuple[str, Any] | None) -> str:
    """``name=value`` with 4 significant digits for floats; empty when the task or the run has none."""
    if not headline or not headline[0] or headline[1] is None:
        return ""
    name, value = headline
    return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"


def estimate_eta(
    durations: Sequence[float], running_elapsed: Sequence[float], waiting: int, workers: int
) -> float | None:
    """Seconds until the last run ends, if every run takes the mean of ``durations``.

    Why a small schedule rather than ``mean * remaining / workers``: with few runs left
    the division hides that the last one cannot start before a worker frees up, and a
    run already half done is worth half a run. Each running run is expected to end at
    ``mean - elapsed`` (never before now), idle workers are free now, and each waiting
    run goes to the worker that frees up first. ``None`` while no run has finished
    (nothing to extrapolate from); ``0`` when nothing is left.
    """
    if not running_elapsed and waiting <= 0:
        return 0.0
    if not durations:
        return None
    mean = statistics.fmean(durations)
    free = [max(mean - e, 0.0) for e in running_elapsed]
    free += [0.0] * max(0, workers - len(free))
    heapq.heapify(free)
    for _ in range(max(0, waiting)):
        heapq.heappush(free, heapq.heappop(free) + mean)
    return max(free)


@dataclass(frozen=True)
class SweepCounts:
    """Where a sweep stands: ``to_run`` runs this time, of which ``done`` ended (``failed`` among them)."""

    planned: int
    skipped: int  # already complete before the sweep started
    to_run: int
    done: int = 0  # ended this time, complete or failed
    failed: int = 0
    running: int = 0

    @property
    def waiting(self) -> int:
        return self.to_run - self.done - self.running

    def __str__(self) -> str:
        failed = f" ({self.failed} failed)" if self.failed else ""
        return f"[{self.done}/{self.to_run} done{failed}, {self.running} running]"


@dataclass(frozen=True)
class SweepEvent:
    """One thing that happened in a sweep, with the counts and the ETA just after it.

    ``planned`` comes once, before any run; then per run ``started`` and ``finished``
    or ``failed`` (``failed`` may come without ``started`` when a worker died before
    the run began). ``error`` is the whole message; :meth:`line` shows its first line.
    """

    kind: EventKind
    counts: SweepCounts
    name: str = ""  # the run's name (config name); run ids exist only once a run started
    run_id: str = ""
    worker: str = ""
    headline: tuple[str, Any] | None = None
    seconds: float | None = None
    error: str = ""
    eta_seconds: float | None = None

    def line(self) -> str:
        """The console line for this event (plain text, no markup)."""
        c = self.counts
        if self.kind == "planned":
            return f"sweep: {c.planned} planned, {c.skipped} already complete, {c.to_run} to run"
        if self.kind == "started":
            what = f"started  {self.name} on {self.worker}"
        elif self.kind == "finished":
            parts = (f"finished {self.run_id}", format_headline(self.headline), format_duration(self.seconds))
            what = "  ".join(p for p in parts if p)
        elif self.kind == "claimed":
            what = f"skipped  {self.error}"
        else:
            first = self.error.splitlines()[0] if self.error else "unknown error"
            took = f" after {format_duration(self.seconds)}" if self.seconds is not None else ""
            what = f"failed   {self.run_id or self.name}{took}: {first}"
        eta = f"  ETA {format_duration(self.eta_seconds)}" if self.eta_seconds is not None and c.done < c.to_run else ""
        return f"{what}  {c}{eta}"


@dataclass(frozen=True)
class RunStarted:
    """Sent by a worker when a run really begins (through the queue its result follows on)."""

    name: str
    host: str
    pid: int
    at: float  # time.time() on the worker

    @classmethod
    def here(cls, name: str) -> RunStarted:
        return cls(name, socket.gethostname(), os.getpid(), time.time())


@dataclass(frozen=True)
class RunResult:
    """What a worker hands back for one run; never an exception, so one run cannot stop a sweep."""

    status: Literal["complete", "failed", "claimed"]  # claimed: another process owns the config
    name: str
    run_id: str = ""
    error: str = ""
    headline: tuple[str, Any] | None = None
    seconds: float | None = None


@dataclass
class SweepTracker:
    """The driver's book of a sweep in flight; turns starts and results into :class:`SweepEvent`.

    Every engine reports through :meth:`put` (a worker's :class:`RunStarted` or
    :class:`RunResult`, the same call a queue gets), so the counts and the ETA are
    computed in one place whatever runs the runs. :meth:`finish` ignores a run that has
    already ended, so a driver may also pass on what a future returned, in case its
    queued report got lost. Only successful runs feed the ETA: failures are often
    instant (a bad setting) and would make it look too short.
    """

    planned: int
    skipped: int
    to_run: int
    workers: int = 1
    emit: Callable[[SweepEvent], None] | None = None
    _running: dict[str, float] = field(default_factory=dict, init=False)  # name -> start time
    _durations: list[float] = field(default_factory=list, init=False)
    _failed: int = field(default=0, init=False)
    _ended: set[str] = field(default_factory=set, init=False)

    def counts(self) -> SweepCounts:
        return SweepCounts(self.planned, self.skipped, self.to_run, len(self._ended), self._failed, len(self._running))

    def eta(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        c = self.counts()
        elapsed = [now - t for t in self._running.values()]
        return estimate_eta(self._durations, elapsed, c.waiting, self.workers)

    def begin(self) -> None:
        self._send(SweepEvent("planned", self.counts()))

    def put(self, report: RunStarted | RunResult) -> None:
        """Take a worker's report (the in-process engine passes the tracker as the queue)."""
        if isinstance(report, RunResult):
            self.finish(report)
        else:
            self._start(report)

    def _start(self, started: RunStarted) -> None:
        if started.name in self._ended:  # a late report (Ray): the run is over
            return
        self._running[started.name] = started.at
        self._send(SweepEvent("started", self.counts(), started.name, worker=_worker_label(started),
                              eta_seconds=self.eta()))  # fmt: skip

    def drain(self, queue: Any) -> None:
        """Take every report waiting in ``queue`` (a multiprocessing or Ray queue), in order."""
        import queue as queue_module

        while True:
            try:
                self.put(queue.get_nowait())
            except queue_module.Empty:
                return

    def finish(self, result: RunResult) -> None:
        if result.name in self._ended:
            return
        if result.name not in self._running:
            # the result overtook its start report (Ray sends reports without waiting, and a run that fails
            # at once can return first): the run did start, so say so first, then that it ended
            self._running[result.name] = time.time() - (result.seconds or 0.0)
            self._send(SweepEvent("started", self.counts(), result.name, worker="(its start report came late)",
                                  eta_seconds=self.eta()))  # fmt: skip
        self._ended.add(result.name)
        self._running.pop(result.name, None)
        if result.status == "complete":
            if result.seconds is not None:
                self._durations.append(result.seconds)
        elif result.status == "failed":
            self._failed += 1
        kind: EventKind = {"complete": "finished", "failed": "failed", "claimed": "claimed"}[result.status]
        self._send(SweepEvent(kind, self.counts(), result.name, result.run_id, headline=result.headline,
                              seconds=result.seconds, error=result.error, eta_seconds=self.eta()))  # fmt: skip

    def _send(self, event: SweepEvent) -> None:
        if self.emit is not None:
            self.emit(event)


def _worker_label(started: RunStarted) -> str:
    if started.pid == os.getpid() and started.host == socket.gethostname():
        return "this process"
    return f"pid {started.pid}" if started.host == socket.gethostname() else f"{started.host} pid {started.pid}"


# --------------------------------------------------------------------- status from the store


@dataclass(frozen=True)
class PointStatus:
    """One planned point as the store sees it now."""

    name: str
    config_hash: str
    overrides: dict[str, Any]
    state: PointState
    run_id: str = ""
    headline: tuple[str, Any] | None = None
    seconds: float | None = None  # duration when ended, elapsed when running
    error: str = ""


@dataclass(frozen=True)
class SweepStatus:
    """Every point of a sweep, totals and an ETA; read-only view of the store."""

    points: list[PointStatus]
    eta_seconds: float | None

    def count(self, state: PointState) -> int:
        return sum(p.state == state for p in self.points)

    @property
    def active(self) -> bool:
        """Whether anything is still running or waiting to run (what ``--watch`` waits for)."""
        return any(p.state in ("running", "to run") for p in self.points)

    def totals(self) -> str:
        parts = [f"{len(self.points)} planned"] + [
            f"{n} {s}" for s in ("complete", "running", "failed", "to run") if (n := self.count(s))
        ]
        eta = f"; ETA {format_duration(self.eta_seconds)}" if self.active and self.eta_seconds is not None else ""
        return ", ".join(parts) + eta


def row_headline(row: dict[str, Any]) -> tuple[str, Any] | None:
    """The headline metric of a stored run, named by its task (``None`` for an unknown task)."""
    from backdoorlab.registry import TASKS

    try:
        name = TASKS.get(row["task"]).headline_metric
    except BackdoorLabError:
        return None
    return (name, row["metrics"].get(name)) if name and name in row["metrics"] else None


def _point_status(run: PlannedRun, rows: Iterable[dict[str, Any]], now: float) -> PointStatus:
    """A complete row wins (the point will be skipped); otherwise the newest attempt tells."""
    mine = sorted((r for r in rows if r["config_hash"] == run.config_hash), key=lambda r: r["created"], reverse=True)
    row = next((r for r in mine if r["status"] == "complete"), mine[0] if mine else None)
    base = {"name": run.config.name, "config_hash": run.config_hash, "overrides": run.overrides}
    if row is None:
        return PointStatus(**base, state="to run")
    end = row["finished"] if row["finished"] is not None else now
    return PointStatus(**base, state=row["status"], run_id=row["run_id"], headline=row_headline(row),
                       seconds=end - row["created"], error=row["error"] or "")  # fmt: skip


def sweep_status(planned: Sequence[PlannedRun], store: ResultsStore | None, now: float | None = None) -> SweepStatus:
    """Status of every planned point from the results store (safe while a sweep writes to it).

    ``store=None`` (no store file yet) means nothing has run: every point is to run.

    The ETA takes the durations of the complete points and, since the store does not
    know how many workers the sweep has, as many workers as runs are running now.
    A run whose process was killed stays ``running`` in the store; it shows with a
    growing elapsed time.
    """
    now = time.time() if now is None else now
    names = {r.config.name for r in planned}
    rows = [r for r in _rows_named(store, planned) if r["name"] in names] if store is not None else []
    points = [_point_status(run, rows, now) for run in planned]
    durations = [p.seconds for p in points if p.state == "complete" and p.seconds is not None]
    running = [p.seconds or 0.0 for p in points if p.state == "running"]
    waiting = sum(p.state == "to run" for p in points)
    return SweepStatus(points, estimate_eta(durations, running, waiting, max(1, len(running))))


def _rows_named(store: ResultsStore, planned: Sequence[PlannedRun]) -> list[dict[str, Any]]:
    """The store's rows whose names share the sweep's prefix (run names are ``<sweep name>-<digest>``)."""
    prefixes = {r.config.name.rsplit("-", 1)[0] for r in planned}
    rows = {row["run_id"]: row for prefix in prefixes for row in store.list(name_like=f"{prefix}-", limit=_ALL_ROWS)}
    return list(rows.values())


_ALL_ROWS = 2**62  # store.list's limit: a sweep's retries can add any number of rows
