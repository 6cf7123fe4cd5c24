"""A warm container: one sandbox whose process serves calls, one at a time.

For an ``@app.cls`` class the sandbox runs :data:`~archil._callproto.CLS_BOOTSTRAP`,
which builds the instance and runs its ``enter`` methods once, then serves method
calls. For a ``map`` it runs :data:`~archil._callproto.WORKER_BOOTSTRAP`, which
loads the function once and runs it on each input. Either way the caller writes a
call's input to the disk, names its directory on the process's standard input,
follows the output (printing it) until the call's marker, and reads the result from
the disk. A dropped connection may lose the line, so it is sent again on each new
connection; the process skips a call it has already taken. The caller serializes
the calls (:meth:`AsyncWarmContainer.call`, :meth:`AsyncWarmContainer.serve`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from .._callproto import (
    CallPaths,
    FunctionSpec,
    LogPrinter,
    OutputTail,
    call_marker,
    cls_bootstrap_command,
    decode_result,
    encode_method_call,
    worker_command,
)
from .._compat import afinish
from .._errors import (
    APIConnectionError,
    ArchilError,
    ConflictError,
    ContainerError,
    FunctionTimeoutError,
    SandboxError,
)
from .launcher import AsyncLauncher
from .resources.sandbox_handle import discard_sandbox
from .resources.sandboxes import AsyncProcess, AsyncSandbox

__all__ = ["AsyncWarmContainer"]

log = logging.getLogger("archil")

_POLL = 0.5


class AsyncWarmContainer:
    """A sandbox running one instance of a class (:meth:`call` runs a method in it), or
    a ``map``'s function (:meth:`serve` runs it on an input).

    ``payload`` is the class's (see :func:`~archil._callproto.encode_instance`); for a
    ``map``'s worker it is None and ``function`` names the call directory that holds
    the function's pickle (see :func:`~archil._callproto.encode_function`).
    """

    def __init__(
        self,
        launcher: AsyncLauncher,
        spec: FunctionSpec,
        payload: bytes | None,
        what: str,
        *,
        function: CallPaths | None = None,
    ) -> None:
        if (payload is None) == (function is None):
            raise ValueError("a warm container runs either a class (payload) or a function")
        self._launcher = launcher
        self._client = launcher._client
        self._spec = spec
        self._payload = payload
        self._what = what
        self._sandbox: AsyncSandbox | None = None
        self._process: AsyncProcess | None = None
        self._init = CallPaths.new()
        self._command = (
            worker_command(function) if function is not None else cls_bootstrap_command(self._init)
        )
        self._pending = b""
        self.calls = 0

    @property
    def alive(self) -> bool:
        """True while the container runs and can take calls."""
        return self._process is not None and self._process.result is None

    @property
    def sandbox_id(self) -> str | None:
        """The sandbox's id, once started."""
        return None if self._sandbox is None else self._sandbox.id

    async def start(self) -> None:
        """Start the sandbox and its process; for a class, build the instance and run its
        ``enter`` methods.

        The ``enter`` methods' error, if they raise, is raised here; a sandbox that stops
        before its process starts raises :class:`~archil.SandboxError`. Either way the
        sandbox is deleted.
        """
        launcher, spec, disk = self._launcher, self._spec, self._spec.disk_id
        lib = await launcher._cloudpickle(disk)
        if self._payload is not None:
            await self._client.objects.put(disk, self._init.input_key, self._payload)
        try:
            self._sandbox = await launcher._startup(spec, self._init.call_id[:20])
            try:
                self._process = await self._sandbox.run(
                    self._command, env=spec.process_env(lib), cwd=spec.cwd, collect_output=False
                )
            except ConflictError as exc:
                raise SandboxError.stopped(
                    self._sandbox.id, "before its process started", exc
                ) from exc
            if self._payload is not None:
                decode_result(await self._result(self._init, None, f"{self._what} (starting)"))
        except BaseException:
            await self.close()
            raise

    async def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``method(*args, **kwargs)`` on the instance and return its value (or raise).

        When the call goes past the class's ``timeout``, or is interrupted, or the
        container dies, the container is closed (the next call starts a new one); an
        exception the method raised leaves it warm.
        """
        if not self.alive:
            raise ArchilError(f"the warm container of {self._what} is closed")
        disk = self._spec.disk_id
        paths = CallPaths.new()
        await self._client.objects.put(
            disk, paths.input_key, encode_method_call(method, args, kwargs)
        )
        try:
            data = await self.serve(paths, f"{self._what}.{method}")
        finally:
            await self._launcher._remove_keys(disk, paths.files)
        return decode_result(data)

    async def serve(self, paths: CallPaths, what: str) -> bytes:
        """Run the call whose input is on the disk at ``paths``; its result, still pickled.

        The ``timeout`` of the spec counts from here. Past it, or when interrupted,
        or when the container dies or its sandbox stops, the container is closed
        and the error raised (:class:`~archil.FunctionTimeoutError`,
        :class:`~archil.ContainerError`, :class:`~archil.SandboxError`).
        """
        if not self.alive:
            raise ArchilError(f"the warm container of {self._what} is closed")
        process = self._process
        assert process is not None
        self.calls += 1
        try:
            deadline = None
            if self._spec.timeout is not None:
                deadline = self._client._transport.clock() + self._spec.timeout
            return await self._result(paths, deadline, what, handover=paths.container_dir + "\n")
        except BaseException:
            await self.close()
            raise

    async def _result(
        self, paths: CallPaths, deadline: float | None, what: str, *, handover: str | None = None
    ) -> bytes:
        """Follow the output to the call's marker, then read its result (still pickled).

        ``handover`` (the line naming the call) is sent first, and again after each
        new connection, which a dropped one may have lost it to.
        """
        process = self._process
        sandbox = self._sandbox
        assert process is not None and sandbox is not None
        marker = call_marker(paths.call_id)
        printer = self._launcher._printer_for(self._spec)
        tail = OutputTail()
        done = False
        attachments = -1
        try:
            while not done and process.result is None:
                if handover is not None and process.attachments != attachments:
                    attachments = process.attachments
                    await self._hand_over(process, handover)
                done = await self._follow(process, sandbox, marker, deadline, what, tail, printer)
        except ConflictError as exc:
            raise SandboxError.stopped(sandbox.id, f"while {what} ran", exc) from exc
        if not done:
            result = process.result
            assert result is not None
            raise ContainerError(
                f"{what}: the warm container {sandbox.id} ended ({result.status}, exit code "
                f"{result.exit_code})",
                container_id=sandbox.id,
                exit_code=result.exit_code,
                logs=self._spec.redact(tail.text()),
            )
        return await self._client.objects.get(self._spec.disk_id, paths.output_key)

    @staticmethod
    async def _hand_over(process: AsyncProcess, line: str) -> None:
        try:
            await process.send_input(line)
        except APIConnectionError as exc:
            # It may have arrived; it is sent again once the process is attached again.
            log.debug("handing a call to process %s: %s", process.id, exc)

    async def _follow(
        self,
        process: AsyncProcess,
        sandbox: AsyncSandbox,
        marker: bytes,
        deadline: float | None,
        what: str,
        tail: OutputTail,
        printer: LogPrinter | None,
    ) -> bool:
        """Follow the output for up to half a second; True once the call's marker is seen."""
        self._launcher._check_abort()
        idle = _POLL
        if deadline is not None:
            left = deadline - self._client._transport.clock()
            if left <= 0:
                raise FunctionTimeoutError(
                    f"{what} went past its timeout={self._spec.timeout} s; its warm "
                    f"container {sandbox.id} was stopped",
                    limit="timeout",
                    seconds=float(self._spec.timeout or 0),
                )
            idle = min(idle, left)
        async for out in process.available(idle):
            data = out.data
            done = False
            if out.stream == "stdout":
                data, done = self._scan(data, marker)
            tail.feed(data)
            if printer is not None and data:
                printer.write(out.stream, data)
            if done:
                return True
        return False

    def _scan(self, data: bytes, marker: bytes) -> tuple[bytes, bool]:
        """Split stdout at the call's marker: the output to show, and whether it was seen."""
        buffer = self._pending + data
        self._pending = b""
        at = buffer.find(marker)
        if at >= 0:
            self._pending = buffer[at + len(marker) :]
            return buffer[:at], True
        start = buffer.rfind(b"\x1e")
        if start >= 0 and marker.startswith(buffer[start:]):
            self._pending = buffer[start:]
            return buffer[:start], False
        return buffer, False

    async def close(self) -> None:
        """Stop the container and delete its sandbox (best effort; closing twice does nothing).

        It goes on if its caller is cancelled meanwhile (see :func:`~archil._compat.afinish`).
        """
        process, self._process = self._process, None
        sandbox, self._sandbox = self._sandbox, None
        steps: list[Callable[[], Any]] = []
        if process is not None:
            steps.append(functools.partial(self._detach, process))
        if sandbox is not None:
            steps.append(functools.partial(discard_sandbox, sandbox))
        if self._payload is not None:
            keys = self._init.files
            steps.append(functools.partial(self._launcher._remove_keys, self._spec.disk_id, keys))
        await afinish(*steps)

    async def _detach(self, process: AsyncProcess) -> None:
        try:
            await process.close()
        except Exception as exc:
            log.debug("closing the process of %s: %s", self._what, exc)
