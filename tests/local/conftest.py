"""Fixtures for the local control plane tests: a real server on a loopback port."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from archil.local.embedded import LocalServer

ServerFactory = Callable[..., LocalServer]


@pytest.fixture
def server(make_server: ServerFactory) -> LocalServer:
    """A running local control plane in a temporary data directory."""
    return make_server()


def client_for(server: LocalServer, **kwargs: Any) -> httpx.Client:
    """A plain httpx client authenticated against ``server``."""
    kwargs.setdefault("timeout", 30.0)
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": server.api_key},
        trust_env=False,
        **kwargs,
    )


@pytest.fixture
def client(server: LocalServer) -> Iterator[httpx.Client]:
    """An httpx client for :func:`server`."""
    with client_for(server) as c:
        yield c


@pytest.fixture
def disk(client: httpx.Client) -> str:
    """The id of a fresh disk."""
    r = client.post("/api/disks", json={"name": "test-disk"})
    assert r.status_code == 201, r.text
    disk_id: str = r.json()["data"]["diskId"]
    return disk_id


def _raw_request(
    server: LocalServer,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """Send ``target`` exactly as written (no URL normalization), return status and body."""
    parts = urlsplit(server.base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        all_headers = {"Authorization": server.api_key}
        all_headers.update(headers or {})
        conn.request(method, target, body=body, headers=all_headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def make_client() -> Iterator[Callable[..., httpx.Client]]:
    """Build authenticated httpx clients for any server (closed at the end of the test)."""
    clients: list[httpx.Client] = []

    def make(server: LocalServer, **kwargs: Any) -> httpx.Client:
        c = client_for(server, **kwargs)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def raw() -> Callable[..., tuple[int, bytes]]:
    """Send a request target byte for byte (``raw(server, "GET", "/s3/d/%2e%2e/x")``)."""
    return _raw_request


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    """Poll a predicate until it holds (``wait_until(lambda: ..., timeout=5)``)."""
    return _wait_until
