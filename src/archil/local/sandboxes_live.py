"""What every part of the sandbox manager shares: its constants and in-memory records.

:class:`Proc` is a process of a sandbox (its output log, its exit, its readers);
:class:`_Live` is the in-memory side of a sandbox this server process runs (its lock,
environment, session root, processes, connections, disk delegations and timers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ApiError
from .logs import OutputLog
from .runtime import Environment, RunningProcess
from .spec import ExitInfo, RootSpec

__all__ = [
    "DEFAULT_BASE_IMAGE",
    "DEFAULT_MAX_CONCURRENT_EXECS",
    "EXEC_IMAGE",
    "WAIT_BUDGET",
    "_EXEC_OUTPUT_CAP",
    "_IMAGE_WAIT",
    "_LIVE_STATES",
    "_PLATFORM",
    "Proc",
    "_Live",
    "_conflict",
    "logger",
]

logger = logging.getLogger("archil.local")

DEFAULT_BASE_IMAGE = "node:24-bookworm"
"""The live API's image when a create names none."""

EXEC_IMAGE = "debian:bookworm-slim"
"""The image the exec endpoints run their command in (this machine's userland)."""

DEFAULT_MAX_CONCURRENT_EXECS = 64
_EXEC_OUTPUT_CAP = 16 * 1024 * 1024
WAIT_BUDGET = 60.0
_IMAGE_WAIT = 1800.0
_PLATFORM = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
_LIVE_STATES = frozenset({"pending", "running", "pausing", "paused", "stopping"})


def _conflict(message: str, code: str = "sandbox_conflict") -> ApiError:
    return ApiError(409, message, code)


@dataclass(eq=False)
class Proc:
    """A process of a sandbox: its output log, its state, and who is attached to it.

    Output arrives on runtime threads; each append wakes the readers on ``loop``.
    """

    id: str
    sandbox_id: str
    path: Path
    terminal: bool
    loop: asyncio.AbstractEventLoop
    running: RunningProcess | None = None
    exit: ExitInfo | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    output: OutputLog = field(init=False)

    def __post_init__(self) -> None:
        self.output = OutputLog(self.path, notify=self._notify)

    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.wake)

    @property
    def status(self) -> str:
        """``running`` until the process ends, then its exit status."""
        return "running" if self.exit is None else self.exit.status

    def wake(self) -> None:
        """Wake every reader waiting for news of this process (on the loop)."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()


@dataclass(eq=False)
class _Live:
    """The in-memory side of a sandbox this server process runs."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    env: Environment | None = None
    root: RootSpec | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    attached: int = 0
    sockets: set[Callable[[], None]] = field(default_factory=set)
    delegations: set[str] = field(default_factory=set)
    idle_timer: asyncio.TimerHandle | None = None
    deadline_timer: asyncio.TimerHandle | None = None
    deadline: float | None = None
    session_started: float | None = None
    boot: asyncio.Task[None] | None = None
