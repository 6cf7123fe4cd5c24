"""ASGI middleware of the local control plane, outermost first in :func:`archil.local.server.create_app`.

- :class:`RequestIdMiddleware` gives every request an id (the ``x-request-id`` header);
- :class:`AuthMiddleware` rejects ``/api`` and ``/s3`` requests without a valid key (401);
- :class:`IdempotencyMiddleware` answers a repeated ``Idempotency-Key`` on a POST with the
  first answer: it reads the body, fingerprints the request, replays a stored answer, or
  serves the request once and records its answer.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .objects_xml import s3_error_response
from .routes.common import MAX_JSON_BODY
from .state import IdempotentResult

if TYPE_CHECKING:
    from .plane import ControlPlane

__all__ = ["AuthMiddleware", "IdempotencyMiddleware", "RequestIdMiddleware"]


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return str(v.decode("latin-1"))
    return None


class RequestIdMiddleware:
    """Gives every request an id, returned in the ``x-request-id`` response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = "req_" + secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _send_response(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    await response(scope, receive, send)


class AuthMiddleware:
    """Rejects ``/api`` and ``/s3`` requests without a valid ``Authorization`` header (401)."""

    def __init__(self, app: ASGIApp, plane: ControlPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"authorization")
        if self.plane.authenticate(header):
            await self.app(scope, receive, send)
            return
        missing = not header
        message = (
            "missing API key: send it in the Authorization header" if missing else "invalid API key"
        )
        if scope["path"] == "/s3" or scope["path"].startswith("/s3/"):
            response = s3_error_response(
                401, "AccessDenied" if missing else "InvalidAccessKeyId", message
            )
        else:
            response = error_response(401, message, "unauthorized")
        await _send_response(response, scope, receive, send)


class IdempotencyMiddleware:
    """Answers a repeated ``Idempotency-Key`` on a POST with the first answer, never a second effect."""

    def __init__(self, app: ASGIApp, plane: ControlPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        key = _header(scope, b"idempotency-key")
        if key is None:
            await self.app(scope, receive, send)
            return
        if not 1 <= len(key) <= 255 or not all(32 < ord(c) < 127 for c in key):
            message = "Idempotency-Key: must be 1-255 printable ASCII characters without spaces"
            await _send_response(
                error_response(400, message, "validation_error"), scope, receive, send
            )
            return
        raw = await self._read_body(scope, receive, send)
        if raw is None:
            return
        fingerprint = _fingerprint(scope, raw)
        async with self.plane.idempotency_lock(key):
            stored = self.plane.state.get_idempotent(key)
            if stored is not None:
                await self._replay(stored, fingerprint, scope, receive, send)
                return
            status, headers, body = await self._serve(scope, raw, receive)
            if status < 500 and status != 429:
                self._record(key, fingerprint, status, headers, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole request body, or ``None`` once a 413 was sent or the client left."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            if size > MAX_JSON_BODY:
                too_large = error_response(
                    413, "body: the request body is too large", "body_too_large"
                )
                await _send_response(too_large, scope, receive, send)
                return None
            chunks.append(body)
            more = bool(message.get("more_body", False))
        return b"".join(chunks)

    async def _replay(
        self,
        stored: IdempotentResult,
        fingerprint: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if stored.fingerprint != fingerprint:
            response = error_response(
                409,
                "Idempotency-Key: this key was already used for a different request",
                "idempotency_key_reused",
            )
            await _send_response(response, scope, receive, send)
            return
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers]
        headers.append((b"idempotent-replayed", b"true"))
        await send({"type": "http.response.start", "status": stored.status, "headers": headers})
        await send({"type": "http.response.body", "body": stored.body, "more_body": False})

    async def _serve(
        self, scope: Scope, raw: bytes, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run the request once with its already-read body; capture the answer."""
        sent_body = False

        async def replay_body() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        status = 500
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, replay_body, capture)
        return status, headers, b"".join(parts)

    def _record(
        self,
        key: str,
        fingerprint: str,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        keep = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in headers
            if k.lower() not in (b"x-request-id", b"date", b"server")
        ]
        self.plane.state.put_idempotent(key, IdempotentResult(fingerprint, status, keep, body))


def _fingerprint(scope: Scope, raw: bytes) -> str:
    parts = [scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b""), raw]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()
