"""At most N tasks at once, each in a process of its own that ends with it.

Why not ``ProcessPoolExecutor(max_tasks_per_child=1)``, which says the same: on
CPython 3.11 up to the fix of gh-115634 it can deadlock. Its idle-worker semaphore
counts task completions, not idle workers, so when a worker exits at its task limit
while tasks are queued, the replacement path may take a stale token, decide an idle
worker exists and never spawn one; the queued tasks then wait forever. A fresh-clone CI
run of this project's tests hung for its whole 90 minutes on exactly that. Starting
one process per task ourselves is a few lines and has no such state.

Each task's return value comes back through a one-way pipe; a process that ends
without sending one (killed, out of memory, ``os._exit``) is reported as such, with its
exit code, so a crash is a failed task, never a hang.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any


@dataclass(frozen=True)
class Finished:
    """One task's end: ``value`` if it returned, else ``error`` says what happened."""

    key: Any
    value: Any = None
    error: str | None = None

    def get(self) -> Any:
        """The value, or a ``RuntimeError`` carrying the error (the shape of ``Future.result``)."""
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.value


def _child(conn: Connection, initializer: Callable[[], None] | None, fn: Callable[..., Any], args: tuple) -> None:
    """The task's process: run it and send ``(True, value)`` or ``(False, error)``."""
    try:
        if initializer is not None:
            initializer()
        message: tuple[bool, Any] = (True, fn(*args))
    except BaseException as exc:  # reported to the parent, whatever it was
        message = (False, f"{type(exc).__name__}: {exc}")
    try:
        conn.send(message)
    finally:
        conn.close()


class FreshProcessPool:
    """Queue tasks with :meth:`submit`; :meth:`poll` starts them (at most ``workers``
    at once) and returns those that ended; :meth:`stop` drops the queue and SIGTERMs
    the running ones.

    Tasks and their arguments must pickle (the usual context is ``spawn``).
    """

    def __init__(self, workers: int, ctx: BaseContext, initializer: Callable[[], None] | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.ctx = ctx
        self.initializer = initializer
        self._queued: deque[tuple[Any, Callable[..., Any], tuple]] = deque()
        self._running: dict[Any, tuple[BaseProcess, Connection]] = {}

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` under ``key`` (keys name tasks in :class:`Finished`)."""
        self._queued.append((key, fn, args))

    @property
    def outstanding(self) -> int:
        """Tasks queued or running."""
        return len(self._queued) + len(self._running)

    def poll(self, timeout: float) -> list[Finished]:
        """Start queued tasks while there is room, wait up to ``timeout`` seconds for one
        to end, and return every task that has ended (possibly none)."""
        self._fill()
        if not self._running:
            return []
        watched: list[Any] = []
        for process, conn in self._running.values():
            watched += [conn, process.sentinel]
        wait(watched, timeout=timeout)
        ended = [self._reap(key) for key in list(self._running)]
        finished = [f for f in ended if f is not None]
        self._fill()
        return finished

    def stop(self, grace_seconds: float = 60.0) -> None:
        """Forget the queue, SIGTERM the running tasks and wait for them (their own
        handlers decide what to record on the way out)."""
        self._queued.clear()
        running = list(self._running.values())
        self._running.clear()
        for process, _ in running:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process, conn in running:
            process.join(timeout=grace_seconds)
            conn.close()

    def _fill(self) -> None:
        while self._queued and len(self._running) < self.workers:
            key, fn, args = self._queued.popleft()
            receive, send = self.ctx.Pipe(duplex=False)
            process = self.ctx.Process(target=_child, args=(send, self.initializer, fn, args), daemon=False)
            process.start()
            send.close()  # only the child holds the sending end: its death reads as EOF here
            self._running[key] = (process, receive)

    def _reap(self, key: Any) -> Finished | None:
        """The task's end if it has ended (a message arrived or its process is gone)."""
        process, conn = self._running[key]
        if not conn.poll() and process.is_alive():
            return None
        try:  # a message, or EOF: the process died without (or while) sending
            ok, payload = conn.recv()
        except (EOFError, OSError):
            process.join()
            ok, payload = False, f"process ended with exit code {process.exitcode} and no result"
        process.join()
        conn.close()
        del self._running[key]
        return Finished(key, value=payload) if ok else Finished(key, error=payload)
