"""An app's async clients: one per running event loop, closed as that loop shuts down.

A client's connections belong to the loop that made them, so the ``.aio`` calls
of an app share one client per loop. It is kept between calls: its connections
serve the next call, and the cleanup of a finished call (its sandbox's stop and
delete) goes on in the background after the call returns, as with the blocking
client. A suspended async generator holds it: ``asyncio.run`` closes such
generators once it has cancelled (and waited for) every task, and this one then
closes the client and forgets it.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from ._asynchalf import load_async_half

if TYPE_CHECKING:
    from .._async.client import AsyncArchil

__all__ = ["LoopClients"]


class _Held:
    """The client of one loop, and the generator that closes it."""

    def __init__(self, client: AsyncArchil) -> None:
        self.client = client
        self.guard: AsyncIterator[None] | None = None
        self.closed = False


class LoopClients:
    """The clients ``make()`` makes, one per running event loop (see the module docs)."""

    def __init__(self, make: Callable[[], AsyncArchil]) -> None:
        self._make = make
        self._lock = threading.Lock()  # loops on other threads use the same app
        self._held: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Held] = (
            weakref.WeakKeyDictionary()
        )

    def __len__(self) -> int:
        """How many loops have a client now."""
        with self._lock:
            return len(self._held)

    def _current(self, loop: asyncio.AbstractEventLoop) -> _Held | None:
        with self._lock:
            held = self._held.get(loop)
        return held if held is not None and not held.closed else None

    async def get(self) -> AsyncArchil:
        """The running loop's client, made on first use."""
        loop = asyncio.get_running_loop()
        held = self._current(loop)
        if held is not None:
            return held.client
        await load_async_half()
        # Other calls on this loop may have made the client while that ran.
        held = self._current(loop)
        if held is not None:
            return held.client
        held = _Held(self._make())
        guard = self._close_at_shutdown(held, loop)
        await guard.__anext__()  # runs to its yield without suspending: nothing interleaves
        held.guard = guard
        with self._lock:
            self._held[loop] = held
        return held.client

    async def _close_at_shutdown(
        self, held: _Held, loop: asyncio.AbstractEventLoop
    ) -> AsyncIterator[None]:
        try:
            yield
        finally:
            held.closed = True
            with self._lock:
                if self._held.get(loop) is held:
                    del self._held[loop]
            await held.client.aclose()
