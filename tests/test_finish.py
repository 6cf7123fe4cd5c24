"""Cleanup that runs to its end when its task is cancelled: ``afinish``, the cleanup in
``agather_bounded`` and background work, and the map's ``DrivenIterator``.

These are the event loop's own cases (the blocking twins are not cancelled), so
they are written once, here, rather than in ``tests/_async``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator

import pytest

from archil import _compat
from archil._compat import ABackground, afinish, agather_bounded
from archil.decl._driven import DrivenIterator


class Steps:
    """Cleanup that takes a few awaits, noting each start and each end."""

    def __init__(self, name: str, log: list[str], awaits: int = 5) -> None:
        self.name = name
        self.log = log
        self.awaits = awaits

    async def __call__(self) -> None:
        self.log.append(f"start {self.name}")
        for _ in range(self.awaits):
            await asyncio.sleep(0.01)
        self.log.append(f"end {self.name}")


async def test_afinish_runs_every_piece_then_raises_the_cancellation() -> None:
    log: list[str] = []

    async def clean_up() -> None:
        await afinish(Steps("a", log), Steps("b", log))

    task = asyncio.create_task(clean_up())
    await asyncio.sleep(0.015)  # inside "a"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # "a" was interrupted and started again; "b" ran after; the cancellation came last.
    assert log == ["start a", "start a", "end a", "start b", "end b"]


async def test_afinish_without_a_cancellation_returns() -> None:
    log: list[str] = []
    await afinish(Steps("a", log, awaits=1))
    assert log == ["start a", "end a"]


async def test_afinish_gives_up_after_its_restarts(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []

    async def clean_up() -> None:
        await afinish(Steps("a", log, awaits=100))

    task = asyncio.create_task(clean_up())
    await asyncio.sleep(0.005)
    with caplog.at_level(logging.WARNING, logger="archil"):
        for _ in range(_compat.FINISH_RESTARTS + 1):
            task.cancel()
            await asyncio.sleep(0.005)
        with pytest.raises(asyncio.CancelledError):
            await task
    assert log.count("start a") == _compat.FINISH_RESTARTS + 1
    assert "end a" not in log
    assert "gave up" in caplog.text


async def test_agather_bounded_waits_for_its_tasks_cleanup_when_cancelled_again() -> None:
    log: list[str] = []

    async def work(i: int) -> int:
        try:
            await asyncio.sleep(60)
        finally:
            await afinish(Steps(str(i), log))
        return i

    async def consume() -> None:
        # Unordered: the map waits on no task of its own, so a cancellation reaches its
        # cleanup at once (an ordered one first cancels the task it awaits).
        async for _ in agather_bounded(work, range(3), 3, ordered=False):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.015)  # the work is cleaning up
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Had the second cancellation cut the wait short, the tasks would still be running.
    assert sorted(x for x in log if x.startswith("end")) == ["end 0", "end 1", "end 2"]


def test_background_work_cancelled_as_asyncio_run_ends_still_runs() -> None:
    ran: list[str] = []

    async def work() -> None:
        await asyncio.sleep(0.01)
        ran.append("cleaned")

    async def main() -> None:
        background = ABackground()
        with background.foreground():
            background.spawn(work)  # waits for the start to end, which it never sees

    asyncio.run(main())
    assert ran == ["cleaned"]


async def numbers(log: list[str], fail_at: int | None = None) -> AsyncIterator[int]:
    try:
        for i in range(100):
            if i == fail_at:
                raise ValueError(f"input {i}")
            await asyncio.sleep(0.01)
            yield i
    finally:
        await afinish(Steps("source", log))


async def test_driven_iterator_yields_in_order_and_raises_the_sources_error() -> None:
    log: list[str] = []
    got: list[int] = []
    with pytest.raises(ValueError, match="input 3"):
        async for value in DrivenIterator(numbers(log, fail_at=3)):
            got.append(value)
    assert got == [0, 1, 2]
    assert log == ["start source", "end source"]


async def test_leaving_a_driven_iterator_stops_its_source() -> None:
    log: list[str] = []
    running: set[asyncio.Task[None]] = set()
    async for _ in DrivenIterator(numbers(log), running):
        break
    gc.collect()
    assert len(running) == 1
    (task,) = running
    await asyncio.wait([task])
    assert task.cancelled()
    assert log == ["start source", "end source"]


async def test_driven_iterator_aclose_waits_for_the_cleanup() -> None:
    log: list[str] = []
    iterator = DrivenIterator(numbers(log))
    assert await iterator.__anext__() == 0
    await iterator.aclose()
    assert log == ["start source", "end source"]
    with pytest.raises(StopAsyncIteration):
        await iterator.__anext__()


def test_leaving_a_driven_iterator_as_asyncio_run_ends_runs_the_cleanup() -> None:
    log: list[str] = []

    async def main() -> None:
        async for _ in DrivenIterator(numbers(log)):
            break

    asyncio.run(main())
    # Cancelled by the iterator's drop, then by asyncio.run: restarted, and finished.
    assert log[-1] == "end source"
    assert set(log) == {"start source", "end source"}


async def test_a_driven_iterator_yields_exceptions_that_are_values() -> None:
    async def errors() -> AsyncIterator[object]:
        yield ValueError("a value")
        yield 1

    got = [value async for value in DrivenIterator(errors())]
    assert isinstance(got[0], ValueError) and got[1] == 1
