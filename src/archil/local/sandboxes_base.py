"""The base of the sandbox manager: its state, records, ports and mount delegations.

:class:`_ManagerBase` holds what the manager is given (the SQLite state, the
runtime, the layer and image stores...), the in-memory side of each sandbox, the
live API's ``Sandbox`` record of a row, the exposed ports and the exclusive hold
a plain disk mount takes on its disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .._models import SandboxMount
from .errors import ApiError
from .images import ImageStore
from .layers import LayerStore
from .runtime import BootError, Runtime
from .sandboxes_live import _PLATFORM, DEFAULT_MAX_CONCURRENT_EXECS, _Live
from .spec import MountSpec
from .state import State

__all__ = ["_ManagerBase"]


class _ManagerBase:
    """The sandbox manager's state, its records and ports, and the disks its mounts hold."""

    def __init__(
        self,
        *,
        state: State,
        runtime: Runtime,
        layers: LayerStore,
        images: ImageStore,
        process_root: Path,
        resolve_mounts: Callable[[list[SandboxMount]], list[MountSpec]],
        stop_grace: float = 10.0,
        extensions: bool = True,
        reap_idle: bool = False,
    ) -> None:
        self.state = state
        self.runtime = runtime
        self.layers = layers
        self.images = images
        self.process_root = process_root
        self.resolve_mounts = resolve_mounts
        self.stop_grace = stop_grace
        self.extensions = extensions
        self.reap_idle = reap_idle
        self._live: dict[str, _Live] = {}
        self._exclusive: dict[str, str] = {}
        self._delegation_freed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the event loop that runtime callbacks hop to."""
        self._loop = loop

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the loop, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _live_of(self, sid: str) -> _Live:
        live = self._live.get(sid)
        if live is None:
            live = self._live[sid] = _Live()
        return live

    # -- records -------------------------------------------------------------------

    def get(self, sid: str) -> dict[str, Any]:
        """A sandbox row, or a 404."""
        row = self.state.get_sandbox(sid)
        if row is None or row["status"] == "deleted":
            raise ApiError(404, f"sandbox {sid!r} not found", "sandbox_not_found")
        return row

    def rows(self, filesystem: str | None = None) -> list[dict[str, Any]]:
        """Every sandbox, oldest first; with ``filesystem``, those that mount that disk."""
        rows = [r for r in self.state.list_sandboxes() if r["status"] != "deleted"]
        if filesystem is not None:
            rows = [r for r in rows if filesystem in json.loads(r["disks"])]
        return rows

    def wire(self, row: dict[str, Any]) -> dict[str, Any]:
        """The live API's ``Sandbox`` record of a row."""
        spec = json.loads(row["spec"])
        status = row["status"]
        data: dict[str, Any] = {
            "sandbox_id": row["id"],
            "name": row["name"],
            "status": status,
            "vcpu_count": spec["vcpu_count"],
            "mem_size_mib": spec["mem_size_mib"],
            "max_ttl_seconds": spec["max_ttl_seconds"],
            "idle_ttl_seconds": spec["idle_ttl_seconds"],
            "max_concurrent_execs": spec.get("max_concurrent_execs")
            or DEFAULT_MAX_CONCURRENT_EXECS,
            "base_image": spec.get("base_image") or "",
            "created_at": row["created_at"],
            "last_active_at": row["last_active_at"],
            "platform": _PLATFORM,
            "endpoints": [],
            "enable_service_ingress": bool(spec.get("enable_service_ingress")),
            "mounts": spec.get("mounts") or [],
        }
        optional = {
            "image_digest": row["image_digest"],
            "running_at": row["running_at"],
            "finished_at": row["finished_at"],
            "exit_reason": row["exit_reason"],
        }
        if status in ("pausing", "paused", "stopping", "stopped"):
            optional["checkpoint"] = row["checkpoint"]
        if self.extensions:
            optional["kernel_variant"] = spec.get("kernel_variant")
        data.update({k: v for k, v in optional.items() if v is not None})
        return data

    # -- ports ---------------------------------------------------------------------------

    def _expose(self, sid: str, port: int) -> bool:
        row = self.get(sid)
        ports: list[int] = json.loads(row["ports"])
        if port in ports:
            return False
        self.state.update_sandbox(sid, ports=sorted([*ports, port]))
        return True

    def expose(self, sid: str, port: int) -> tuple[dict[str, Any], bool]:
        """Expose ``port``; the port record and whether it is new."""
        created = self._expose(sid, port)
        return self.port_wire(port), created

    def ports(self, sid: str) -> list[dict[str, Any]]:
        """The explicitly exposed ports."""
        return [self.port_wire(p) for p in json.loads(self.get(sid)["ports"])]

    def unexpose(self, sid: str, port: int) -> None:
        """Stop exposing ``port`` (a no-op for a port that is not exposed)."""
        ports = [p for p in json.loads(self.get(sid)["ports"]) if p != port]
        self.state.update_sandbox(sid, ports=ports)

    @staticmethod
    def port_wire(port: int) -> dict[str, Any]:
        """A port record: sandboxes share this machine's network, so it is reachable here."""
        return {"port": port, "hostname": f"127.0.0.1:{port}"}

    # -- mount delegations ---------------------------------------------------------------

    async def _take_delegations(self, sid: str, mounts: list[SandboxMount]) -> None:
        live = self._live_of(sid)
        for mount in mounts:
            if mount.read_only or mount.conditional:
                continue
            deadline = time.monotonic() + (mount.queue_ms or 0) / 1000.0
            while self._exclusive.get(mount.disk_id) not in (None, sid):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = self._exclusive[mount.disk_id]
                    self._release_delegations(sid)
                    raise BootError(
                        f"disk {mount.disk_id} is mounted exclusively by sandbox {holder}; "
                        "use a conditional or read-only mount to share it, or queue_ms to wait"
                    )
                self._delegation_freed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._delegation_freed.wait(), remaining)
            self._exclusive[mount.disk_id] = sid
            live.delegations.add(mount.disk_id)

    def _release_delegations(self, sid: str) -> None:
        live = self._live_of(sid)
        for disk_id in live.delegations:
            if self._exclusive.get(disk_id) == sid:
                del self._exclusive[disk_id]
        live.delegations.clear()
        self._delegation_freed.set()
