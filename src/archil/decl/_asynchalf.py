"""Loading the async half of archil off the event loop, once per process.

The first ``.aio`` call of a process imports the async client and the call
runner and makes the shared SSL context: a few hundred milliseconds of CPU. Done
on the event loop, that would stall a service's other requests meanwhile; done
here, on a worker thread, the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["load_async_half"]

_loaded = threading.Event()


def _load() -> None:
    import importlib

    import archil._async.client
    import archil._async.launcher
    import archil._async.runner  # noqa: F401

    from .._tls import shared_ssl_context

    # What httpx and anyio import on first use: the connection pool, the WebSocket
    # layer, and anyio's asyncio backend (loaded by name, hence the guard).
    for name in ("httpcore", "httpx_ws", "anyio._backends._asyncio"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    shared_ssl_context()
    _loaded.set()


async def load_async_half() -> None:
    """Import what ``.aio`` calls run on (on a worker thread), unless done already."""
    if not _loaded.is_set():
        await asyncio.to_thread(_load)
