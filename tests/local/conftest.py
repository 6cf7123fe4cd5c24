"""Fixtures for the local control plane tests: a real server on a loopback port."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from runtime_harness import Harness  # tests/local, which pytest puts on the path

from archil.local.embedded import LocalServer
from archil.local.runtime import Runtime

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


# -- the sandbox runtime (tests/local/test_runtime*.py) ----------------------------------


@pytest.fixture(scope="module")
def ns_rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """A runtime with namespaces for one test module (the module is skipped where it has none)."""
    rt = Runtime(tmp_path_factory.mktemp("rt-ns"), stop_grace=2.0)
    if rt.capabilities["isolation"] != "namespace":
        rt.shutdown()
        pytest.skip(f"namespaces are not available here: {rt.capabilities['reason']}")
    yield rt
    rt.shutdown(grace=0.5)


@pytest.fixture(scope="module")
def proc_rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """A runtime in process mode (no namespaces) for one test module."""
    rt = Runtime(tmp_path_factory.mktemp("rt-proc"), namespaces=False, stop_grace=2.0)
    yield rt
    rt.shutdown(grace=0.5)


@pytest.fixture
def h(tmp_path: Path, ns_rt: Runtime) -> Iterator[Harness]:
    """A harness on :func:`ns_rt`; on exit it checks that nothing of its sandboxes is left."""
    harness = Harness(tmp_path, ns_rt)
    yield harness
    harness.close()


@pytest.fixture
def hp(tmp_path: Path, proc_rt: Runtime) -> Iterator[Harness]:
    """A harness on :func:`proc_rt`."""
    harness = Harness(tmp_path, proc_rt)
    yield harness
    harness.close()
