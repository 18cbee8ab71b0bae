"""FreshProcessPool: one process per task, at most N at once, crashes reported, never a hang.

The tasks are standard-library functions so that spawned children can import them
whatever the test runner's import path is.
"""

from __future__ import annotations

import multiprocessing
import operator
import os
import time

import pytest

from backdoorlab.experiments.fresh_processes import Finished, FreshProcessPool

CTX = multiprocessing.get_context("spawn")


def _drain(pool: FreshProcessPool, deadline_s: float = 120.0) -> list[Finished]:
    ended: list[Finished] = []
    start = time.monotonic()
    while pool.outstanding:
        assert len(pool._running) <= pool.workers
        ended += pool.poll(timeout=0.2)
        assert time.monotonic() - start < deadline_s, "pool did not finish: hung"
    return ended


def test_more_tasks_than_workers_all_finish_each_in_its_own_process() -> None:
    # the shape that deadlocks ProcessPoolExecutor(max_tasks_per_child=...) on Python 3.11
    pool = FreshProcessPool(2, CTX)
    for i in range(7):
        pool.submit(i, os.getpid)
    ended = _drain(pool)
    assert sorted(f.key for f in ended) == list(range(7))
    pids = [f.get() for f in ended]
    assert len(set(pids)) == 7 and os.getpid() not in pids


def test_a_raised_exception_is_an_error_not_a_crash_of_the_pool() -> None:
    pool = FreshProcessPool(1, CTX)
    pool.submit("bad", operator.truediv, 1, 0)
    pool.submit("good", operator.add, 2, 3)
    ended = {f.key: f for f in _drain(pool)}
    assert ended["good"].get() == 5
    assert ended["bad"].error is not None and "ZeroDivisionError" in ended["bad"].error
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        ended["bad"].get()


def test_a_process_that_dies_without_a_result_is_reported_with_its_exit_code() -> None:
    pool = FreshProcessPool(2, CTX)
    pool.submit("dies", os._exit, 7)
    pool.submit("lives", operator.mul, 6, 7)
    ended = {f.key: f for f in _drain(pool)}
    assert ended["lives"].get() == 42
    assert ended["dies"].error == "process ended with exit code 7 and no result"


def test_stop_drops_the_queue_and_terminates_running_tasks() -> None:
    pool = FreshProcessPool(1, CTX)
    pool.submit("long", time.sleep, 60)
    pool.submit("never", os.getpid)
    assert pool.poll(timeout=0.1) == []  # started, still running
    t0 = time.monotonic()
    pool.stop(grace_seconds=30)
    assert time.monotonic() - t0 < 20
    assert pool.outstanding == 0


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        FreshProcessPool(0, CTX)
