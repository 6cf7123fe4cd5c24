"""``Idempotency-Key`` and chaos mode on the local server."""

from __future__ import annotations

import sqlite3
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from archil.local.chaos import Chaos
from archil.local.embedded import LocalServer

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
BODY: dict[str, Any] = {"base_image": f"python:{PY}-slim"}


def _ids(client: httpx.Client) -> list[str]:
    return [s["sandbox_id"] for s in client.get("/api/sandboxes").json()["data"]["sandboxes"]]


def _server_count(server: LocalServer) -> int:
    assert server.app is not None
    return len(server.app.plane.state.list_sandboxes())


def _destroy_all(client: httpx.Client) -> None:
    for sid in _ids(client):
        client.post(f"/api/sandboxes/{sid}/stop")
        assert client.delete(f"/api/sandboxes/{sid}").status_code == 204
    assert _ids(client) == []


def _create(client: httpx.Client, key: str, body: dict[str, Any] = BODY) -> httpx.Response:
    return client.post(
        "/api/sandboxes", params={"wait": "true"}, json=body, headers={"Idempotency-Key": key}
    )


def test_a_repeated_key_replays_the_first_answer(server: LocalServer, client: httpx.Client) -> None:
    try:
        first = _create(client, "create-1")
        second = _create(client, "create-1")
        assert first.status_code == second.status_code == 202
        assert first.json()["data"]["status"] == "running"
        assert second.content == first.content
        assert second.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert second.headers["x-request-id"] != first.headers["x-request-id"]
        assert _ids(client) == [first.json()["data"]["sandbox_id"]]

        third = _create(client, "create-2")
        assert third.status_code == 202 and "idempotent-replayed" not in third.headers
        assert third.json()["data"]["sandbox_id"] != first.json()["data"]["sandbox_id"]
        assert len(_ids(client)) == 2 == _server_count(server)
    finally:
        _destroy_all(client)


def test_concurrent_requests_with_one_key_have_one_effect(
    server: LocalServer, client: httpx.Client
) -> None:
    try:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: _create(client, "race"), range(6)))
        assert {r.status_code for r in responses} == {202}
        assert len({r.json()["data"]["sandbox_id"] for r in responses}) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 5
        assert _server_count(server) == 1
    finally:
        _destroy_all(client)


def test_a_key_reused_for_another_request_is_409(
    server: LocalServer, client: httpx.Client, disk: str
) -> None:
    headers = {"Idempotency-Key": "k"}
    assert client.post("/api/disks", json={"name": "a"}, headers=headers).status_code == 201
    r = client.post("/api/disks", json={"name": "b"}, headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "idempotency_key_reused"
    r = client.post("/api/tokens", json={"name": "a"}, headers=headers)
    assert r.status_code == 409
    assert [d["name"] for d in client.get("/api/disks").json()["data"]] == ["test-disk", "a"]

    try:
        assert _create(client, "sb", {**BODY, "name": "one"}).status_code == 202
        r = _create(client, "sb", {**BODY, "name": "two"})
        assert r.status_code == 409 and r.json()["code"] == "idempotency_key_reused"
        r = client.post(
            "/api/sandboxes", json={**BODY, "name": "one"}, headers={"Idempotency-Key": "sb"}
        )
        assert r.status_code == 409 and r.json()["code"] == "idempotency_key_reused"
        names = [s["name"] for s in client.get("/api/sandboxes").json()["data"]["sandboxes"]]
        assert names == ["one"] and _server_count(server) == 1
    finally:
        _destroy_all(client)


def test_exec_is_not_run_twice(client: httpx.Client, disk: str) -> None:
    body = {"command": "echo run >> /mnt/archil/runs.txt; wc -l < /mnt/archil/runs.txt"}
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post(f"/api/disks/{disk}/exec", json=body, headers=headers)
    second = client.post(f"/api/disks/{disk}/exec", json=body, headers=headers)
    assert first.json() == second.json()
    assert first.json()["data"]["stdout"].strip() == "1"
    assert client.get(f"/s3/{disk}/runs.txt").content == b"run\n"


def test_errors_are_replayed_but_server_failures_are_not_stored(
    server: LocalServer, client: httpx.Client
) -> None:
    body = {**BODY, "mounts": [{"disk_id": "dsk-0000000000000000"}]}
    first = _create(client, "missing-disk", body)
    assert first.status_code == 404 and "idempotent-replayed" not in first.headers
    r = _create(client, "missing-disk", body)
    assert r.status_code == 404 and r.headers["idempotent-replayed"] == "true"
    assert r.content == first.content
    assert _server_count(server) == 0


def test_keys_expire_after_a_day(server: LocalServer, client: httpx.Client) -> None:
    try:
        first = _create(client, "old").json()["data"]["sandbox_id"]
        assert _create(client, "old").json()["data"]["sandbox_id"] == first
        with sqlite3.connect(server.data_dir / "state.db") as db:
            db.execute("UPDATE idempotency SET created_at = created_at - 25 * 3600")
        again = _create(client, "old")
        assert again.status_code == 202 and "idempotent-replayed" not in again.headers
        assert again.json()["data"]["sandbox_id"] != first
        assert _server_count(server) == 2
    finally:
        _destroy_all(client)


def test_chaos_decisions_are_seeded() -> None:
    a = Chaos(0.5, seed=7)
    b = Chaos(0.5, seed=7)
    seq_a = [a.decide("POST") for _ in range(200)]
    seq_b = [b.decide("POST") for _ in range(200)]
    assert seq_a == seq_b
    kinds = Counter((d.kind, d.after_effect) for d in seq_a if d is not None)
    assert {k for k, _ in kinds} == {"503", "429", "drop"}
    assert {after for _, after in kinds} == {True, False}
    assert all(d is None or not d.after_effect for d in (a.decide("GET") for _ in range(200)))
    assert all(Chaos(0.0).decide("POST") is None for _ in range(50))
    for bad in (-0.1, 1.5, "x", True):
        with pytest.raises(ValueError):
            Chaos(bad)  # type: ignore[arg-type]


def _create_with_retries(client: httpx.Client, key: str | None, failures: Counter[str]) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    for _ in range(40):
        try:
            r = client.post("/api/sandboxes", json=BODY, headers=headers)
        except httpx.TransportError:
            failures["dropped"] += 1
            continue
        if r.status_code in (429, 503):
            failures[str(r.status_code)] += 1
            if r.status_code == 429:
                assert r.headers["retry-after"] == "0"
            continue
        assert r.status_code == 202, r.text
        if r.headers.get("idempotent-replayed") == "true":
            failures["replayed"] += 1
        sid: str = r.json()["data"]["sandbox_id"]
        return sid
    raise AssertionError("no success within the retry budget")


def test_chaos_with_idempotency_keys_creates_each_sandbox_once(
    make_server: Callable[..., LocalServer], make_client: Callable[..., httpx.Client]
) -> None:
    server = make_server(chaos_rate=0.2, chaos_seed=1234)
    client = make_client(server)
    failures: Counter[str] = Counter()
    try:
        with ThreadPoolExecutor(4) as pool:
            ids = list(
                pool.map(lambda i: _create_with_retries(client, f"c-{i}", failures), range(40))
            )
        assert len(set(ids)) == 40
        assert failures["dropped"] > 0 and failures["503"] > 0 and failures["429"] > 0, failures
        assert failures["replayed"] > 0, failures
        server.set_chaos(0.0)
        assert _server_count(server) == 40
        assert sorted(_ids(client)) == sorted(ids)
    finally:
        server.set_chaos(0.0)
        _destroy_all(client)


def test_chaos_without_keys_duplicates(
    make_server: Callable[..., LocalServer], make_client: Callable[..., httpx.Client]
) -> None:
    server = make_server(chaos_rate=0.0)
    client = make_client(server)
    failures: Counter[str] = Counter()
    try:
        server.set_chaos(0.3, seed=99)
        ids = [_create_with_retries(client, None, failures) for _ in range(20)]
        server.set_chaos(0.0)
        assert len(set(ids)) == 20
        assert _server_count(server) > 20
        assert len(_ids(client)) == _server_count(server)
    finally:
        server.set_chaos(0.0)
        _destroy_all(client)


def test_health_is_exempt_from_chaos(make_server: Callable[..., LocalServer]) -> None:
    server = make_server(chaos_rate=1.0, chaos_seed=5)
    with httpx.Client(base_url=server.base_url, trust_env=False) as c:
        assert all(c.get("/healthz").status_code == 200 for _ in range(30))
