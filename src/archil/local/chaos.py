"""Chaos mode: make a fraction of requests fail the way real networks and servers do.

A failing request gets a 503, a 429 with ``Retry-After: 0``, or a dropped
connection (the socket is closed with no response at all). Requests that
change something (POST, PUT, DELETE, PATCH) fail either *before* the effect is
applied or *after* it (the effect happens, its result is stored under the
``Idempotency-Key``, and then the response is lost). ``/healthz`` is exempt.

A process WebSocket is dropped, at the same rate, at a random moment after its
``started`` or ``attached`` answer (the connection is cut, with no close frame),
which a client recovers from by attaching again from its offset. The ``start``
message itself is never lost: like any request that is not idempotent, a start
whose answer never came cannot be told apart from one that did not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Chaos", "ChaosDecision", "ChaosMiddleware", "ConnectionDropper"]

FailureKind = Literal["503", "429", "drop"]
_MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})

ConnectionDropper = Callable[[Scope], bool]
"""Closes the client connection of a request without a response; ``False`` if it cannot."""


@dataclass(frozen=True)
class ChaosDecision:
    """How one request is going to fail."""

    kind: FailureKind
    after_effect: bool


class Chaos:
    """A thread-safe, seedable source of failure decisions."""

    def __init__(self, rate: float = 0.0, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self.rate = 0.0
        self._rng = random.Random(seed)
        self.set(rate, seed)

    def set(self, rate: float, seed: int | None = None) -> None:
        """Change the failure rate (0 disables chaos) and, optionally, reseed."""
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"chaos rate must be a number between 0 and 1, got {rate!r}")
        with self._lock:
            self.rate = float(rate)
            if seed is not None:
                self._rng = random.Random(seed)

    def decide(self, method: str) -> ChaosDecision | None:
        """``None`` to serve the request normally, otherwise how it fails."""
        with self._lock:
            if self.rate <= 0.0 or self._rng.random() >= self.rate:
                return None
            kind: FailureKind = self._rng.choice(("503", "429", "drop"))
            after = method.upper() in _MUTATING and self._rng.random() < 0.5
            return ChaosDecision(kind, after)

    def socket_drop(self) -> float | None:
        """``None`` to leave a process WebSocket alone, else after how many seconds to cut it."""
        with self._lock:
            if self.rate <= 0.0 or self._rng.random() >= self.rate:
                return None
            return self._rng.uniform(0.0, 0.5)


def _is_chaos_target(path: str) -> bool:
    return path == "/s3" or path.startswith(("/api/", "/s3/")) or path == "/api"


def _error_response(path: str, status: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    headers: list[tuple[bytes, bytes]] = []
    if status == 429:
        headers.append((b"retry-after", b"0"))
    if path.startswith("/s3"):
        code = "SlowDown" if status == 429 else "ServiceUnavailable"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>chaos mode: injected failure</Message></Error>"
        ).encode()
        headers.append((b"content-type", b"application/xml"))
    else:
        code = "rate_limited" if status == 429 else "service_unavailable"
        body = json.dumps(
            {"success": False, "error": "chaos mode: injected failure", "code": code}
        ).encode()
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    return headers, body


class ChaosMiddleware:
    """ASGI middleware that applies :class:`Chaos` decisions to ``/api`` and ``/s3`` requests."""

    def __init__(
        self,
        app: ASGIApp,
        chaos: Chaos,
        dropper: Callable[[], ConnectionDropper | None] | None = None,
    ) -> None:
        self.app = app
        self.chaos = chaos
        self.dropper = dropper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_chaos_target(scope["path"]):
            await self.app(scope, receive, send)
            return
        decision = self.chaos.decide(scope["method"])
        if decision is None:
            await self.app(scope, receive, send)
            return
        if decision.after_effect:

            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
        await self._fail(scope, receive, send, decision.kind)

    async def _fail(self, scope: Scope, receive: Receive, send: Send, kind: FailureKind) -> None:
        if kind == "drop":
            await self._drop(scope, receive, send)
            return
        status = int(kind)
        headers, body = _error_response(scope["path"], status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _drop(self, scope: Scope, receive: Receive, send: Send) -> None:
        dropper = self.dropper() if self.dropper is not None else None
        if dropper is not None and dropper(scope):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_until_disconnect(receive), timeout=2.0)
            return
        # No way to reach the socket: start a response and never finish it, so the
        # server has to abort the connection.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"1024"), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b"{", "more_body": True})


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message: dict[str, Any] = dict(await receive())
        if message.get("type") == "http.disconnect":
            return
