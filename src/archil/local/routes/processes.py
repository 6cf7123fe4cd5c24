"""The process WebSocket (``docs/process-protocol.md``): start, attach, kill and resize processes.

Its URL comes from ``POST /api/sandboxes/{sid}/connections`` and carries a
token signed for that sandbox and an expiry; a bad, foreign or expired token
is refused before the upgrade. A connection serves one process: it sends the
output frames from the requested offset as they come (the follower wakes on
new output) and the ``exit`` event, then closes. Binary client frames are the
process's stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..._process import ProtocolError, encode_frame, event_message, parse_event
from ..errors import ApiError
from ..runtime import SpawnError
from ..spec import ProcessSpec

if TYPE_CHECKING:
    from ..plane import ControlPlane
    from ..sandboxes import Proc

__all__ = ["check_token", "connection_token", "routes"]

logger = logging.getLogger("archil.local")

_MAX_STDIN_FRAME = 1 << 20
_DEFAULT_TERMINAL = (80, 24)


def connection_token(secret: str, sid: str, expires: int) -> str:
    """The token of a process WebSocket URL for sandbox ``sid``, good until ``expires``."""
    mac = hmac.new(secret.encode(), f"{sid}.{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac[:40]}"


def check_token(secret: str, sid: str, token: str | None) -> bool:
    """Whether ``token`` was signed for ``sid`` and has not expired."""
    if not token or "." not in token:
        return False
    raw_expires, _, _ = token.partition(".")
    if not raw_expires.isdigit() or int(raw_expires) < time.time():
        return False
    return hmac.compare_digest(token, connection_token(secret, sid, int(raw_expires)))


class _Refused(Exception):
    """A protocol error that ends the connection: sent as an ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _string(message: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = message.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise _Refused("invalid_message", f"{name}: must be a non-empty string")
    return value


def _process_spec(message: dict[str, Any]) -> ProcessSpec:
    command = _string(message, "command")
    assert command is not None
    env = message.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        raise _Refused("invalid_message", "env: must be an object of string values")
    terminal = message.get("terminal", False)
    size: tuple[int, int] | None = None
    if terminal is True:
        size = _DEFAULT_TERMINAL
    elif isinstance(terminal, dict):
        cols, rows = terminal.get("cols"), terminal.get("rows")
        if not all(isinstance(v, int) and 0 < v < 10000 for v in (cols, rows)):
            raise _Refused("invalid_message", "terminal: cols and rows must be positive integers")
        size = (int(cols), int(rows))  # type: ignore[arg-type]
    elif terminal is not False:
        raise _Refused("invalid_message", "terminal: must be false, true or {cols, rows}")
    timeout = message.get("timeout_seconds")
    if timeout is not None and (
        not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1
    ):
        raise _Refused("invalid_message", "timeout_seconds: must be a positive integer")
    return ProcessSpec(
        command=command,
        env=dict(env),
        cwd=_string(message, "cwd", optional=True),
        terminal=size,
        timeout_seconds=timeout,
    )


class _Session:
    """One process connection."""

    def __init__(self, plane: ControlPlane, ws: WebSocket, sid: str) -> None:
        self.plane = plane
        self.ws = ws
        self.sid = sid
        self.closing = asyncio.Event()

    async def run(self) -> None:
        try:
            first = await self._next_text()
            if first is None:
                return
            await self._dispatch(first)
        except _Refused as exc:
            await self._send_text(event_message("error", error=exc.code, message=exc.message))
        except (WebSocketDisconnect, ConnectionError):
            return
        finally:
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def _next_text(self) -> dict[str, Any] | None:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            raise _Refused("invalid_message", "the first message must be a JSON text message")
        try:
            return parse_event(text)
        except ProtocolError as exc:
            raise _Refused("invalid_message", str(exc)) from None

    async def _send_text(self, text: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send_text(text)

    def _proc(self, message: dict[str, Any]) -> Proc:
        process_id = _string(message, "process_id")
        assert process_id is not None
        proc = self.plane.sandboxes.process(self.sid, process_id)
        if proc is None:
            raise _Refused("process_not_found", f"no process {process_id!r} in this sandbox")
        return proc

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "start":
            spec = _process_spec(message)
            self._check_capacity()
            try:
                proc = await self.plane.sandboxes.start_process(self.sid, spec)
            except ApiError as exc:
                raise _Refused("sandbox_not_running", exc.message) from None
            except SpawnError as exc:
                raise _Refused("spawn_failed", str(exc)) from None
            await self.ws.send_text(event_message("started", process_id=proc.id))
            await self._stream(proc, 0)
        elif kind == "attach":
            proc = self._proc(message)
            offset = message.get("offset", 0)
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise _Refused("invalid_message", "offset: must be a non-negative integer")
            self._check_capacity()
            await self.ws.send_text(event_message("attached", process_id=proc.id))
            await self._stream(proc, offset)
        elif kind in ("kill", "resize"):
            await self._control(kind, self._proc(message), message)
        else:
            raise _Refused("invalid_message", f"type: unknown message type {kind!r}")

    def _check_capacity(self) -> None:
        manager = self.plane.sandboxes
        try:
            manager.running_env(self.sid)
            limit = manager.max_execs(self.sid)
        except ApiError as exc:
            raise _Refused("sandbox_not_running", exc.message) from None
        if manager.attached_count(self.sid) >= limit:
            raise _Refused(
                "too_many_execs", f"max_concurrent_execs ({limit}) connections are attached"
            )

    async def _control(self, kind: str, proc: Proc, message: dict[str, Any]) -> None:
        running = proc.running
        if kind == "kill":
            if proc.exit is None and running is not None:
                await anyio.to_thread.run_sync(running.cancel)
            await self.ws.send_text(event_message("killed"))
            return
        cols, rows = message.get("cols"), message.get("rows")
        if not all(isinstance(v, int) and 0 < v < 10000 for v in (cols, rows)):
            raise _Refused("invalid_message", "cols and rows must be positive integers")
        if running is not None and proc.terminal and proc.exit is None:
            running.resize(int(cols), int(rows))  # type: ignore[arg-type]
        await self.ws.send_text(event_message("resized"))

    async def _stream(self, proc: Proc, offset: int) -> None:
        manager = self.plane.sandboxes
        manager.attach(self.sid, self.closing.set)
        tasks = [
            asyncio.ensure_future(self._send_output(proc, offset)),
            asyncio.ensure_future(self._receive_input(proc)),
            asyncio.ensure_future(self.closing.wait()),
        ]
        drop_after = self.plane.chaos.socket_drop()
        if drop_after is not None:
            tasks.append(asyncio.ensure_future(self._chaos_drop(drop_after)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            manager.detach(self.sid, self.closing.set)

    async def _chaos_drop(self, delay: float) -> None:
        """Chaos mode: cut the connection after ``delay`` seconds, as a network would."""
        await asyncio.sleep(delay)
        dropper = self.plane.dropper
        if dropper is None or not dropper(self.ws.scope):
            await self.ws.close(code=1011)
        logger.debug("chaos: dropped the process connection of sandbox %s", self.sid)

    async def _send_output(self, proc: Proc, offset: int) -> None:
        async for stream, start, payload in self.plane.sandboxes.follow(proc, offset):
            await self.ws.send_bytes(encode_frame(stream, start, payload))
        info = proc.exit
        assert info is not None
        await self.ws.send_text(
            event_message(
                "exit",
                status=info.status,
                exit_code=info.exit_code,
                exit_reason=info.exit_reason,
                cursor=proc.output.size,
            )
        )

    async def _receive_input(self, proc: Proc) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                await self._stdin(proc, data)
                continue
            try:
                event = parse_event(message.get("text") or "")
            except ProtocolError:
                continue
            await self._input_event(proc, event)

    async def _stdin(self, proc: Proc, data: bytes) -> None:
        running = proc.running
        if running is None or proc.exit is not None or len(data) > _MAX_STDIN_FRAME:
            return
        with contextlib.suppress(OSError, ValueError):
            await anyio.to_thread.run_sync(running.write, data)

    async def _input_event(self, proc: Proc, event: dict[str, Any]) -> None:
        kind = event["type"]
        running = proc.running
        if kind == "close_stdin" and running is not None:
            with contextlib.suppress(OSError, ValueError):
                await anyio.to_thread.run_sync(running.close_stdin)
        elif kind in ("kill", "resize"):
            with contextlib.suppress(_Refused):
                target = self._proc(event) if "process_id" in event else proc
                await self._control(kind, target, event)


async def process_socket(ws: WebSocket) -> None:
    """``/ws/sandboxes/{sid}/processes?token=``."""
    plane: ControlPlane = ws.app.state.plane
    sid = str(ws.path_params["sid"])
    if not check_token(plane.secret, sid, ws.query_params.get("token")):
        await ws.close(code=1008)
        return
    await ws.accept()
    await _Session(plane, ws, sid).run()


def routes() -> list[WebSocketRoute]:
    """The process WebSocket route."""
    return [WebSocketRoute("/ws/sandboxes/{sid}/processes", process_socket)]
