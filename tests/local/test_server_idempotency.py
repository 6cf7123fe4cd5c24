"""``Idempotency-Key`` and chaos mode on the local server."""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from archil.local.chaos import Chaos
from archil.local.embedded import LocalServer


def _count(client: httpx.Client, path: str = "/api/containers") -> int:
    total = 0
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        body = client.get(path, params=params).json()
        total += len(body["data"])
        cursor = body.get("nextCursor")
        if not cursor:
            return total


def test_a_repeated_key_replays_the_first_answer(client: httpx.Client, disk: str) -> None:
    body = {"archilMount": {"diskId": disk}, "command": "true"}
    headers = {"Idempotency-Key": "create-1"}
    first = client.post("/api/containers", json=body, headers=headers)
    second = client.post("/api/containers", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert _count(client) == 1

    third = client.post("/api/containers", json=body, headers={"Idempotency-Key": "create-2"})
    assert third.json()["data"]["containerId"] != first.json()["data"]["containerId"]
    assert _count(client) == 2


def test_concurrent_requests_with_one_key_have_one_effect(client: httpx.Client, disk: str) -> None:
    body = {"archilMount": {"diskId": disk}, "command": "true"}

    def post(_: int) -> httpx.Response:
        return client.post("/api/containers", json=body, headers={"Idempotency-Key": "race"})

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(post, range(12)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["data"]["containerId"] for r in responses}) == 1
    assert _count(client) == 1


def test_a_key_reused_for_another_request_is_409(client: httpx.Client, disk: str) -> None:
    headers = {"Idempotency-Key": "k"}
    assert client.post("/api/disks", json={"name": "a"}, headers=headers).status_code == 201
    r = client.post("/api/disks", json={"name": "b"}, headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "idempotency_key_reused"
    r = client.post("/api/tokens", json={"name": "a"}, headers=headers)
    assert r.status_code == 409
    assert [d["name"] for d in client.get("/api/disks").json()["data"]] == ["test-disk", "a"]


def test_exec_is_not_run_twice(client: httpx.Client, disk: str) -> None:
    body = {"command": "echo run >> /mnt/archil/runs.txt; wc -l < /mnt/archil/runs.txt"}
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post(f"/api/disks/{disk}/exec", json=body, headers=headers)
    second = client.post(f"/api/disks/{disk}/exec", json=body, headers=headers)
    assert first.json() == second.json()
    assert first.json()["data"]["stdout"].strip() == "1"
    assert client.get(f"/s3/{disk}/runs.txt").content == b"run\n"


def test_errors_are_replayed_but_server_failures_are_not_stored(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": "missing-disk"}
    body = {"archilMount": {"diskId": "dsk-0000000000000000"}}
    assert client.post("/api/containers", json=body, headers=headers).status_code == 404
    r = client.post("/api/containers", json=body, headers=headers)
    assert r.status_code == 404 and r.headers["idempotent-replayed"] == "true"


def test_keys_expire_after_a_day(server: LocalServer, client: httpx.Client, disk: str) -> None:
    body = {"archilMount": {"diskId": disk}, "command": "true"}
    headers = {"Idempotency-Key": "old"}
    first = client.post("/api/containers", json=body, headers=headers).json()["data"]["containerId"]
    with sqlite3.connect(server.data_dir / "state.db") as db:
        db.execute("UPDATE idempotency SET created_at = created_at - 25 * 3600")
    second = client.post("/api/containers", json=body, headers=headers).json()["data"][
        "containerId"
    ]
    assert second != first


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


def _create_with_retries(
    client: httpx.Client, body: dict[str, Any], key: str | None, failures: Counter[str]
) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    for _ in range(40):
        try:
            r = client.post("/api/containers", json=body, headers=headers)
        except httpx.TransportError:
            failures["dropped"] += 1
            continue
        if r.status_code in (429, 503):
            failures[str(r.status_code)] += 1
            if r.status_code == 429:
                assert r.headers["retry-after"] == "0"
            continue
        assert r.status_code == 201, r.text
        cid: str = r.json()["data"]["containerId"]
        return cid
    raise AssertionError("no success within the retry budget")


def test_chaos_with_idempotency_keys_creates_each_container_once(
    make_server: Callable[..., LocalServer], make_client: Callable[..., httpx.Client]
) -> None:
    server = make_server(chaos_rate=0.2, chaos_seed=1234)
    client = make_client(server)
    disk = None
    failures: Counter[str] = Counter()
    while disk is None:
        try:
            r = client.post(
                "/api/disks", json={"name": "chaos"}, headers={"Idempotency-Key": "disk"}
            )
        except httpx.TransportError:
            continue
        if r.status_code in (200, 201):
            disk = r.json()["data"]["diskId"]
    body = {"archilMount": {"diskId": disk}, "command": "true"}

    def one(i: int) -> str:
        return _create_with_retries(client, body, f"create-{i}", failures)

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, range(100)))
    assert len(set(ids)) == 100
    assert failures["dropped"] > 0 and failures["503"] > 0 and failures["429"] > 0, failures

    server.set_chaos(0.0)
    assert _count(client) == 100
    assert server.app is not None
    assert server.app.plane.state.count_containers() == 100
    assert len(client.get("/api/disks").json()["data"]) == 1


def test_chaos_without_keys_duplicates(
    make_server: Callable[..., LocalServer], make_client: Callable[..., httpx.Client]
) -> None:
    server = make_server(chaos_rate=0.0)
    client = make_client(server)
    disk = client.post("/api/disks", json={"name": "chaos"}).json()["data"]["diskId"]
    server.set_chaos(0.3, seed=99)
    body = {"archilMount": {"diskId": disk}, "command": "true"}
    failures: Counter[str] = Counter()
    for _ in range(30):
        _create_with_retries(client, body, None, failures)
    server.set_chaos(0.0)
    assert _count(client) > 30


def test_health_is_exempt_from_chaos(make_server: Callable[..., LocalServer]) -> None:
    server = make_server(chaos_rate=1.0, chaos_seed=5)
    with httpx.Client(base_url=server.base_url, trust_env=False) as c:
        assert all(c.get("/healthz").status_code == 200 for _ in range(30))
