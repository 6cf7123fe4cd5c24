"""An async map left early leaves nothing behind, however its event loop goes on or ends.

Every input but the first sleeps for a minute, so a call that is not stopped
outlives the test's checks; the checks run right after ``asyncio.run`` returns,
without waiting, except where the loop goes on after ``break`` (then the
cleanup runs beside the caller's code and is waited for, 10 s at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

import archil


def new_app(conn: dict[str, str]) -> archil.App:
    return archil.App(name="map-leave", disk_id=f"disk_{uuid.uuid4().hex[:10]}", **conn)


def leftovers(app: archil.App) -> tuple[list[str], list[str]]:
    """The app's sandboxes and call files that are still there."""
    with app.client() as client:
        client.flush()
        sandboxes = [s.id for s in client.sandboxes.list(disk_id=app.disk_id)]
        files = [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")]
    return sandboxes, files


def slow_function(app: archil.App) -> archil.Function[[int], int]:
    @app.function(stream_logs=False)
    def slow(x: int) -> int:
        import time

        time.sleep(0.2 if x == 0 else 60)
        return x

    return slow


def test_break_as_the_coroutine_of_asyncio_run_returns(conn: dict[str, str]) -> None:
    """``asyncio.run`` cancels every pending task when its coroutine returns, the map's
    cleanup among them: that cleanup still runs to its end before ``run`` returns."""
    app = new_app(conn)
    slow = slow_function(app)
    seen: list[int] = []

    async def main() -> None:
        async for value in slow.map.aio(range(6), concurrency=2):
            seen.append(value)
            break

    asyncio.run(main())
    assert seen == [0]
    assert leftovers(app) == ([], [])


def test_break_then_the_loop_goes_on(conn: dict[str, str]) -> None:
    app = new_app(conn)
    slow = slow_function(app)

    async def main() -> tuple[list[str], list[str]]:
        async for _ in slow.map.aio(range(6), concurrency=2):
            break
        deadline = time.monotonic() + 10
        while (left := await asyncio.to_thread(leftovers, app)) != ([], []):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        return left

    assert asyncio.run(main()) == ([], [])


def test_aclosing_waits_for_the_cleanup(conn: dict[str, str]) -> None:
    app = new_app(conn)
    slow = slow_function(app)

    async def main() -> tuple[list[str], list[str]]:
        async with contextlib.aclosing(slow.map.aio(range(6), concurrency=2)) as results:
            async for value in results:
                assert value == 0
                break
        return await asyncio.to_thread(leftovers, app)

    assert asyncio.run(main()) == ([], [])


@pytest.mark.parametrize("iterate", [True, False], ids=["async-for", "await"])
def test_a_timeout_around_the_map_stops_its_calls(conn: dict[str, str], iterate: bool) -> None:
    """The task waiting on the map is cancelled (here by ``wait_for``): the calls are
    stopped before the cancellation reaches the caller."""
    app = new_app(conn)
    slow = slow_function(app)

    async def everything() -> list[int]:
        if iterate:
            return [value async for value in slow.map.aio(range(1, 5), concurrency=2)]
        return await slow.map.aio(range(1, 5), concurrency=2)

    async def main() -> tuple[list[str], list[str]]:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(everything(), 3)
        return await asyncio.to_thread(leftovers, app)

    assert asyncio.run(main()) == ([], [])


def test_a_task_cancelled_twice_still_cleans_up(conn: dict[str, str]) -> None:
    """A second cancellation while the map cleans up does not cut the cleanup short."""
    app = new_app(conn)
    slow = slow_function(app)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in slow.map.aio(range(6), concurrency=2):
            started.set()

    async def main() -> tuple[list[str], list[str]]:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 60)
        task.cancel()
        await asyncio.sleep(0.05)  # its cleanup has begun
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.to_thread(leftovers, app)

    assert asyncio.run(main()) == ([], [])
