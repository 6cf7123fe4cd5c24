"""Sandboxes started ahead of the inputs of one ``map``.

Each call of a ``map`` runs in a sandbox of its own, and a cold call spends about a
tenth of a second before the function starts: the sandbox's creation, its process
connection and the interpreter's start-up inside it. While a call runs, the map
starts the sandbox for an input still waiting: its bootstrap process starts, imports
cloudpickle, and waits for a call directory on its standard input. The next call
then names its directory there and its function runs at once.

No more than ``concurrency`` functions run at once: a sandbox started ahead runs no
user code until it is handed a call. There are never more of them than inputs left
to start, and whatever was not handed a call is stopped and deleted when the map
ends, however it ends.
"""

from __future__ import annotations

import functools
import logging
import threading

from .._callproto import CallPaths, FunctionSpec, standby_command
from .._compat import afinish
from .._errors import APIConnectionError, ArchilError
from .launcher import AsyncLauncher
from .resources.sandbox_handle import discard_sandbox
from .resources.sandboxes import AsyncProcess, AsyncSandbox

__all__ = ["AsyncStandbys", "handover"]

log = logging.getLogger("archil")

Launched = tuple[AsyncSandbox, AsyncProcess]


def handover(paths: CallPaths) -> str:
    """The line that hands the call in ``paths`` to a sandbox started ahead."""
    return paths.container_dir + "\n"


class AsyncStandbys:
    """The sandboxes one ``map`` started ahead, each waiting for a call (see the module docs)."""

    def __init__(self, launcher: AsyncLauncher, spec: FunctionSpec, lib: str, inputs: int) -> None:
        self._launcher = launcher
        self._spec = spec
        self._lib = lib
        self._waiting = inputs
        self._starting = 0
        self._ready: list[Launched] = []
        self._closed = False
        self._lock = threading.Lock()

    def begin(self) -> None:
        """One input begins: it no longer needs a sandbox started for it."""
        with self._lock:
            self._waiting -= 1

    async def take(self, paths: CallPaths) -> Launched | None:
        """A started sandbox, handed the call in ``paths`` (whose input is on the disk); or None.

        None when no sandbox is ready, or when the one taken can no longer take a
        call (it is then discarded); the caller starts a sandbox of its own.
        """
        while True:
            with self._lock:
                if not self._ready:
                    return None
                sandbox, process = self._ready.pop()
            try:
                await process.send_input(handover(paths))
            except APIConnectionError as exc:
                # The line may have arrived: the sandbox is the call's now, and the
                # watch sends the line again on its next connection (read once only).
                log.debug("handing a call to sandbox %s: %s", sandbox.id, exc)
            except ArchilError as exc:
                log.debug("a sandbox started ahead (%s) was not usable: %s", sandbox.id, exc)
                await self._drop(sandbox, process)
                continue
            except BaseException:
                await self._drop(sandbox, process)
                raise
            return sandbox, process

    async def refill(self) -> None:
        """Start one sandbox ahead when more inputs wait than sandboxes are ready or starting.

        A sandbox that fails to start is not an error here: the input that would have
        taken it starts its own, and reports the failure if it happens again.
        """
        with self._lock:
            if self._closed or self._waiting <= len(self._ready) + self._starting:
                return
            self._starting += 1
        try:
            launched = await self._start()
        except Exception as exc:
            log.debug("could not start a sandbox ahead: %s", exc)
            return
        finally:
            with self._lock:
                self._starting -= 1
        with self._lock:
            if not self._closed:
                self._ready.append(launched)
                return
        await self._drop(*launched)

    async def close(self) -> None:
        """Stop and delete every sandbox that was not handed a call."""
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
        await afinish(*(functools.partial(self._drop, *launched) for launched in ready))

    async def _start(self) -> Launched:
        # No process timeout: the call's timeout counts from the hand-over (see call()).
        key = "a" + CallPaths.new().call_id[:19]
        return await self._launcher._start_bootstrap(
            self._spec, key, standby_command(), self._lib, timeout=None
        )

    async def _drop(self, sandbox: AsyncSandbox, process: AsyncProcess) -> None:
        try:
            await process.close()
        finally:
            await discard_sandbox(sandbox)
