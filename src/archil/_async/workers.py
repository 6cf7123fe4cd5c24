"""The containers of one ``map``: each runs the function on one input after another.

A ``map`` uploads its function once, and each of its containers (a
:class:`~archil._async.warm.AsyncWarmContainer` running
:data:`~archil._callproto.WORKER_BOOTSTRAP`) loads it once, then runs it on the
inputs it is handed, one at a time, as Modal's containers do: the sandbox's start,
the interpreter's and cloudpickle's are paid once per container, not once per input.
An input takes an idle container, or starts one when none is idle; since no more than
``concurrency`` inputs run at once, no more containers than that run. A container
whose input timed out, was interrupted, or which died, is closed and never handed
another input. When the map ends, however it ends, every container is closed.
"""

from __future__ import annotations

import functools
import threading

from .._callproto import CallPaths, FunctionSpec
from .._compat import afinish
from .launcher import AsyncLauncher
from .warm import AsyncWarmContainer

__all__ = ["AsyncWorkers"]


class AsyncWorkers:
    """The containers of one ``map`` (see the module docs)."""

    def __init__(
        self, launcher: AsyncLauncher, spec: FunctionSpec, function: CallPaths, what: str
    ) -> None:
        self._launcher = launcher
        self._spec = spec
        self._function = function
        self._what = what
        self._idle: list[AsyncWarmContainer] = []
        self._all: list[AsyncWarmContainer] = []
        self._closed = False
        self._lock = threading.Lock()

    async def take(self) -> AsyncWarmContainer:
        """An idle container, or a new one (started here).

        Raises :class:`~archil.SandboxError` when a new one's sandbox fails to start.
        """
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
            if self._closed:
                raise RuntimeError("the map's containers are closed")
            worker = AsyncWarmContainer(
                self._launcher, self._spec, None, self._what, function=self._function
            )
            self._all.append(worker)
        await worker.start()
        return worker

    def give_back(self, worker: AsyncWarmContainer) -> None:
        """``worker`` is done with its input and may take another one."""
        with self._lock:
            if worker.alive and not self._closed:
                self._idle.append(worker)

    async def close(self) -> None:
        """Close every container (its sandbox stopped and deleted); none is started after."""
        with self._lock:
            self._closed = True
            workers, self._idle = list(self._all), []
        await afinish(*(functools.partial(worker.close) for worker in workers))
