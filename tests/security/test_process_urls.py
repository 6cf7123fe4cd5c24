"""A process WebSocket URL works for its own sandbox only, and only while it is valid.

The URL of ``POST /api/sandboxes/{sid}/connections`` carries a token signed for that
sandbox with an expiry. Used on another sandbox's path, with another sandbox's token, with
no token, an expired or altered one, the upgrade is refused before any process can start;
the same URL on its own sandbox starts a process (so the refusals are not a broken URL in
disguise). After its sandbox is deleted, the URL starts nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from httpx_ws import WebSocketUpgradeError, connect_ws

import archil
from archil._process import start_message
from archil.local.embedded import LocalServer
from archil.local.routes.processes import connection_token


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("urls") / "data", stop_grace=2.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(srv: LocalServer) -> Iterator[archil.Archil]:
    with archil.Archil(api_key=srv.api_key, base_url=srv.base_url) as c:
        yield c


@pytest.fixture(scope="module")
def http(srv: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30) as c:
        yield c


def _with_token(url: str, token: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items() if k != "token"}
    if token is not None:
        query["token"] = token
    return urlunsplit(parts._replace(query=urlencode(query)))


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def _marker_started(http: httpx.Client, url: str, marker: str) -> str:
    """Start ``echo marker`` over ``url``; the first event's type."""
    with connect_ws(url, http) as ws:
        ws.send_text(start_message(f"echo {marker}"))
        event = json.loads(ws.receive_text())
        return str(event["type"])


def _refused(http: httpx.Client, url: str) -> int:
    """The HTTP status that refused the upgrade (the test fails if it was accepted)."""
    with pytest.raises(WebSocketUpgradeError) as info, connect_ws(url, http) as ws:
        ws.send_text(start_message("echo SHOULD-NOT-RUN"))
        pytest.fail(f"the upgrade of {url.split('?')[0]} was accepted")
    return info.value.response.status_code


def test_a_url_opens_its_own_sandbox_only(
    srv: LocalServer, client: archil.Archil, http: httpx.Client
) -> None:
    a = client.sandboxes.create()
    b = client.sandboxes.create()
    try:
        url_a = a.connect().url
        url_b = b.connect().url
        assert f"/sandboxes/{a.id}/" in url_a and f"/sandboxes/{b.id}/" in url_b
        on_b = url_a.replace(f"/sandboxes/{a.id}/", f"/sandboxes/{b.id}/")
        secret = srv.app.plane.secret if srv.app is not None else ""
        assert secret
        expired = connection_token(secret, a.id, int(time.time()) - 1)
        altered = _token(url_a)[:-1] + ("0" if _token(url_a)[-1] != "0" else "1")
        later = int(_token(url_a).split(".")[0]) + 3600
        stretched = f"{later}.{_token(url_a).split('.', 1)[1]}"
        refusals = {
            "a's URL on b's path": on_b,
            "b's token on a's path": _with_token(url_a, _token(url_b)),
            "a's token on b's path": _with_token(url_b, _token(url_a)),
            "no token": _with_token(url_a, None),
            "an empty token": _with_token(url_a, ""),
            "an expired token": _with_token(url_a, expired),
            "an altered token": _with_token(url_a, altered),
            "an expiry moved later": _with_token(url_a, stretched),
            "the API key as the token": _with_token(url_a, srv.api_key),
        }
        for what, url in refusals.items():
            assert _refused(http, url) == 403, what
        # No refused URL ran anything in b (or in a).
        for sandbox in (a, b):
            seen = sandbox.exec("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '").stdout
            assert "SHOULD-NOT-RUN" not in seen
        # The genuine URLs work, each on its own sandbox.
        assert _marker_started(http, url_a, "a") == "started"
        assert _marker_started(http, url_b, "b") == "started"
    finally:
        for sandbox in (a, b):
            sandbox.stop()
            sandbox.delete()


def test_a_url_dies_with_its_sandbox(client: archil.Archil, http: httpx.Client) -> None:
    sandbox = client.sandboxes.create()
    url = sandbox.connect().url
    sandbox.stop()
    sandbox.delete()
    with connect_ws(url, http) as ws:
        ws.send_text(start_message("echo SHOULD-NOT-RUN"))
        event = json.loads(ws.receive_text())
    assert event["type"] == "error" and event["error"] == "sandbox_not_running", event
