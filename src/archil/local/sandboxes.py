"""Sandbox and process lifecycle for the local control plane, over the runtime.

:class:`SandboxManager` owns every sandbox's record (SQLite), its live
environment (:mod:`archil.local.runtime`), its layers (:mod:`archil.local.layers`)
and its processes. The states and transitions are the live API's:

- create, start and fork boot a session: ``pending`` then ``running`` (or
  ``failed`` with an ``exit_reason`` when the image, a mount or the boot fails);
- stop ends every process and commits the session's writes as a checkpoint:
  ``stopping`` then ``stopped``; pause freezes the processes and copies the
  writes into a checkpoint: ``pausing`` then ``paused``; resume thaws them;
- a session whose environment ends by itself ends ``exited``;
- ``max_ttl_seconds`` and ``idle_ttl_seconds`` (no process connection
  attached for that long) pause a running sandbox; with ``reap_idle`` the idle
  TTL stops it instead, so nothing of it keeps running;
- delete removes a stopped, exited or failed sandbox without forks, its
  processes' output and the layers nothing else uses.

Mounts: a plain disk mount is exclusive (a second plain mount of the disk
waits up to its ``queue_ms``, then fails); ``read_only`` and ``conditional``
mounts never take the disk exclusively.

Lifecycle operations on one sandbox are serialized by a per-sandbox lock.
Runtime callbacks arrive on runtime threads and hop to the event loop.

Parts
-----
:class:`SandboxManager` inherits its operations from one class per concern; this module
adds the manager's own lifecycle (recovery after a restart, shutdown) and keeps
every name the package imports from here.

- :mod:`archil.local.sandboxes_live`: the constants, :class:`Proc` and the
  in-memory side of a running sandbox.
- :mod:`archil.local.sandboxes_base`: the manager's state, the records and their
  wire form, ports and the disks plain mounts hold exclusively.
- :mod:`archil.local.sandboxes_stop`: stop, pause and delete, and environments
  that end by themselves.
- :mod:`archil.local.sandboxes_timers`: the max and idle TTLs.
- :mod:`archil.local.sandboxes_procs`: processes, their connections and the
  one-shot exec (:class:`ExecOutcome`).
- :mod:`archil.local.sandboxes_boot`: create, start, resume and fork.
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread

from .sandboxes_boot import _Booting
from .sandboxes_live import (
    _EXEC_OUTPUT_CAP,
    _IMAGE_WAIT,
    _LIVE_STATES,
    _PLATFORM,
    DEFAULT_BASE_IMAGE,
    DEFAULT_MAX_CONCURRENT_EXECS,
    EXEC_IMAGE,
    WAIT_BUDGET,
    Proc,
    _conflict,
    _Live,
    logger,
)
from .sandboxes_procs import ExecOutcome, _settle
from .state import utcnow

__all__ = [
    "DEFAULT_BASE_IMAGE",
    "DEFAULT_MAX_CONCURRENT_EXECS",
    "EXEC_IMAGE",
    "WAIT_BUDGET",
    "_EXEC_OUTPUT_CAP",
    "_IMAGE_WAIT",
    "_LIVE_STATES",
    "_PLATFORM",
    "ExecOutcome",
    "Proc",
    "SandboxManager",
    "_Live",
    "_conflict",
    "_settle",
    "logger",
]


class SandboxManager(_Booting):
    """Creates, runs, pauses, forks, stops and deletes sandboxes, and runs their processes."""

    # -- manager lifecycle ---------------------------------------------------------

    def recover(self) -> None:
        """After a restart: no environment of a previous run is alive; stop their records."""
        for row in self.state.list_sandboxes():
            if row["status"] == "deleting":
                self._purge(row)
            elif row["status"] in _LIVE_STATES:
                self._commit_leftover(row, "the local control plane restarted")

    def _commit_leftover(self, row: dict[str, Any], reason: str) -> None:
        """A session that ended without its server: keep what it wrote, as a checkpoint."""
        sid = row["id"]
        layers = json.loads(row["layers"])
        sessions = self.layers.sessions_of(sid)
        if sessions and sessions[-1].upper.exists():
            layer = self.layers.commit(sessions[-1].upper)
            layers = [layer, *layers]
            self.state.insert_checkpoint(layer, sid, layers, committed=True)
        for session in sessions:
            self.layers.remove_session(session)
        self.state.update_sandbox(
            sid,
            status="stopped",
            layers=layers,
            checkpoint=layers[0] if layers else None,
            previous_checkpoint=row["checkpoint"],
            exit_reason=reason,
            finished_at=utcnow(),
        )

    def begin_shutdown(self) -> None:
        """Close every process connection so the server can stop promptly."""
        self._closing = True
        for live in self._live.values():
            for close in list(live.sockets):
                close()

    async def shutdown(self) -> None:
        """Stop every live environment (their writes kept as checkpoints) and the runtime."""
        self._closing = True
        for live in self._live.values():
            if live.boot is not None and not live.boot.done():
                live.boot.cancel()
            for timer in (live.idle_timer, live.deadline_timer):
                if timer is not None:
                    timer.cancel()
        await anyio.to_thread.run_sync(self.runtime.shutdown, min(self.stop_grace, 5.0))
        for sid in list(self._live):
            row = self.state.get_sandbox(sid)
            if row is not None and row["status"] in _LIVE_STATES:
                self._commit_leftover(row, "the local control plane shut down")
