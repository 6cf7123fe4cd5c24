"""State survives a restart of the local control plane, graceful or not."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from archil.local.embedded import LocalServer
from archil.local.state import State, StateError


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": key}, trust_env=False, timeout=30)


def _wait_running(client: httpx.Client, cid: str) -> None:
    deadline = time.monotonic() + 10
    while client.get(f"/api/containers/{cid}").json()["data"]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_everything_survives_a_restart(
    make_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = make_server(data)
    key = first.api_key
    with _client(first.base_url, key) as c:
        disk = c.post("/api/disks", json={"name": "keep"}).json()["data"]["diskId"]
        token = c.post("/api/tokens", json={"name": "ci"}).json()["data"]["token"]
        c.put(f"/s3/{disk}/kept.txt", content=b"still here")
        body = {"archilMount": {"diskId": disk}, "command": "echo done"}
        created = c.post("/api/containers", json=body, headers={"Idempotency-Key": "idem-1"})
        finished = created.json()["data"]["containerId"]
        assert (
            c.get(f"/api/containers/{finished}", params={"wait": 10}).json()["data"]["status"]
            == "exited"
        )
        running = c.post(
            "/api/containers", json={"archilMount": {"diskId": disk}, "command": "sleep 600"}
        )
        running_id = running.json()["data"]["containerId"]
        _wait_running(c, running_id)
    first.stop()

    second = make_server(data)
    assert second.api_key == key
    with _client(second.base_url, key) as c:
        assert [d["id"] for d in c.get("/api/disks").json()["data"]] == [disk]
        assert c.get(f"/s3/{disk}/kept.txt").content == b"still here"
        done = c.get(f"/api/containers/{finished}").json()["data"]
        assert done["status"] == "exited" and done["exitCode"] == 0
        stdout = [
            line
            for line in c.get(f"/api/containers/{finished}/logs").text.splitlines()
            if '"stdout"' in line
        ]
        assert len(stdout) == 1 and "done" in stdout[0]
        was_running = c.get(f"/api/containers/{running_id}").json()["data"]
        assert was_running["status"] == "failed"
        assert "control plane" in was_running["failureReason"]
        replay = c.post("/api/containers", json=body, headers={"Idempotency-Key": "idem-1"})
        assert replay.json()["data"]["containerId"] == finished
        assert replay.headers["idempotent-replayed"] == "true"
        assert len(c.get("/api/containers").json()["data"]) == 2
    with _client(second.base_url, token) as c:
        assert c.get("/api/disks").status_code == 200


@pytest.fixture
def cli_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path / "crash"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "archil.cli",
            "local",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    info: dict[str, Any] = {"proc": proc, "data": data}
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while "key" not in info and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("ARCHIL_BASE_URL="):
            info["url"] = line.split("=", 1)[1].strip()
        if line.startswith("ARCHIL_API_KEY="):
            info["key"] = line.split("=", 1)[1].strip()
    assert "key" in info, "the CLI did not print its URL and key"
    try:
        yield info
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _container_pids(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def test_a_crash_fails_running_containers_and_kills_them(
    cli_server: dict[str, Any], make_server: Callable[..., LocalServer]
) -> None:
    with _client(cli_server["url"], cli_server["key"]) as c:
        disk = c.post("/api/disks", json={"name": "d"}).json()["data"]["diskId"]
        cid = c.post(
            "/api/containers", json={"archilMount": {"diskId": disk}, "command": "sleep 600"}
        ).json()["data"]["containerId"]
        _wait_running(c, cid)
    assert _container_pids(cid)
    cli_server["proc"].send_signal(signal.SIGKILL)
    cli_server["proc"].wait(10)
    deadline = time.monotonic() + 10
    while _container_pids(cid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _container_pids(cid) == [], "a container outlived the server process"

    server = make_server(cli_server["data"])
    assert server.api_key == cli_server["key"]
    with _client(server.base_url, server.api_key) as c:
        record = c.get(f"/api/containers/{cid}").json()["data"]
    assert record["status"] == "failed"
    assert "stopped while the container was running" in record["failureReason"]
    assert record["finishedAt"]
    # The killed server could not remove the container's (now empty) cgroup.
    assert server.app is not None
    base = server.app.plane.runtime.capabilities.get("cgroup_path")
    if isinstance(base, str) and os.path.isdir(os.path.join(base, cid)):
        os.rmdir(os.path.join(base, cid))


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    State(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(StateError, match="newer archil"):
        State(db)


def test_the_schema_is_versioned(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    State(db).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    State(db).close()
