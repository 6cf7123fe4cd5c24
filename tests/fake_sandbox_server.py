"""A scripted stand-in for a control plane's sandbox routes and its process WebSocket.

It runs a Starlette app on uvicorn (``ws="wsproto"``) on 127.0.0.1 in a thread,
so the async and the blocking client are tested over real sockets the same
way. It serves one running sandbox (``GET /api/sandboxes/{sid}``), hands out
WebSocket URLs (``POST /api/sandboxes/{sid}/connections``) and plays one
process on them as its :class:`Plan` says: the output, where to drop the
connection, what to answer. Every connection's client messages are recorded
in :attr:`FakeSandboxServer.connections` (JSON as dicts, stdin as bytes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from archil._process import encode_frame, event_message, parse_event

SANDBOX_ID = "6f1c2e4a-9b3d-4c5e-8f70-123456789abc"
PROCESS_ID = "proc-0001"
API_KEY = "key-fake-sandbox-server-secret"
TOKEN = "tok-signed-secret-123"


@dataclass
class Plan:
    """How the fake process behaves.

    Attributes:
        chunks: its output, in order: ``(stream, bytes)``; one frame each.
        status, exit_code, exit_reason: its ``exit`` event.
        drop_after: for connection number i (0-based, counting every process
            connection), drop it after sending this many output frames
            (``None``: do not drop).
        drop_mode: ``"abrupt"`` (the TCP connection dies) or ``"close"`` (a
            close frame with code 1001, as a restarting server sends).
        refuse: for connection number i, refuse the upgrade with this HTTP status.
        unanswered: for connection number i, drop it as soon as the first
            message arrives, without answering it.
        overlap: on attach, start the first frame this many bytes before the
            offset (bytes the client already has).
        start_error: answer ``start`` with this ``error`` event.
        error_after: send ``{"type": "error", ...}`` after this many frames.
        echo_stdin: after the output, echo the standard input as stdout until ``close_stdin``.
        hold: after the output, wait until the process is killed (status ``cancelled``).
        control_answer: the answer to ``kill``/``resize`` (default: the right one).
        connection_errors: answer this many ``POST .../connections`` with 503 first.
    """

    chunks: list[tuple[int, bytes]] = field(default_factory=lambda: [(1, b"hello\n")])
    status: str = "completed"
    exit_code: int | None = 0
    exit_reason: str | None = None
    drop_after: list[int | None] = field(default_factory=list)
    drop_mode: str = "abrupt"
    refuse: list[int] = field(default_factory=list)
    unanswered: list[bool] = field(default_factory=list)
    overlap: int = 0
    start_error: dict[str, str] | None = None
    error_after: int | None = None
    echo_stdin: bool = False
    hold: bool = False
    control_answer: dict[str, Any] | None = None
    connection_errors: int = 0


class _Drop(Exception):
    """Raised in the handler to make uvicorn drop the connection without a close frame."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Drop)


def _sandbox_record() -> dict[str, Any]:
    return {
        "sandbox_id": SANDBOX_ID,
        "name": "fake",
        "status": "running",
        "vcpu_count": 1,
        "mem_size_mib": 2048,
        "max_ttl_seconds": 86400,
        "idle_ttl_seconds": 1800,
        "max_concurrent_execs": 8,
        "base_image": "python:3.11-slim",
        "created_at": "2026-01-01T00:00:00Z",
        "last_active_at": "2026-01-01T00:00:00Z",
    }


class FakeSandboxServer:
    """The server; :meth:`reset` gives it a new :class:`Plan` and clears the records."""

    def __init__(self) -> None:
        self.plan = Plan()
        self.connections: list[list[Any]] = []
        self.upgrade_headers: list[dict[str, str]] = []
        self.connection_posts = 0
        self.killed = False
        self.resized: list[tuple[int, int]] = []
        self.stdin = b""
        self._extra: list[tuple[int, bytes]] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._filter = _QuietDrops()

    # -- lifetime ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return API_KEY

    def start(self) -> None:
        app = Starlette(
            routes=[
                Route("/api/sandboxes/{sid}", self._get_sandbox, methods=["GET"]),
                Route("/api/sandboxes/{sid}/connections", self._connections, methods=["POST"]),
                WebSocketRoute("/ws/sandboxes/{sid}/processes", self._process_socket),
            ]
        )
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            ws="wsproto",
            lifespan="off",
            log_config=None,
            log_level="warning",
        )
        self._server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").addFilter(self._filter)
        self._thread = threading.Thread(target=self._server.run, name="fake-sandbox", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake sandbox server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        logging.getLogger("uvicorn.error").removeFilter(self._filter)

    def reset(self, plan: Plan | None = None) -> FakeSandboxServer:
        self.plan = plan or Plan()
        self.connections = []
        self.upgrade_headers = []
        self.connection_posts = 0
        self.killed = False
        self.resized = []
        self.stdin = b""
        self._extra = []
        return self

    # -- HTTP ----------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == API_KEY

    async def _get_sandbox(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"success": False, "error": "unauthorized"}, 401)
        if request.path_params["sid"] != SANDBOX_ID:
            return JSONResponse({"success": False, "error": "no such sandbox"}, 404)
        return JSONResponse({"success": True, "data": _sandbox_record()})

    async def _connections(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"success": False, "error": "unauthorized"}, 401)
        self.connection_posts += 1
        if self.connection_posts <= self.plan.connection_errors:
            return JSONResponse({"success": False, "error": "busy"}, 503)
        sid = request.path_params["sid"]
        url = f"ws://127.0.0.1:{self.port}/ws/sandboxes/{sid}/processes?token={TOKEN}"
        return JSONResponse(
            {"success": True, "data": {"url": url, "expires_at": "2030-01-01T00:00:00Z"}}
        )

    # -- the process WebSocket -------------------------------------------------------

    def _output(self) -> list[tuple[int, int, bytes]]:
        """``(stream, offset, payload)`` of every output frame so far."""
        frames: list[tuple[int, int, bytes]] = []
        offset = 0
        for stream, payload in [*self.plan.chunks, *self._extra]:
            frames.append((stream, offset, payload))
            offset += len(payload)
        return frames

    def _total(self) -> int:
        return sum(len(p) for _, p in [*self.plan.chunks, *self._extra])

    async def _process_socket(self, ws: WebSocket) -> None:
        index = len(self.connections)
        received: list[Any] = []
        self.connections.append(received)
        self.upgrade_headers.append(dict(ws.headers))
        plan = self.plan
        if index < len(plan.refuse) and plan.refuse[index]:
            await ws.send_denial_response(Response(status_code=plan.refuse[index]))
            return
        if ws.query_params.get("token") != TOKEN:
            await ws.send_denial_response(Response(status_code=403))
            return
        await ws.accept()
        first = parse_event(await ws.receive_text())
        received.append(first)
        if index < len(plan.unanswered) and plan.unanswered[index]:
            raise _Drop("unanswered")
        kind = first["type"]
        if kind in ("kill", "resize"):
            await self._control(ws, first)
            return
        if kind == "start":
            if plan.start_error is not None:
                await ws.send_text(event_message("error", **plan.start_error))
                await ws.close()
                return
            await ws.send_text(event_message("started", process_id=PROCESS_ID))
            offset = 0
        elif kind == "attach":
            if first.get("process_id") != PROCESS_ID:
                await ws.send_text(
                    event_message("error", error="process_not_found", message="no such process")
                )
                await ws.close()
                return
            await ws.send_text(event_message("attached", process_id=PROCESS_ID))
            offset = int(first["offset"])
        else:
            await ws.send_text(event_message("error", error="invalid_message", message="?"))
            await ws.close()
            return
        drop = plan.drop_after[index] if index < len(plan.drop_after) else None
        sent = 0
        whole = b"".join(p for _, _, p in self._output())
        for stream, start, payload in self._output():
            end = start + len(payload)
            if end <= offset:
                continue
            if start < offset:
                payload, start = payload[offset - start :], offset
            if kind == "attach" and sent == 0 and plan.overlap and offset >= plan.overlap:
                start = offset - plan.overlap
                payload = whole[start:end]
            if drop is not None and sent >= drop:
                await self._drop(ws)
            if plan.error_after is not None and sent >= plan.error_after:
                await ws.send_text(
                    event_message("error", error="internal", message="the process broke")
                )
                await ws.close()
                return
            await ws.send_bytes(encode_frame(stream, start, payload))
            sent += 1
        if drop is not None and sent >= drop:
            await self._drop(ws)
        if plan.echo_stdin:
            await self._echo(ws, received)
        elif plan.hold and not await self._held(ws):
            return
        status, code, reason = plan.status, plan.exit_code, plan.exit_reason
        if self.killed:
            status, code, reason = "cancelled", None, "killed through the API"
        await ws.send_text(
            event_message(
                "exit", status=status, exit_code=code, exit_reason=reason, cursor=self._total()
            )
        )
        await ws.close()

    async def _held(self, ws: WebSocket) -> bool:
        """Wait until the process is killed (True) or the client goes away (False)."""
        receiving = asyncio.ensure_future(ws.receive())
        try:
            while not self.killed:
                if receiving.done():
                    message = receiving.result()
                    if message["type"] == "websocket.disconnect":
                        return False
                    receiving = asyncio.ensure_future(ws.receive())
                await asyncio.sleep(0.01)
            return True
        finally:
            receiving.cancel()

    async def _drop(self, ws: WebSocket) -> None:
        if self.plan.drop_mode == "close":
            await ws.close(1001)
            raise _Drop("closed")
        raise _Drop("dropped")

    async def _echo(self, ws: WebSocket, received: list[Any]) -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect()
            if message.get("bytes") is not None:
                data = message["bytes"]
                received.append(data)
                self.stdin += data
                offset = self._total()
                self._extra.append((1, data))
                await ws.send_bytes(encode_frame(1, offset, data))
            elif message.get("text") is not None:
                event = json.loads(message["text"])
                received.append(event)
                if event.get("type") == "close_stdin":
                    return

    async def _control(self, ws: WebSocket, message: dict[str, Any]) -> None:
        answer = self.plan.control_answer
        if message["type"] == "kill":
            self.killed = True
            answer = answer or {"type": "killed"}
        else:
            self.resized.append((message["cols"], message["rows"]))
            answer = answer or {"type": "resized"}
        await ws.send_text(json.dumps(answer))
        await ws.close()


@pytest.fixture(scope="session")
def _fake_sandbox_server() -> Iterator[FakeSandboxServer]:
    server = FakeSandboxServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sandbox_server(_fake_sandbox_server: FakeSandboxServer) -> FakeSandboxServer:
    """The fake server, with a fresh :class:`Plan` and empty records."""
    return _fake_sandbox_server.reset()
