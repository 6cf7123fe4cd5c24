"""An async iterator that runs its source in a task of its own.

``async for x in results: break`` leaves an async generator to Python's
finalizer, which closes it in a new task. When that happens as the coroutine
given to ``asyncio.run`` returns, ``asyncio.run`` cancels that task before its
first step, and the generator's cleanup (stopping a map's sandboxes) never
runs. :class:`DrivenIterator` runs the source in a task started with the
iteration instead: leaving the loop, dropping the iterator, or cancelling the
task that waits on it cancels that task, which is already running, so its
cleanup runs, and ``asyncio.run`` waits for it like any other task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from .._compat import afinish

__all__ = ["DrivenIterator", "stop"]

T = TypeVar("T")


class _End:
    pass


_END = _End()


class _Failed:
    """The error that ended the source (a value may be an exception: ``return_exceptions``)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class DrivenIterator(Generic[T]):
    """Iterates ``source`` in a task of its own; see the module docs.

    Values (and the error that ends the source) are handed over in order
    through a queue. :meth:`aclose` stops the source and waits until its
    cleanup is done; so does cancelling the task that waits in ``__anext__``.
    """

    def __init__(
        self, source: AsyncIterator[T], running: set[asyncio.Task[None]] | None = None
    ) -> None:
        self._source: AsyncIterator[T] | None = source
        self._running = running
        self._queue: asyncio.Queue[T | _End | _Failed] | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = False

    def __aiter__(self) -> DrivenIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._done:
            raise StopAsyncIteration
        if self._task is None:
            assert self._source is not None
            self._queue = asyncio.Queue()
            # The task must not hold the iterator: dropping the iterator is what stops it.
            self._task = asyncio.get_running_loop().create_task(_drive(self._source, self._queue))
            self._source = None
            if self._running is not None:
                self._running.add(self._task)
                self._task.add_done_callback(self._running.discard)
        assert self._queue is not None
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if isinstance(item, _End):
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            self._done = True
            await self._settled()
            raise item.error
        return item

    async def _settled(self) -> None:
        task = self._task
        if task is not None and not task.done():
            await afinish(functools.partial(asyncio.wait, [task]))

    async def aclose(self) -> None:
        """Stop the source (if it is still going) and wait until its cleanup is done."""
        self._done = True
        self._source = None
        if self._task is not None:
            await stop(self._task)

    def __del__(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        loop = task.get_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task.cancel()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                loop.call_soon_threadsafe(task.cancel)


async def _drive(source: AsyncIterator[T], queue: asyncio.Queue[T | _End | _Failed]) -> None:
    try:
        async for value in source:
            queue.put_nowait(value)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        queue.put_nowait(_Failed(exc))
    else:
        queue.put_nowait(_END)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel a :class:`DrivenIterator`'s task and wait until its cleanup is done."""
    if not task.done():
        task.cancel()
        await afinish(functools.partial(asyncio.wait, [task]))
    if not task.cancelled():
        task.exception()  # retrieved: an error after the last value was read is moot
