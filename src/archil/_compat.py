"""Hand-written async/blocking pairs that ``scripts/unasync.py`` maps onto each other.

Code in ``_async/`` must sleep, lock and fan out only through the ``a``-prefixed
names here; the generator rewrites them to the blocking twins, so the
generated ``_sync/`` code really waits (a bare ``await asyncio.sleep`` would
turn into an un-awaited coroutine) and really runs work concurrently.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = [
    "ALock",
    "Lock",
    "agather_bounded",
    "asleep",
    "gather_bounded",
    "sleep",
]

T = TypeVar("T")
R = TypeVar("R")


async def asleep(seconds: float) -> None:
    """Sleep without blocking the event loop."""
    if seconds > 0:
        await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Block the calling thread for ``seconds``."""
    if seconds > 0:
        time.sleep(seconds)


class ALock:
    """An asyncio lock created lazily so it binds to the loop that first uses it."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        assert self._lock is not None
        self._lock.release()


class Lock:
    """A thread lock with the same shape as :class:`ALock`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


async def agather_bounded(
    fn: Callable[[T], Awaitable[R]], items: Iterable[T], limit: int
) -> AsyncIterator[R]:
    """Run ``fn`` over ``items`` with at most ``limit`` in flight; yield results in input order."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    sem = asyncio.Semaphore(limit)

    async def run(item: T) -> R:
        async with sem:
            return await fn(item)

    tasks = [asyncio.ensure_future(run(item)) for item in items]
    try:
        for task in tasks:
            yield await task
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def gather_bounded(fn: Callable[[T], R], items: Iterable[T], limit: int) -> Iterator[R]:
    """Run ``fn`` over ``items`` on at most ``limit`` threads; yield results in input order."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="archil")
    futures = [pool.submit(fn, item) for item in items]
    try:
        for fut in futures:
            yield fut.result()
    finally:
        for fut in futures:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
