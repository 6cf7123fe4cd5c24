"""Shared test helpers: a mocked control plane and a client that never sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from archil._async.client import AsyncArchil
from archil._retry import RetryPolicy

BASE = "http://127.0.0.1:8931"
OBJ = BASE + "/s3"
API_KEY = "key-super-secret-0123456789"
DISK = "dsk-0123456789abcdef"
CNTR = "cntr-0123456789abcdef"
SID = "0b7c1f0e-5d2a-4e8b-9c3f-7a6d5e4c3b2a"
CHILD = "1c8d2a1f-6e3b-4f9c-8d4a-8b7e6f5d4c3b"
IMG = "img-0123456789abcdef"


def ok(data: Any = None, status: int = 200, cursor: str | None = None) -> httpx.Response:
    """A successful enveloped answer."""
    body: dict[str, Any] = {"success": True, "data": data}
    if cursor is not None:
        body["nextCursor"] = cursor
    return httpx.Response(status, json=body)


def err(
    status: int, message: str = "boom", code: str | None = None, **headers: str
) -> httpx.Response:
    """An enveloped error answer."""
    body: dict[str, Any] = {"success": False, "error": message}
    if code is not None:
        body["code"] = code
    return httpx.Response(status, json=body, headers=headers)


def disk_json(disk_id: str = DISK, name: str = "data", **extra: Any) -> dict[str, Any]:
    return {"id": disk_id, "name": name, "status": "available", **extra}


def sandbox_json(
    status: str = "running", sandbox_id: str = SID, name: str = "box", **extra: Any
) -> dict[str, Any]:
    """A sandbox record as the live API sends it (snake_case)."""
    return {
        "sandbox_id": sandbox_id,
        "name": name,
        "status": status,
        "vcpu_count": 1,
        "mem_size_mib": 2048,
        "max_ttl_seconds": 86400,
        "idle_ttl_seconds": 1800,
        "max_concurrent_execs": 8,
        "base_image": "python:3.11-slim",
        "created_at": "2026-01-01T00:00:00Z",
        "last_active_at": "2026-01-01T00:00:00Z",
        **extra,
    }


def image_json(status: str = "building", **extra: Any) -> dict[str, Any]:
    """A sandbox image record (snake_case)."""
    return {
        "image_id": IMG,
        "source": "docker.io/library/python:3.11-slim",
        "private": False,
        "status": status,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        **extra,
    }


class FakeClock:
    """A clock that only moves when the client sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(float(seconds))
        self.now += seconds


def make_client(clock: FakeClock, **kwargs: Any) -> AsyncArchil:
    """A client of the mocked control plane with a fake clock and no jitter."""
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("base_url", BASE)
    client = AsyncArchil(**kwargs)
    client._transport.sleep = clock.sleep
    client._transport.clock = clock
    client._transport.policy = RetryPolicy(random=lambda: 0.0)
    return client


class DroppingStream(httpx.AsyncByteStream):
    """A response body that sends ``chunks`` and then loses the connection."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


async def chunked(*chunks: bytes) -> AsyncIterator[bytes]:
    """A streamed body made of ``chunks``."""
    for chunk in chunks:
        yield chunk
