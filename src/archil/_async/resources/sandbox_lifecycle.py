"""The record of one sandbox and its lifecycle: the base of the sandbox handle.

:class:`AsyncSandboxLifecycle` holds a sandbox's last known record and what
changes its state (refresh, start, stop, pause, resume, delete, timeouts) or
its exposed ports. :class:`AsyncSandbox` builds on it with forks and
processes.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

from typing_extensions import Self, Unpack

from ..._errors import SandboxError
from ..._models import (
    SandboxData,
    SandboxEndpoint,
    SandboxMount,
    SandboxPort,
    SandboxState,
    SandboxTimeoutRequest,
    StartSandboxRequest,
    _check_port,
)
from ..._wire import RequestOptions, items_decoder, parse_model, query
from .._transport import AsyncTransport
from .sandbox_support import (
    _NOT_PICKLABLE,
    FIRST_POLL_INTERVAL,
    MAX_POLL_INTERVAL,
    _long_poll,
    _mount_list,
    sandbox_path,
)

__all__ = ["AsyncSandboxLifecycle"]


class AsyncSandboxLifecycle:
    """A sandbox's last known record (``data``), its lifecycle and its ports.

    Lifecycle methods update the handle in place and return it.
    """

    def __init__(self, transport: AsyncTransport, data: SandboxData) -> None:
        self._transport = transport
        self.data = data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, name={self.name!r}, status={self.status!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError(_NOT_PICKLABLE.format("a sandbox handle"))

    # -- the record ----------------------------------------------------------------

    @property
    def id(self) -> str:
        """The sandbox's id (a UUID)."""
        return self.data.sandbox_id

    @property
    def name(self) -> str:
        """Its name, unique within the account."""
        return self.data.name

    @property
    def status(self) -> SandboxState:
        """Its state when last seen (``refresh()`` asks again)."""
        return self.data.status

    @property
    def checkpoint(self) -> str | None:
        """The disk checkpoint its current session leaves behind (while pausing, paused, stopped)."""
        return self.data.checkpoint

    @property
    def mounts(self) -> builtins.list[SandboxMount]:
        """The disks mounted in it."""
        return list(self.data.mounts)

    @property
    def base_image(self) -> str:
        """The OCI reference it was created from (empty for one created from an ``image_id``)."""
        return self.data.base_image

    @property
    def image_digest(self) -> str | None:
        """The digest of the image it boots, when known."""
        return self.data.image_digest

    @property
    def exit_reason(self) -> str | None:
        """Why it stopped or failed, when the control plane said."""
        return self.data.exit_reason

    @property
    def vcpu_count(self) -> int:
        """Its virtual CPUs."""
        return self.data.vcpu_count

    @property
    def mem_size_mib(self) -> int:
        """Its memory, in MiB."""
        return self.data.mem_size_mib

    @property
    def max_ttl_seconds(self) -> int:
        """The lifetime budget of each session."""
        return self.data.max_ttl_seconds

    @property
    def idle_ttl_seconds(self) -> int:
        """Seconds without an attached process connection before it pauses (0: never)."""
        return self.data.idle_ttl_seconds

    @property
    def max_concurrent_execs(self) -> int:
        """How many process connections may be attached at once."""
        return self.data.max_concurrent_execs

    @property
    def endpoints(self) -> builtins.list[SandboxEndpoint]:
        """Hostnames its services publish."""
        return list(self.data.endpoints)

    @property
    def created_at(self) -> datetime:
        """When it was created."""
        return self.data.created_at

    @property
    def running_at(self) -> datetime | None:
        """When its current session started running."""
        return self.data.running_at

    @property
    def finished_at(self) -> datetime | None:
        """When it last stopped or failed."""
        return self.data.finished_at

    # -- lifecycle -------------------------------------------------------------

    def _path(self, *rest: str) -> str:
        return sandbox_path(self.id, *rest)

    def _adopt(self, data: Any, status_code: int) -> None:
        self.data = parse_model(SandboxData, data, status_code)

    async def _action(
        self,
        action: str,
        *,
        wait: bool | None = None,
        json: Any = None,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> int:
        """POST ``.../{action}``, adopt the record it answers, and return the HTTP status."""
        transport = self._transport
        envelope = await transport.request_json(
            "POST",
            self._path(action),
            params=None if wait is None else query(wait=wait),
            json=json,
            timeout=_long_poll(transport, timeout, bool(wait)),
            max_retries=max_retries,
        )
        self._adopt(envelope.data, envelope.status_code)
        return envelope.status_code

    async def refresh(self, **options: Unpack[RequestOptions]) -> Self:
        """Read the sandbox's record again."""
        envelope = await self._transport.request_json("GET", self._path(), **options)
        self._adopt(envelope.data, envelope.status_code)
        return self

    async def _poll_while(self, states: frozenset[str]) -> None:
        interval = FIRST_POLL_INTERVAL
        while self.data.status in states:
            await self._transport.sleep(interval)
            interval = min(interval * 2, MAX_POLL_INTERVAL)
            await self.refresh()

    async def _wait_started(self) -> None:
        await self._poll_while(frozenset({"pending"}))
        if self.data.status != "running":
            raise self._error("running")

    def _error(self, wanted: str) -> SandboxError:
        reason = self.data.exit_reason
        detail = f": {reason}" if reason else ""
        return SandboxError(
            f"sandbox {self.id} ({self.name}) is {self.data.status} instead of {wanted}{detail}",
            sandbox_id=self.id,
            status=self.data.status,
            exit_reason=reason,
        )

    async def start(
        self,
        mounts: Sequence[SandboxMount | Mapping[str, Any]] | None = None,
        wait: bool = True,
        **options: Unpack[RequestOptions],
    ) -> Self:
        """Start a stopped sandbox; ``mounts`` replaces its disk mounts for this and later sessions.

        Raises:
            SandboxError: with ``wait=True``, it stopped or failed instead of running.
        """
        body = None
        if mounts is not None:
            body = StartSandboxRequest(mounts=_mount_list(mounts)).to_wire()
        await self._action("start", wait=wait, json=body, **options)
        if wait:
            await self._wait_started()
        return self

    async def stop(self, wait: bool = True, **options: Unpack[RequestOptions]) -> Self:
        """Stop the sandbox (every process ends); with ``wait=True``, until it is no longer stopping."""
        await self._action("stop", **options)
        if wait:
            await self._poll_while(frozenset({"stopping"}))
        return self

    async def pause(self, wait: bool = True, **options: Unpack[RequestOptions]) -> Self:
        """Pause the sandbox, keeping a checkpoint of it (see :attr:`checkpoint`).

        Raises:
            SandboxError: with ``wait=True``, it left ``pausing`` without reaching ``paused``.
        """
        await self._action("pause", **options)
        if wait:
            await self._poll_while(frozenset({"pausing"}))
            if self.data.status != "paused":
                raise self._error("paused")
        return self

    async def resume(self, wait: bool = True, **options: Unpack[RequestOptions]) -> Self:
        """Resume a paused sandbox; with ``wait=True``, until it runs.

        Raises:
            SandboxError: with ``wait=True``, it stopped or failed instead of running.
        """
        await self._action("resume", wait=wait, **options)
        if wait:
            await self._wait_started()
        return self

    async def delete(self, **options: Unpack[RequestOptions]) -> None:
        """Delete the sandbox (stopped, exited or failed; stop it first otherwise)."""
        await self._transport.request_json("DELETE", self._path(), **options)

    async def set_timeout(
        self,
        timeout: int | None = None,
        idle_ttl_seconds: int | None = None,
        *,
        max_retries: int | None = None,
    ) -> Self:
        """Move the deadline to ``timeout`` seconds from now and/or change the idle TTL.

        Raises:
            ValueError: neither is given, or one is out of range (before anything is sent).
        """
        request = SandboxTimeoutRequest(timeout=timeout, idle_ttl_seconds=idle_ttl_seconds)
        envelope = await self._transport.request_json(
            "POST", self._path("timeout"), json=request.to_wire(), max_retries=max_retries
        )
        self._adopt(envelope.data, envelope.status_code)
        return self

    # -- ports -------------------------------------------------------------------

    async def expose_port(self, port: int, **options: Unpack[RequestOptions]) -> SandboxPort:
        """Expose TCP ``port`` (1-65535) publicly and return it with its hostname."""
        path = self._path("ports", str(_check_port(port, "port")))
        envelope = await self._transport.request_json("PUT", path, **options)
        return parse_model(SandboxPort, envelope.data, envelope.status_code)

    async def list_ports(self, **options: Unpack[RequestOptions]) -> builtins.list[SandboxPort]:
        """The ports exposed explicitly (services' own are in :attr:`endpoints`)."""
        envelope = await self._transport.request_json("GET", self._path("ports"), **options)
        return items_decoder(SandboxPort, "ports")(envelope.data)

    async def unexpose_port(self, port: int, **options: Unpack[RequestOptions]) -> None:
        """Stop exposing ``port``."""
        path = self._path("ports", str(_check_port(port, "port")))
        await self._transport.request_json("DELETE", path, **options)
