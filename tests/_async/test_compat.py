"""The hand-written pairs of ``archil._compat``: background work that yields to the calls
being started, and work that runs while its caller does something else."""

from __future__ import annotations

import time

import pytest

from archil import _compat
from archil._compat import ABackground, AConcurrent, asleep


class Recorder:
    """Background work that notes when it ran."""

    def __init__(self) -> None:
        self.ran: list[float] = []

    async def work(self) -> None:
        self.ran.append(time.monotonic())


async def test_background_work_waits_until_starts_end_and_a_quiet_moment_passes() -> None:
    background = ABackground()
    recorder = Recorder()
    ran = recorder.ran

    with background.foreground():
        background.spawn(recorder.work)
        await asleep(0.1)
        assert ran == [], "background work ran while a call was starting"
        ended = time.monotonic()
    await background.drain()
    assert len(ran) == 1
    assert ran[0] - ended >= _compat.YIELD_QUIET * 0.9


async def test_background_work_waits_no_longer_than_the_limit() -> None:
    background = ABackground()
    recorder = Recorder()
    ran = recorder.ran

    with background.foreground():
        spawned = time.monotonic()
        background.spawn(recorder.work)
        await asleep(_compat.YIELD_LIMIT + 0.5)
        assert len(ran) == 1, "a steady stream of starts held background work back"
    assert ran[0] - spawned >= _compat.YIELD_LIMIT * 0.9
    await background.drain()


async def test_background_work_with_no_start_about_runs_at_once() -> None:
    background = ABackground()
    recorder = Recorder()
    ran = recorder.ran

    spawned = time.monotonic()
    background.spawn(recorder.work)
    await background.drain()
    assert len(ran) == 1
    assert ran[0] - spawned < _compat.YIELD_LIMIT


async def test_concurrent_work_starts_at_once_and_join_returns_its_value() -> None:
    started: list[bool] = []

    async def work() -> int:
        started.append(True)
        await asleep(0.05)
        return 7

    job = AConcurrent(work)
    await asleep(0.02)
    assert started == [True], "the work waited for join to begin"
    assert await job.join() == 7
    assert await job.join() == 7


async def test_concurrent_failure_is_raised_by_join_and_not_by_settle() -> None:
    async def work() -> int:
        await asleep(0.01)
        raise ValueError("boom")

    job = AConcurrent(work)
    await job.settle()
    with pytest.raises(ValueError, match="boom"):
        await job.join()
