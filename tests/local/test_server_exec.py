"""``POST /api/disks/{id}/exec`` and ``POST /api/exec`` on the local server."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from archil.local.embedded import LocalServer


def test_exec_on_a_disk(client: httpx.Client, disk: str) -> None:
    client.put(f"/s3/{disk}/in.txt", content=b"input")
    r = client.post(
        f"/api/disks/{disk}/exec",
        json={"command": "cat /mnt/archil/in.txt; echo err >&2; echo made > /mnt/archil/out.txt"},
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["exitCode"] == 0
    assert data["stdout"] == "input" and data["stderr"] == "err\n"
    timing = data["timing"]
    assert timing["totalMs"] >= timing["executeMs"] >= 0 and timing["queueMs"] >= 0
    assert client.get(f"/s3/{disk}/out.txt").content == b"made\n"

    r = client.post(f"/api/disks/{disk}/exec", json={"command": "exit 42"})
    assert r.status_code == 200 and r.json()["data"]["exitCode"] == 42


def test_exec_request_errors(client: httpx.Client, disk: str) -> None:
    assert (
        client.post("/api/disks/dsk-0000000000000000/exec", json={"command": "true"}).status_code
        == 404
    )
    for body in ({}, {"command": ""}, {"command": 3}, {"command": "x", "extra": 1}):
        r = client.post(f"/api/disks/{disk}/exec", json=body)
        assert r.status_code == 400, body
    assert client.post(f"/api/disks/{disk}/exec", json={}).json()["error"].startswith("command")


def test_exec_with_several_disks(client: httpx.Client, disk: str) -> None:
    other = client.post("/api/disks", json={"name": "logs"}).json()["data"]["diskId"]
    client.put(f"/s3/{disk}/data.txt", content=b"D")
    client.put(f"/s3/{other}/app/logs/today.log", content=b"L")
    client.put(f"/s3/{other}/secret-root.txt", content=b"S")
    command = (
        "cat /mnt/archil/data/data.txt /mnt/archil/logs/today.log; "
        "ls /mnt/archil/logs; "
        "if echo x > /mnt/archil/logs/new.log 2>/dev/null; then echo WROTE; else echo REFUSED; fi; "
        "echo w > /mnt/archil/data/written.txt"
    )
    r = client.post(
        "/api/exec",
        json={
            "disks": {
                "data": disk,
                "logs": {"disk": other, "subdirectory": "app/logs", "readOnly": True},
            },
            "command": command,
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()["data"]["stdout"]
    assert out.startswith("DL")
    assert "today.log" in out and "secret-root.txt" not in out
    assert "REFUSED" in out and "WROTE" not in out
    assert client.get(f"/s3/{other}/app/logs/new.log").status_code == 404
    assert client.get(f"/s3/{disk}/written.txt").content == b"w\n"


def test_multi_exec_errors_name_the_field(client: httpx.Client, disk: str) -> None:
    cases = [
        ({"disks": {"../up": disk}, "command": "true"}, 400, "disks"),
        ({"disks": {"/abs": disk}, "command": "true"}, 400, "disks"),
        ({"disks": {}, "command": "true"}, 400, "disks"),
        ({"disks": {"a": disk}}, 400, "command"),
        ({"disks": {"a": {"disk": disk, "subdirectory": "../x"}}, "command": "true"}, 400, "disks"),
        (
            {"disks": {"a": {"disk": disk, "subdirectory": "missing/dir"}}, "command": "true"},
            400,
            "disks['a'].subdirectory",
        ),
        ({"disks": {"a": "dsk-0000000000000000"}, "command": "true"}, 404, "disks['a']"),
        ({"disks": {"a": {"disk": "dsk-0000000000000000"}}, "command": "true"}, 404, "disks['a']"),
    ]
    for body, status, field in cases:
        r = client.post("/api/exec", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"].startswith(field), (body, r.json()["error"])


def test_exec_timeout_is_504(
    make_server: Callable[..., LocalServer], make_client: Callable[..., httpx.Client]
) -> None:
    server = make_server(exec_timeout=1.0)
    client = make_client(server)
    disk = client.post("/api/disks", json={"name": "d"}).json()["data"]["diskId"]
    started = time.monotonic()
    r = client.post(f"/api/disks/{disk}/exec", json={"command": "sleep 20"})
    assert r.status_code == 504, r.text
    assert r.json()["code"] == "exec_timeout"
    assert time.monotonic() - started < 5
    r = client.post("/api/exec", json={"disks": {"d": disk}, "command": "sleep 20"})
    assert r.status_code == 504
    assert (
        client.post(f"/api/disks/{disk}/exec", json={"command": "echo quick"}).json()["data"][
            "stdout"
        ]
        == "quick\n"
    )
