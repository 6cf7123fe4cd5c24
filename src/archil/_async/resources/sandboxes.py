"""``client.sandboxes``: sandboxes, their handles, and the processes that run in them.

A sandbox is a long-lived isolated machine with disks mounted in it. Processes
run in it and are driven over the process WebSocket protocol
(``docs/process-protocol.md``): :meth:`AsyncSandbox.run` starts one and hands
back an :class:`AsyncProcess` that streams its output, survives a dropped
connection by attaching again from the offset it reached, and ends with a
:class:`~archil.ProcessResult`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from typing_extensions import Self, Unpack

from ..._compat import asleep
from ..._errors import (
    APIConnectionError,
    APIStatusError,
    ArchilError,
    ConflictError,
    SandboxError,
)
from ..._models import (
    DEFAULT_IDLE_TTL_SECONDS,
    DEFAULT_SANDBOX_MEM_MIB,
    MAX_TTL_SECONDS,
    SANDBOX_INACTIVE_STATES,
    CreateSandboxRequest,
    ForkSandboxRequest,
    KernelVariant,
    SandboxConnection,
    SandboxData,
    SandboxEndpoint,
    SandboxMount,
    SandboxPort,
    SandboxState,
    SandboxTimeoutRequest,
    StartSandboxRequest,
    _check_port,
    as_dict,
    as_list,
    validate_disk_id,
)
from ..._process import (
    OutputCursor,
    ProcessResult,
    ProtocolError,
    attach_message,
    kill_message,
    parse_event,
    resize_message,
    start_message,
)
from ..._wire import RequestOptions, items_decoder, parse_model, query
from .._transport import AsyncTransport
from .processes import AsyncProcess
from .sandbox_support import (
    _NOT_PICKLABLE,
    FIRST_POLL_INTERVAL,
    MAX_POLL_INTERVAL,
    _check_process_id,
    _describe,
    _long_poll,
    _mount_list,
    _pause_before_retry,
    _process_error,
    _protocol_error,
    generated_name,
    logger,
    sandbox_path,
)

if TYPE_CHECKING:
    pass

__all__ = ["AsyncProcess", "AsyncSandbox", "AsyncSandboxes"]


class AsyncSandboxes:
    """Sandboxes: create, look up and list them (``client.sandboxes``)."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    def __reduce__(self) -> NoReturn:
        raise TypeError(_NOT_PICKLABLE.format("a sandboxes resource"))

    async def create(
        self,
        *,
        name: str | None = None,
        vcpu_count: int = 1,
        mem_size_mib: int = DEFAULT_SANDBOX_MEM_MIB,
        base_image: str | None = None,
        image_id: str | None = None,
        env: Mapping[str, str] | None = None,
        ports: Sequence[int] | None = None,
        network: Mapping[str, Any] | None = None,
        mounts: Sequence[SandboxMount | Mapping[str, Any]] | None = None,
        max_ttl_seconds: int = MAX_TTL_SECONDS,
        idle_ttl_seconds: int = DEFAULT_IDLE_TTL_SECONDS,
        max_concurrent_execs: int | None = None,
        kernel_variant: KernelVariant | None = None,
        wait: bool = True,
        **options: Unpack[RequestOptions],
    ) -> AsyncSandbox:
        """Create a sandbox and (with ``wait=True``) wait until it runs.

        Args:
            name: unique within the account; one (``sbx-`` + 16 hex) is made when omitted.
            vcpu_count, mem_size_mib: its resources (1 vCPU and 2048 MiB by default).
            base_image: a public OCI reference; ``image_id``: an image from
                :meth:`AsyncImages.build`. Give at most one.
            env: environment variables of every process (values are never logged).
            ports: TCP ports to expose when it starts.
            network: the network policy, as the control plane spells it.
            mounts: disks to mount (:class:`SandboxMount` or dicts); a sole
                mount without ``path`` lands at ``/mnt/archil``.
            max_ttl_seconds, idle_ttl_seconds: its lifetime and idle budgets.
            max_concurrent_execs: how many process connections may attach at once.
            kernel_variant: an archil extension, rejected by control planes without it.
            wait: wait until the sandbox is ``running``.

        Raises:
            ValueError: a bad argument (a pydantic ``ValidationError`` naming the
                field), before anything is sent.
            SandboxError: with ``wait=True``, the sandbox stopped or failed
                instead of starting (its ``status`` and ``exit_reason`` say why).
        """
        request = CreateSandboxRequest(
            name=name,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            base_image=base_image,
            image_id=image_id,
            env=as_dict(env, "env"),
            ports=as_list(ports, "ports"),
            network=as_dict(network, "network"),
            mounts=_mount_list(mounts),
            max_ttl_seconds=max_ttl_seconds,
            idle_ttl_seconds=idle_ttl_seconds,
            max_concurrent_execs=max_concurrent_execs,
            kernel_variant=kernel_variant,
        )
        return await self.create_from(request, wait=wait, **options)

    async def create_from(
        self,
        template: CreateSandboxRequest,
        *,
        wait: bool = True,
        unique_name: bool = False,
        **options: Unpack[RequestOptions],
    ) -> AsyncSandbox:
        """Create a sandbox from a validated request model (the declarative layer's template).

        A template without a ``name`` gets a generated one. If the control
        plane answers 409 for a generated name (an earlier attempt of this very
        call created it and its answer was lost), the sandbox of that name is
        returned instead, so a retry never makes a second sandbox even where
        idempotency keys are not honoured. ``unique_name=True`` says the
        template's own name was made for this call alone, and gets the same treatment.
        """
        if not isinstance(template, CreateSandboxRequest):
            raise TypeError(
                f"template must be a CreateSandboxRequest, not {type(template).__name__}"
            )
        generated = template.name is None or unique_name
        request = (
            template.model_copy(update={"name": generated_name()})
            if template.name is None
            else template
        )
        assert request.name is not None
        sandbox = await _create_or_find(
            self._transport,
            "/api/sandboxes",
            request.to_wire(),
            request.name,
            generated=generated,
            wait=wait,
            **options,
        )
        if request.kernel_variant is not None and sandbox.data.kernel_variant != (
            request.kernel_variant
        ):
            await _discard_quietly(sandbox)
            raise ArchilError(
                f"kernel_variant={request.kernel_variant!r} is an archil extension that this "
                "control plane does not offer (the sandbox API has no kernel variants); "
                "the sandbox it made was deleted"
            )
        if wait:
            await sandbox._wait_started()
        return sandbox

    async def get(self, sandbox_id: str, **options: Unpack[RequestOptions]) -> AsyncSandbox:
        """The sandbox ``sandbox_id`` (:class:`NotFoundError` if there is none)."""
        envelope = await self._transport.request_json("GET", sandbox_path(sandbox_id), **options)
        return AsyncSandbox(
            self._transport, parse_model(SandboxData, envelope.data, envelope.status_code)
        )

    async def list(
        self, *, disk_id: str | None = None, **options: Unpack[RequestOptions]
    ) -> builtins.list[AsyncSandbox]:
        """Every sandbox of the account, or only those that mount ``disk_id``."""
        if disk_id is not None:
            validate_disk_id(disk_id)
        return await _list(self._transport, disk_id, **options)

    async def find(self, name: str, **options: Unpack[RequestOptions]) -> AsyncSandbox | None:
        """The sandbox called ``name``, or ``None``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        return await _find(self._transport, name, **options)


_INTERRUPTED_CREATE_LOOKUPS = 5
"""Lookups, 0.2 s apart, for the sandbox of a create that was interrupted in flight."""


async def _discard_quietly(sandbox: AsyncSandbox) -> None:
    """Stop and delete a sandbox this call should not have made (best effort)."""
    try:
        await sandbox.stop(wait=True)
        await sandbox.delete()
    except ArchilError as exc:
        logger.warning("could not delete sandbox %s: %s", sandbox.id, _describe(exc))


async def _list(
    transport: AsyncTransport, disk_id: str | None, **options: Unpack[RequestOptions]
) -> builtins.list[AsyncSandbox]:
    envelope = await transport.request_json(
        "GET", "/api/sandboxes", params=query(filesystem=disk_id), **options
    )
    records = items_decoder(SandboxData, "sandboxes")(envelope.data)
    return [AsyncSandbox(transport, data) for data in records]


async def _find(
    transport: AsyncTransport, name: str, **options: Unpack[RequestOptions]
) -> AsyncSandbox | None:
    for sandbox in await _list(transport, None, **options):
        if sandbox.name == name:
            return sandbox
    return None


async def _create_or_find(
    transport: AsyncTransport,
    path: str,
    body: dict[str, Any],
    name: str,
    *,
    generated: bool,
    wait: bool,
    timeout: float | None = None,
    max_retries: int | None = None,
) -> AsyncSandbox:
    """POST a create or a fork; a 409 for a name this call generated finds that sandbox."""
    try:
        envelope = await transport.request_json(
            "POST",
            path,
            params=query(wait=wait),
            json=body,
            timeout=_long_poll(transport, timeout, wait),
            max_retries=max_retries,
        )
    except ConflictError:
        if not generated:
            raise
        found = (
            await _find(transport, name)
            if max_retries is None
            else await _find(transport, name, max_retries=max_retries)
        )
        if found is None:
            raise
        logger.info("sandbox %s already exists (an earlier attempt created it): using it", name)
        return found
    except BaseException as exc:
        if generated and not isinstance(exc, Exception):
            # Interrupted (Ctrl-C, a cancelled task) while the control plane may already
            # have made it: the name is this call's own, so what has it is ours to remove.
            await _discard_named(transport, name)
        raise
    return AsyncSandbox(transport, parse_model(SandboxData, envelope.data, envelope.status_code))


async def _discard_named(transport: AsyncTransport, name: str) -> None:
    """Stop and delete the sandbox called ``name`` once it shows up (best effort, ~1 s)."""
    try:
        for _ in range(_INTERRUPTED_CREATE_LOOKUPS):
            found = await _find(transport, name, max_retries=0)
            if found is not None:
                await _discard_quietly(found)
                return
            await asleep(0.2)
    except ArchilError as exc:
        logger.warning("could not remove sandbox %s after an interrupt: %s", name, _describe(exc))


class AsyncSandbox:
    """A handle on one sandbox: its last known record (``data``) and what can be done with it.

    Lifecycle methods update the handle in place and return it. ``repr`` shows
    the id, the name and the status.
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

    async def fork(
        self,
        name: str | None = None,
        checkpoint: str | None = None,
        wait: bool = True,
        *,
        unique_name: bool = False,
        **options: Unpack[RequestOptions],
    ) -> AsyncSandbox:
        """A new sandbox started from a checkpoint of this one.

        With ``checkpoint`` it forks that checkpoint and leaves this sandbox
        alone. Without, it forks the current state: this sandbox is paused
        (without waiting), its checkpoint is taken from the answer, the pause
        is waited for, the fork requested, and a sandbox that was live is
        resumed (best effort) as soon as the fork is accepted. Like a create,
        a fork always sends a name (a generated one by default) and finds the
        fork by that name after a 409 for a generated name (or for ``name``,
        with ``unique_name=True``: a name made for this call alone).

        Raises:
            SandboxError: with ``wait=True``, the fork did not start.
        """
        request = ForkSandboxRequest(name=name, checkpoint=checkpoint)
        generated = request.name is None or unique_name
        if request.name is None:
            request = request.model_copy(update={"name": generated_name()})
        assert request.name is not None
        live = False
        if checkpoint is not None:
            child = await self._fork(request, generated, wait, **options)
        else:
            child, live = await self._fork_current(request, generated, wait, **options)
        if wait:
            await child._wait_started()
            if live:
                try:
                    await self._poll_while(frozenset({"pending"}))
                except Exception as exc:
                    logger.warning(
                        "could not follow sandbox %s resuming: %s", self.id, _describe(exc)
                    )
        return child

    async def _fork(
        self,
        request: ForkSandboxRequest,
        generated: bool,
        wait: bool,
        **options: Unpack[RequestOptions],
    ) -> AsyncSandbox:
        assert request.name is not None
        return await _create_or_find(
            self._transport,
            self._path("fork"),
            request.to_wire(),
            request.name,
            generated=generated,
            wait=wait,
            **options,
        )

    async def _fork_current(
        self,
        request: ForkSandboxRequest,
        generated: bool,
        wait: bool,
        **options: Unpack[RequestOptions],
    ) -> tuple[AsyncSandbox, bool]:
        """Pause (if live), fork the checkpoint, resume; the child and whether it was live."""
        before = self.data.status
        try:
            answered = await self._action("pause", **options)
        except ConflictError:
            # An inactive sandbox (stopped, exited) may refuse a pause: fork it as it is.
            await self.refresh()
            if self.data.status not in SANDBOX_INACTIVE_STATES:
                raise
            answered = 200
        status = self.data.status
        live = status == "pausing" or (
            status == "paused" and (answered == 202 or before in ("running", "pending"))
        )
        checkpoint = self.data.checkpoint
        try:
            await self._poll_while(frozenset({"pausing"}))
            checkpoint = checkpoint or self.data.checkpoint
            if checkpoint is not None:
                request = request.model_copy(update={"checkpoint": checkpoint})
            # A source we paused is resumed once the fork is accepted, not after it boots.
            child = await self._fork(request, generated, wait and not live, **options)
        finally:
            if live:
                await self._resume_quietly()
        return child, live

    async def _resume_quietly(self) -> None:
        try:
            await self.resume(wait=False)
        except Exception as exc:
            logger.warning(
                "could not resume sandbox %s after forking it: %s", self.id, _describe(exc)
            )

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

    # -- processes ---------------------------------------------------------------

    async def connect(self, **options: Unpack[RequestOptions]) -> SandboxConnection:
        """A short-lived WebSocket URL for the process protocol (the sandbox must be running)."""
        envelope = await self._transport.request_json("POST", self._path("connections"), **options)
        return parse_model(SandboxConnection, envelope.data, envelope.status_code)

    async def run(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        terminal: bool | tuple[int, int] = False,
        timeout_seconds: int | None = None,
        collect_output: bool = True,
    ) -> AsyncProcess:
        """Start ``command`` (with ``/bin/sh -c``) and return it once it has started.

        Args:
            env: extra environment variables (never logged).
            cwd: its working directory.
            terminal: ``True`` or ``(cols, rows)`` to run it in a terminal.
            timeout_seconds: kill it after this long (status ``timed_out``).
            collect_output: keep its output as text for :attr:`ProcessResult.stdout`/``stderr``.

        Raises:
            ValueError: a bad argument, before anything is sent.
            ProcessError: the control plane refused to start it (``spawn_failed``, ...).
            APIConnectionError: the connection broke before the process was
                confirmed started (it may or may not be running).
        """
        message = start_message(
            command, terminal=terminal, env=env, cwd=cwd, timeout_seconds=timeout_seconds
        )
        process = AsyncProcess(self, "", OutputCursor(collect=collect_output))
        await process._open(message, "started", resend=False)
        return process

    async def exec(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        terminal: bool | tuple[int, int] = False,
        timeout_seconds: int | None = None,
        collect_output: bool = True,
    ) -> ProcessResult:
        """Run ``command`` to its end and return how it ended, with its output as text.

        A non-zero exit is not an error: look at ``result.exit_code`` (or ``result.ok``).
        Arguments and errors are those of :meth:`run`.
        """
        process = await self.run(
            command,
            env=env,
            cwd=cwd,
            terminal=terminal,
            timeout_seconds=timeout_seconds,
            collect_output=collect_output,
        )
        async with process:
            return await process.wait()

    async def attach(
        self, process_id: str, *, offset: int = 0, collect_output: bool = True
    ) -> AsyncProcess:
        """Follow a running or finished process from ``offset`` (bytes of output already seen).

        Raises:
            ProcessError: there is no such process (``process_not_found``).
        """
        _check_process_id(process_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        process = AsyncProcess(self, process_id, OutputCursor(offset, collect=collect_output))
        await process._open(attach_message(process_id, offset), "attached", resend=True)
        return process

    async def kill(self, process_id: str) -> None:
        """Kill a process (its status becomes ``cancelled``), on a control connection of its own."""
        await self._control(kill_message(_check_process_id(process_id)), "killed", process_id)

    async def resize(self, process_id: str, cols: int, rows: int) -> None:
        """Resize a terminal process's window, on a control connection of its own."""
        message = resize_message(_check_process_id(process_id), cols, rows)
        await self._control(message, "resized", process_id)

    async def _control(self, message: str, expected: str, process_id: str) -> None:
        """Send one control message on a fresh connection and expect exactly ``{"type": expected}``.

        The connection is retried within the client's budget (kill and resize may be repeated).
        """
        transport = self._transport
        failures = 0
        text: object = None
        while True:
            try:
                connection = await self.connect(max_retries=0)
                async with transport.websocket(connection.url) as ws:
                    await ws.send_text(message)
                    text = getattr(await ws.receive(), "data", None)
                break
            except (APIConnectionError, APIStatusError) as exc:
                failures = await _pause_before_retry(
                    transport, exc, failures, f"a control connection to sandbox {self.id}"
                )
        if not isinstance(text, str):
            raise _protocol_error(f"expected {expected!r}, got output", process_id)
        try:
            answer = parse_event(text)
        except ProtocolError as exc:
            raise _protocol_error(str(exc), process_id) from None
        if answer.get("type") == "error":
            raise _process_error(answer, process_id)
        if answer != {"type": expected}:
            raise _protocol_error(
                f"expected {{'type': {expected!r}}}, got {answer.get('type')!r}", process_id
            )
