"""A sandbox's timeouts: ``max_ttl_seconds`` and ``idle_ttl_seconds``.

:class:`_Timers` arms a running session's deadline and its idle countdown (no
process connection attached), pauses the sandbox when one runs out (stops it
when the idle TTL runs out and the manager reaps idle sandboxes), and changes
both through the timeout endpoint.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from .._models import SandboxTimeoutRequest
from .errors import ApiError
from .sandboxes_live import _conflict, logger
from .sandboxes_stop import _Stopping

__all__ = ["_Timers"]


class _Timers(_Stopping):
    """Arm, fire and change a sandbox's max and idle TTLs."""

    def _arm_deadline(self, sid: str, seconds: int, *, keep: bool = False) -> None:
        loop = self._loop
        live = self._live_of(sid)
        if loop is None:
            return
        if live.deadline_timer is not None:
            live.deadline_timer.cancel()
        now = time.monotonic()
        if not keep or live.deadline is None:
            live.deadline = now + seconds
        delay = max(0.0, live.deadline - now)
        live.deadline_timer = loop.call_later(delay, self._expire, sid, "max_ttl_seconds")

    def _arm_idle(self, sid: str) -> None:
        loop = self._loop
        live = self._live_of(sid)
        if live.idle_timer is not None:
            live.idle_timer.cancel()
            live.idle_timer = None
        row = self.state.get_sandbox(sid)
        if loop is None or row is None or row["status"] != "running" or live.attached:
            return
        idle = json.loads(row["spec"])["idle_ttl_seconds"]
        if idle > 0:
            live.idle_timer = loop.call_later(idle, self._expire, sid, "idle_ttl_seconds")

    def _expire(self, sid: str, which: str) -> None:
        live = self._live.get(sid)
        if live is None or (which == "idle_ttl_seconds" and live.attached):
            return
        self._background(self._pause_on_expiry(sid, which))

    async def _pause_on_expiry(self, sid: str, which: str) -> None:
        if which == "idle_ttl_seconds" and self.reap_idle:
            with contextlib.suppress(ApiError):
                row = await self.stop(sid)
                if row["status"] == "stopped":
                    logger.info("sandbox %s stopped: its %s ran out", sid, which)
                    self.state.update_sandbox(sid, exit_reason=f"{which} ran out")
            return
        with contextlib.suppress(ApiError):
            row = await self.pause(sid)
            if row["status"] == "paused":
                logger.info("sandbox %s paused: its %s ran out", sid, which)
                self.state.update_sandbox(sid, exit_reason=f"{which} ran out")

    async def set_timeout(self, sid: str, req: SandboxTimeoutRequest) -> dict[str, Any]:
        """Move the running session's deadline and/or change the idle TTL (kept for later sessions)."""
        live = self._live_of(sid)
        async with live.lock:
            row = self.get(sid)
            if row["status"] in ("pending", "stopping", "pausing"):
                raise _conflict(f"the sandbox is {row['status']}")
            spec = json.loads(row["spec"])
            if req.timeout is not None:
                spec["max_ttl_seconds"] = req.timeout
            if req.idle_ttl_seconds is not None:
                spec["idle_ttl_seconds"] = req.idle_ttl_seconds
            updated = self.state.update_sandbox(sid, spec=spec) or row
            if row["status"] == "running":
                if req.timeout is not None:
                    started = live.session_started or time.monotonic()
                    cap = started + 86_400 - time.monotonic()
                    live.deadline = time.monotonic() + min(req.timeout, max(cap, 0.0))
                    self._arm_deadline(sid, req.timeout, keep=True)
                if req.idle_ttl_seconds is not None:
                    self._arm_idle(sid)
            return updated
