"""A warm container: one sandbox holding an instance of an ``@app.cls`` class.

The sandbox runs :data:`~archil._callproto.CLS_BOOTSTRAP`, which builds the
instance and runs its ``enter`` methods once, then serves method calls: the
caller writes a call's input to the disk, names its directory on the process's
standard input, follows the output (printing it) until the call's marker, and
reads the result from the disk. Calls are served one at a time: the caller
serializes :meth:`AsyncWarmContainer.call`.
"""

from __future__ import annotations

import logging
from typing import Any

from .._callproto import (
    CallPaths,
    FunctionSpec,
    OutputTail,
    call_marker,
    cls_bootstrap_command,
    decode_result,
    encode_method_call,
)
from .._errors import ArchilError, ContainerError, FunctionTimeoutError
from .launcher import AsyncLauncher
from .resources.sandbox_handle import discard_sandbox
from .resources.sandboxes import AsyncProcess, AsyncSandbox

__all__ = ["AsyncWarmContainer"]

log = logging.getLogger("archil")

_POLL = 0.5


class AsyncWarmContainer:
    """A sandbox running one instance of a class; :meth:`call` runs a method in it."""

    def __init__(
        self, launcher: AsyncLauncher, spec: FunctionSpec, payload: bytes, what: str
    ) -> None:
        self._launcher = launcher
        self._client = launcher._client
        self._spec = spec
        self._payload = payload
        self._what = what
        self._sandbox: AsyncSandbox | None = None
        self._process: AsyncProcess | None = None
        self._init = CallPaths.new()
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
        """Start the sandbox, build the instance and run its ``enter`` methods.

        The ``enter`` methods' error, if they raise, is raised here and the
        sandbox is deleted.
        """
        launcher, spec, disk = self._launcher, self._spec, self._spec.disk_id
        lib = await launcher._cloudpickle(disk)
        await self._client.objects.put(disk, self._init.input_key, self._payload)
        try:
            self._sandbox = await launcher._startup(spec, self._init.call_id[:20])
            self._process = await self._sandbox.run(
                cls_bootstrap_command(self._init),
                env=spec.process_env(lib),
                cwd=spec.cwd,
                collect_output=False,
            )
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
        process = self._process
        assert process is not None
        disk = self._spec.disk_id
        paths = CallPaths.new()
        await self._client.objects.put(
            disk, paths.input_key, encode_method_call(method, args, kwargs)
        )
        self.calls += 1
        try:
            await process.send_input(paths.container_dir + "\n")
            deadline = None
            if self._spec.timeout is not None:
                deadline = self._client._transport.clock() + self._spec.timeout
            data = await self._result(paths, deadline, f"{self._what}.{method}")
        except BaseException:
            await self.close()
            raise
        finally:
            await self._launcher._remove_keys(disk, (paths.input_key, paths.output_key))
        return decode_result(data)

    async def _result(self, paths: CallPaths, deadline: float | None, what: str) -> bytes:
        """Follow the output to the call's marker, then read its result (still pickled)."""
        process = self._process
        sandbox = self._sandbox
        assert process is not None and sandbox is not None
        marker = call_marker(paths.call_id)
        printer = self._launcher._printer_for(self._spec)
        tail = OutputTail()
        clock = self._client._transport.clock
        done = False
        while not done and process.result is None:
            self._launcher._check_abort()
            idle = _POLL
            if deadline is not None:
                left = deadline - clock()
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
                if out.stream == "stdout":
                    data, done = self._scan(data, marker)
                tail.feed(data)
                if printer is not None and data:
                    printer.write(out.stream, data)
                if done:
                    break
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
        """Stop the container and delete its sandbox (best effort; closing twice does nothing)."""
        process, self._process = self._process, None
        sandbox, self._sandbox = self._sandbox, None
        if process is not None:
            try:
                await process.close()
            except Exception as exc:
                log.debug("closing the process of %s: %s", self._what, exc)
        if sandbox is not None:
            await discard_sandbox(sandbox)
        await self._launcher._remove_keys(
            self._spec.disk_id, (self._init.input_key, self._init.output_key)
        )
