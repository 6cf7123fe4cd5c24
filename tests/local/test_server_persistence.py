"""State survives a restart of the local control plane, graceful or not."""

from __future__ import annotations

import glob
import json
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
from httpx_ws import connect_ws

from archil._process import OutputCursor, start_message
from archil.local.cgroups import Cgroups
from archil.local.embedded import LocalServer
from archil.local.state import State, StateError

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": key}, trust_env=False, timeout=60)


def _create(c: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    body.setdefault("base_image", f"python:{PY}-slim")
    r = c.post("/api/sandboxes", params={"wait": "true"}, json=body, headers=headers)
    assert r.status_code == 202 and r.json()["data"]["status"] == "running", r.text
    return r


def _url(c: httpx.Client, sid: str) -> str:
    r = c.post(f"/api/sandboxes/{sid}/connections")
    assert r.status_code == 200, r.text
    url: str = r.json()["data"]["url"]
    return url


def _run(c: httpx.Client, sid: str, command: str) -> tuple[str, dict[str, Any]]:
    """Run ``command`` to its end; its stdout and its ``exit`` event."""
    cursor = OutputCursor()
    with connect_ws(_url(c, sid), c) as ws:
        ws.send_text(start_message(command))
        while True:
            data = ws.receive().data
            if isinstance(data, str):
                event: dict[str, Any] = json.loads(data)
                if event["type"] in ("exit", "error"):
                    return cursor.text(1), event
            else:
                cursor.feed(bytes(data))


def _spawn(c: httpx.Client, sid: str, command: str) -> None:
    """Start ``command`` and leave it running (the socket is closed, the process is not)."""
    with connect_ws(_url(c, sid), c) as ws:
        ws.send_text(start_message(command))
        assert json.loads(ws.receive().data)["type"] == "started"


def _destroy_all(c: httpx.Client) -> None:
    for sb in c.get("/api/sandboxes").json()["data"]["sandboxes"]:
        c.post(f"/api/sandboxes/{sb['sandbox_id']}/stop")
        assert c.delete(f"/api/sandboxes/{sb['sandbox_id']}").status_code == 204


def _sandbox_pids(sid: str) -> list[int]:
    marker = f"ARCHIL_SANDBOX_ID={sid}\0".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _cmdlines(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out


def test_everything_survives_a_restart(
    make_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = make_server(data)
    key = first.api_key
    idem = {"Idempotency-Key": "idem-1"}
    with _client(first.base_url, key) as c:
        disk = c.post("/api/disks", json={"name": "keep"}).json()["data"]["diskId"]
        token = c.post("/api/tokens", json={"name": "ci"}).json()["data"]["token"]
        c.put(f"/s3/{disk}/kept.txt", content=b"still here")
        body = {
            "name": "finished",
            "base_image": f"python:{PY}-slim",
            "mounts": [{"disk_id": disk}],
        }
        created = _create(c, idem, **body)
        finished = created.json()["data"]["sandbox_id"]
        command = "echo done > /root/done && echo wrote > /mnt/archil/by-sandbox.txt"
        assert _run(c, finished, command)[1]["exit_code"] == 0
        stopped = c.post(f"/api/sandboxes/{finished}/stop").json()["data"]
        assert stopped["status"] == "stopped" and stopped["checkpoint"]
        running = _create(c, name="running").json()["data"]["sandbox_id"]
        assert _run(c, running, "echo x > /root/x")[1]["exit_code"] == 0
        _spawn(c, running, "sleep 600")
        assert _sandbox_pids(running)
    first.stop()
    assert _sandbox_pids(running) == []

    second = make_server(data)
    assert second.api_key == key
    with _client(second.base_url, key) as c:
        try:
            assert [d["id"] for d in c.get("/api/disks").json()["data"]] == [disk]
            assert c.get(f"/s3/{disk}/kept.txt").content == b"still here"
            assert c.get(f"/s3/{disk}/by-sandbox.txt").content == b"wrote\n"
            done = c.get(f"/api/sandboxes/{finished}").json()["data"]
            assert done["status"] == "stopped" and done["checkpoint"] == stopped["checkpoint"]
            assert done["name"] == "finished" and done["mounts"] == stopped["mounts"]
            fork = c.post(
                f"/api/sandboxes/{finished}/fork",
                params={"wait": "true"},
                json={"checkpoint": stopped["checkpoint"], "name": "child"},
            )
            assert fork.status_code == 202 and fork.json()["data"]["status"] == "running", fork.text
            child = fork.json()["data"]["sandbox_id"]
            assert _run(c, child, "cat /root/done")[0] == "done\n"
            c.post(f"/api/sandboxes/{child}/stop")
            assert c.delete(f"/api/sandboxes/{child}").status_code == 204

            was_running = c.get(f"/api/sandboxes/{running}").json()["data"]
            assert was_running["status"] == "stopped" and was_running["checkpoint"]
            assert was_running["exit_reason"] == "the local control plane shut down"
            assert was_running["finished_at"]
            restarted = c.post(f"/api/sandboxes/{running}/start", params={"wait": "true"})
            assert restarted.json()["data"]["status"] == "running", restarted.text
            assert _run(c, running, "cat /root/x; pgrep -x sleep || echo gone")[0] == "x\ngone\n"

            replay = c.post("/api/sandboxes", params={"wait": "true"}, json=body, headers=idem)
            assert replay.json()["data"]["sandbox_id"] == finished
            assert replay.headers["idempotent-replayed"] == "true"
            assert replay.content == created.content
            listed = c.get("/api/sandboxes").json()["data"]["sandboxes"]
            assert [s["sandbox_id"] for s in listed] == [finished, running]
        finally:
            _destroy_all(c)
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


def _sandbox_cgroups(sid: str) -> list[str]:
    return sorted(glob.glob(f"/sys/fs/cgroup/**/archil/**/{sid}.*", recursive=True))


def _cgroup_pids_of(paths: list[str]) -> set[int]:
    pids: set[int] = set()
    for path in paths:
        for dirpath, _, files in os.walk(path):
            for name in {"cgroup.procs", "tasks"} & set(files):
                with open(os.path.join(dirpath, name)) as f:
                    pids |= {int(x) for x in f.read().split()}
    return pids


def test_a_crash_stops_running_sandboxes_and_kills_them(
    cli_server: dict[str, Any], make_server: Callable[..., LocalServer]
) -> None:
    with _client(cli_server["url"], cli_server["key"]) as c:
        disk = c.post("/api/disks", json={"name": "d"}).json()["data"]["diskId"]
        sid = _create(c, mounts=[{"disk_id": disk}]).json()["data"]["sandbox_id"]
        assert _run(c, sid, "echo x > /root/x")[1]["exit_code"] == 0
        _spawn(c, sid, "sleep 600")
    pids = _sandbox_pids(sid)
    assert any("sleep 600" in cmd for cmd in _cmdlines(pids)), _cmdlines(pids)
    cgroups = _sandbox_cgroups(sid)
    detected = Cgroups.detect()
    assert bool(cgroups) == (detected.memory_limit or detected.freezer), detected.reason
    assert set(pids) <= _cgroup_pids_of(cgroups) or not cgroups
    cli_server["proc"].send_signal(signal.SIGKILL)
    cli_server["proc"].wait(10)
    deadline = time.monotonic() + 10
    while (_sandbox_pids(sid) or _cgroup_pids_of(cgroups)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_pids(sid) == [], "a sandbox outlived the server process"
    assert _cgroup_pids_of(cgroups) == set(), "a process is left in the sandbox's cgroups"
    assert all(os.path.isdir(cg) for cg in cgroups)
    stale = time.time() - 120
    for cg in cgroups:
        os.utime(cg, (stale, stale))

    server = make_server(cli_server["data"])
    assert server.api_key == cli_server["key"]
    assert server.app is not None
    assert server.app.plane.runtime.capabilities["cgroup"] == detected.version
    assert [cg for cg in cgroups if os.path.exists(cg)] == []
    with _client(server.base_url, server.api_key) as c:
        try:
            record = c.get(f"/api/sandboxes/{sid}").json()["data"]
            assert record["status"] == "stopped"
            assert record["exit_reason"] == "the local control plane restarted"
            assert record["finished_at"] and record["checkpoint"]
            r = c.post(f"/api/sandboxes/{sid}/start", params={"wait": "true"})
            assert r.json()["data"]["status"] == "running", r.text
            assert _run(c, sid, "cat /root/x")[0] == "x\n"
        finally:
            _destroy_all(c)


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
