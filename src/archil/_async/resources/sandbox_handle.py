"""The sandbox handle, and the requests that answer with sandboxes.

:class:`AsyncSandbox` adds to :class:`AsyncSandboxLifecycle` (its record and
lifecycle) forking and the processes that run in it. The create, fork and
list requests that make handles from the control plane's answers, shared with
``client.sandboxes``, are here too.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Mapping
from typing import Any

from typing_extensions import Unpack

from ..._compat import afinish, asleep
from ..._errors import (
    APIConnectionError,
    APIStatusError,
    ArchilError,
    ConflictError,
    NotFoundError,
)
from ..._models import (
    SANDBOX_DELETABLE_STATES,
    SANDBOX_INACTIVE_STATES,
    ForkSandboxRequest,
    SandboxConnection,
    SandboxData,
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
from .sandbox_lifecycle import AsyncSandboxLifecycle
from .sandbox_support import (
    _check_process_id,
    _describe,
    _long_poll,
    _pause_before_retry,
    _process_error,
    _protocol_error,
    generated_name,
    logger,
)

__all__ = ["AsyncSandbox"]

_INTERRUPTED_CREATE_LOOKUPS = 5
"""Lookups, 0.2 s apart, for the sandbox of a create that was interrupted in flight."""


async def discard_sandbox(sandbox: AsyncSandbox) -> None:
    """Stop (unless it has ended) and delete a sandbox, best effort: one already gone is
    fine, another failure is logged, never raised.

    It goes on if its caller is cancelled meanwhile, and raises the cancellation
    after (see :func:`afinish`).
    """
    await afinish(functools.partial(_discard, sandbox))


async def _discard(sandbox: AsyncSandbox) -> None:
    try:
        if sandbox.status not in SANDBOX_DELETABLE_STATES:
            await sandbox.stop(wait=True)
        await sandbox.delete()
    except NotFoundError:
        pass
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
    await afinish(functools.partial(_discard_found, transport, name))


async def _discard_found(transport: AsyncTransport, name: str) -> None:
    try:
        for _ in range(_INTERRUPTED_CREATE_LOOKUPS):
            found = await _find(transport, name, max_retries=0)
            if found is not None:
                await discard_sandbox(found)
                return
            await asleep(0.2)
    except ArchilError as exc:
        logger.warning("could not remove sandbox %s after an interrupt: %s", name, _describe(exc))


class AsyncSandbox(AsyncSandboxLifecycle):
    """A handle on one sandbox: its last known record (``data``) and what can be done with it.

    Lifecycle methods update the handle in place and return it. ``repr`` shows
    the id, the name and the status.
    """

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
