"""The process handle: a process in a sandbox, followed over the process WebSocket.

:class:`AsyncProcess` speaks the process protocol (``docs/process-protocol.md``):
it streams the output, takes standard input, survives a dropped connection by
attaching again from the offset it reached, and ends with a
:class:`~archil.ProcessResult`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from typing_extensions import Self

from ..._compat import ADetached, aenter_detached, areceive_event
from ..._errors import APIConnectionError, APIStatusError, ProcessError
from ..._process import (
    OutputCursor,
    ProcessOutput,
    ProcessResult,
    ProtocolError,
    attach_message,
    close_stdin_message,
    input_frames,
    parse_event,
)
from .sandbox_support import (
    _NOT_PICKLABLE,
    RECONNECT_PROGRESS_SECONDS,
    _describe,
    _pause_before_retry,
    _process_error,
    _protocol_error,
)

if TYPE_CHECKING:
    from httpx_ws import AsyncWebSocketSession

    from .sandbox_handle import AsyncSandbox

__all__ = ["AsyncProcess"]


class AsyncProcess:
    """A process in a sandbox, followed over the process WebSocket.

    Iterate it for its :class:`~archil.ProcessOutput` pieces until it exits;
    :meth:`wait` drains what is left and returns the :class:`~archil.ProcessResult`
    (also kept in :attr:`result`). When the connection drops before the exit,
    the process is attached again from :attr:`cursor` (the bytes of output
    received), so nothing is lost or repeated; attempts are bounded by the
    client's ``max_retries``, reset whenever output arrives. Closing the handle
    (:meth:`close`, or leaving ``with``) detaches and leaves the process running;
    using it afterwards attaches again.
    """

    def __init__(self, sandbox: AsyncSandbox, process_id: str, output: OutputCursor) -> None:
        self._sandbox = sandbox
        self._transport = sandbox._transport
        self._id = process_id
        self._output = output
        self._result: ProcessResult | None = None
        self._socket: ADetached[AsyncWebSocketSession] | None = None
        self._failures = 0
        self._connected_at = 0.0
        self._stdin_closed = False
        self._attachments = 0

    def __repr__(self) -> str:
        status = "running" if self._result is None else self._result.status
        return (
            f"{type(self).__name__}(id={self._id!r}, sandbox_id={self._sandbox.id!r}, "
            f"status={status!r}, cursor={self._output.offset})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError(_NOT_PICKLABLE.format("a process handle"))

    @property
    def id(self) -> str:
        """The process's id (for :meth:`AsyncSandbox.attach`)."""
        return self._id

    @property
    def sandbox(self) -> AsyncSandbox:
        """The sandbox it runs in."""
        return self._sandbox

    @property
    def cursor(self) -> int:
        """How many bytes of output (both streams) have been received: where an attach resumes."""
        return self._output.offset

    @property
    def result(self) -> ProcessResult | None:
        """How the process ended, or ``None`` while it runs (until the ``exit`` event arrives)."""
        return self._result

    @property
    def attachments(self) -> int:
        """How many connections this handle has made to the process (a new one after each drop)."""
        return self._attachments

    @property
    def stdout(self) -> str:
        """The standard output received so far, as text (with ``collect_output=True``)."""
        return self._output.text(1)

    @property
    def stderr(self) -> str:
        """The standard error received so far, as text (with ``collect_output=True``)."""
        return self._output.text(2)

    # -- the connection ----------------------------------------------------------

    def _what(self) -> str:
        return f"process {self._id or '(starting)'} of sandbox {self._sandbox.id}"

    async def _open(self, message: str, expected: str, *, resend: bool) -> None:
        """Connect, send ``message`` and wait for its answer ``expected``.

        Failures before ``message`` is sent are always retried; after it, only
        when it may be sent again (``resend``: an attach, not a start).
        """
        transport = self._transport
        while True:
            try:
                connection = await self._sandbox.connect(max_retries=0)
                socket = await aenter_detached(transport.websocket(connection.url))
            except (APIConnectionError, APIStatusError) as exc:
                self._failures = await _pause_before_retry(
                    transport, exc, self._failures, self._what()
                )
                continue
            try:
                await socket.value.send_text(message)
                process_id = await self._first_answer(socket.value, expected)
            except BaseException as exc:
                await socket.aclose()
                if isinstance(exc, ProcessError) or not isinstance(exc, Exception):
                    raise
                if not resend:
                    raise APIConnectionError(
                        f"the connection to sandbox {self._sandbox.id} broke before the process "
                        f"was confirmed started ({_describe(exc)}); it may or may not be running"
                    ) from exc
                self._failures = await _pause_before_retry(
                    transport, exc, self._failures, self._what()
                )
                continue
            if self._id and process_id != self._id:
                await socket.aclose()
                raise _protocol_error(
                    f"asked to attach to process {self._id}, got {process_id}", self._id
                )
            self._id = process_id
            self._socket = socket
            self._connected_at = transport.clock()
            self._attachments += 1
            return

    async def _first_answer(self, ws: AsyncWebSocketSession, expected: str) -> str:
        event = await ws.receive()
        text = getattr(event, "data", None)
        if not isinstance(text, str):
            raise _protocol_error(f"expected {expected!r}, got output first", self._id)
        try:
            answer = parse_event(text)
        except ProtocolError as exc:
            raise _protocol_error(str(exc), self._id) from None
        kind = answer["type"]
        if kind == "error":
            raise _process_error(answer, self._id)
        if kind != expected:
            raise _protocol_error(f"expected {expected!r}, got {kind!r}", self._id)
        process_id = answer.get("process_id")
        if not isinstance(process_id, str) or not process_id:
            raise _protocol_error(f"{expected!r} without a process_id", self._id)
        return process_id

    async def _close_socket(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.aclose()

    async def _reattach(self) -> None:
        await self._open(attach_message(self._id, self._output.offset), "attached", resend=True)

    async def _lost(self, exc: BaseException) -> None:
        """The socket dropped before ``exit``: attach again from the cursor."""
        await self._close_socket()
        if self._transport.clock() - self._connected_at >= RECONNECT_PROGRESS_SECONDS:
            self._failures = 0
        self._failures = await _pause_before_retry(
            self._transport, exc, self._failures, self._what()
        )
        await self._reattach()

    async def _next(self) -> ProcessOutput | None:
        """Handle one event of the process's connection; the new output it carried, if any."""
        socket = self._socket
        if socket is None:
            await self._reattach()
            return None
        try:
            event = await socket.value.receive()
        except Exception as exc:
            await self._lost(exc)
            return None
        return await self._handle(event)

    async def _handle(self, event: Any) -> ProcessOutput | None:
        """One received event: an output frame's new bytes, or a control event handled."""
        data = getattr(event, "data", None)
        if isinstance(data, str):
            await self._on_message(data)
            return None
        if isinstance(data, (bytes, bytearray)):
            try:
                output = self._output.feed(bytes(data))
            except ProtocolError as exc:
                await self._close_socket()
                raise _protocol_error(str(exc), self._id) from None
            if output is not None:
                self._failures = 0
            return output
        return None

    async def _on_message(self, text: str) -> None:
        try:
            event = parse_event(text)
            kind = event["type"]
            if kind == "exit":
                self._result = self._output.result(self._id, event)
        except ProtocolError as exc:
            await self._close_socket()
            raise _protocol_error(str(exc), self._id) from None
        if kind == "exit":
            self._failures = 0
            self._stdin_closed = True
            await self._close_socket()
        elif kind == "error":
            await self._close_socket()
            raise _process_error(event, self._id)

    # -- output ------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[ProcessOutput]:
        return self._outputs()

    async def _outputs(self) -> AsyncIterator[ProcessOutput]:
        while self._result is None:
            output = await self._next()
            if output is not None:
                yield output

    def available(self, idle: float = 0.5) -> AsyncIterator[ProcessOutput]:
        """The output there is now: yields until the process exits or ``idle`` seconds pass quietly.

        For a process that has ended this is all of its output (from the cursor).
        """
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or idle <= 0:
            raise ValueError(f"idle must be a positive number of seconds, got {idle!r}")
        return self._available(float(idle))

    async def _available(self, idle: float) -> AsyncIterator[ProcessOutput]:
        while self._result is None:
            socket = self._socket
            if socket is None:
                await self._reattach()
                continue
            try:
                event = await areceive_event(socket.value, idle)
            except Exception as exc:
                await self._lost(exc)
                continue
            if event is None:
                return
            output = await self._handle(event)
            if output is not None:
                yield output

    async def wait(self) -> ProcessResult:
        """Read the rest of the output until the process exits; return how it ended.

        Raises:
            ProcessError: the protocol reported an error.
            APIConnectionError: the connection could not be restored within the retry budget.
        """
        while self._result is None:
            await self._next()
        return self._result

    # -- input and control -------------------------------------------------------

    def _check_input(self) -> None:
        if self._result is not None:
            raise ProcessError(f"process {self._id} has exited", process_id=self._id)
        if self._stdin_closed:
            raise ProcessError(
                f"the standard input of process {self._id} is closed", process_id=self._id
            )

    async def _send(self, payload: str | bytes) -> None:
        if self._socket is None:
            await self._reattach()
        socket = self._socket
        assert socket is not None
        try:
            if isinstance(payload, str):
                await socket.value.send_text(payload)
            else:
                await socket.value.send_bytes(payload)
        except Exception as exc:
            await self._close_socket()
            raise APIConnectionError(
                f"the connection to {self._what()} broke while sending to it "
                f"({_describe(exc)}); what was sent may not have arrived"
            ) from exc

    async def send_input(self, data: bytes | str) -> None:
        """Write ``data`` (text as UTF-8) to the process's standard input, in frames of at most 1 MiB.

        Raises:
            ProcessError: the process has exited or its input is closed.
            APIConnectionError: the connection broke while sending (not retried:
                the input may have arrived in part).
        """
        frames = list(input_frames(data))
        self._check_input()
        for frame in frames:
            await self._send(frame)

    async def close_stdin(self) -> None:
        """End the process's standard input (it reads end-of-file). Closing twice does nothing."""
        if self._stdin_closed:
            return
        self._check_input()
        await self._send(close_stdin_message())
        self._stdin_closed = True

    async def kill(self) -> None:
        """Kill the process (its status becomes ``cancelled``); nothing to do once it has exited."""
        if self._result is None:
            await self._sandbox.kill(self._id)

    async def resize(self, cols: int, rows: int) -> None:
        """Resize the process's terminal window."""
        await self._sandbox.resize(self._id, cols, rows)

    async def close(self) -> None:
        """Detach: close the connection and leave the process running."""
        await self._close_socket()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
