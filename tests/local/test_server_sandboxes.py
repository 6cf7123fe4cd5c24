"""The sandbox API of the local control plane, over real HTTP and the process WebSocket."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, connect_ws

from archil._process import OutputCursor, attach_message, kill_message, start_message
from archil.local.embedded import LocalServer

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("sandboxes"), stop_grace=2.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def c(srv: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=srv.base_url, headers={"Authorization": srv.api_key}, timeout=60, trust_env=False
    ) as client:
        yield client


@pytest.fixture
def disk(c: httpx.Client) -> str:
    r = c.post("/api/disks", json={"name": f"d-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    disk_id: str = r.json()["data"]["diskId"]
    return disk_id


def create(c: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("base_image", f"python:{PY}-slim")
    r = c.post("/api/sandboxes", params={"wait": "true"}, json=body)
    assert r.status_code == 202, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def destroy(c: httpx.Client, sid: str) -> None:
    c.post(f"/api/sandboxes/{sid}/stop")
    c.delete(f"/api/sandboxes/{sid}")


class Run:
    """A process run to its end over the WebSocket."""

    def __init__(
        self,
        events: list[dict[str, Any]],
        cursor: OutputCursor,
        process_id: str,
        raw: dict[str, bytearray],
    ) -> None:
        self.events = events
        self.cursor = cursor
        self.process_id = process_id
        self.raw = raw

    @property
    def exit(self) -> dict[str, Any]:
        return self.events[-1]

    @property
    def stdout(self) -> str:
        return self.cursor.text(1)

    @property
    def stderr(self) -> str:
        return self.cursor.text(2)


def url_for(c: httpx.Client, sid: str) -> str:
    r = c.post(f"/api/sandboxes/{sid}/connections")
    assert r.status_code == 200, r.text
    url: str = r.json()["data"]["url"]
    return url


def run(
    c: httpx.Client,
    sid: str,
    command: str,
    *,
    stdin: bytes | None = None,
    first: str | None = None,
    stop_after: Callable[[OutputCursor], bool] | None = None,
    **fields: Any,
) -> Run:
    cursor = OutputCursor()
    events: list[dict[str, Any]] = []
    raw: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    process_id = ""
    with connect_ws(url_for(c, sid), c) as ws:
        ws.send_text(first or start_message(command, **fields))
        if stdin is not None:
            ws.send_bytes(stdin)
            ws.send_text(json.dumps({"type": "close_stdin"}))
        while True:
            try:
                message = ws.receive()
            except WebSocketDisconnect:
                break
            data = message.data
            if isinstance(data, str):
                event = json.loads(data)
                events.append(event)
                process_id = event.get("process_id", process_id)
                if event["type"] in ("exit", "error", "killed", "resized"):
                    break
            else:
                out = cursor.feed(bytes(data))
                if out is not None:
                    raw[out.stream] += out.data
                if stop_after is not None and stop_after(cursor):
                    break
    return Run(events, cursor, process_id, raw)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- lifecycle -----------------------------------------------------------------------


def test_create_run_stop_delete(c: httpx.Client, disk: str, srv: LocalServer) -> None:
    sb = create(c, mounts=[{"disk_id": disk}], vcpu_count=1, mem_size_mib=256, name="life")
    assert sb["status"] == "running"
    assert sb["mounts"][0]["path"] == "/mnt/archil"
    assert sb["name"] == "life"
    uuid.UUID(sb["sandbox_id"])
    sid = sb["sandbox_id"]
    r = run(c, sid, "echo out; echo err >&2; echo hi > /mnt/archil/hello.txt; pwd; exit 3")
    assert r.events[0]["type"] == "started"
    assert r.exit["type"] == "exit"
    assert r.exit["status"] == "completed" and r.exit["exit_code"] == 3
    assert r.stdout == "out\n/mnt/archil\n" and r.stderr == "err\n"
    assert r.exit["cursor"] == r.cursor.offset
    assert (srv.data_dir / "disks" / disk / "hello.txt").read_text() == "hi\n"
    listed = c.get("/api/sandboxes", params={"filesystem": disk}).json()["data"]["sandboxes"]
    assert [s["sandbox_id"] for s in listed] == [sid]
    assert c.delete(f"/api/sandboxes/{sid}").status_code == 409
    stopped = c.post(f"/api/sandboxes/{sid}/stop").json()["data"]
    assert stopped["status"] == "stopped" and stopped["checkpoint"]
    assert c.post(f"/api/sandboxes/{sid}/stop").json()["data"]["status"] == "stopped"
    assert c.delete(f"/api/sandboxes/{sid}").status_code == 204
    assert c.get(f"/api/sandboxes/{sid}").status_code == 404


def test_stop_then_start_keeps_the_disk_state_of_the_sandbox(c: httpx.Client) -> None:
    sid = create(c)["sandbox_id"]
    try:
        assert (
            run(c, sid, "echo kept > /root/state && pip --version >/dev/null").exit["exit_code"]
            == 0
        )
        c.post(f"/api/sandboxes/{sid}/stop")
        r = c.post(f"/api/sandboxes/{sid}/start", params={"wait": "true"})
        assert r.status_code in (200, 202) and r.json()["data"]["status"] == "running"
        assert run(c, sid, "cat /root/state").stdout == "kept\n"
    finally:
        destroy(c, sid)


def test_fork_from_a_stopped_checkpoint_is_isolated(c: httpx.Client) -> None:
    parent = create(c)["sandbox_id"]
    child = ""
    try:
        run(c, parent, "echo parent > /root/marker")
        checkpoint = c.post(f"/api/sandboxes/{parent}/stop").json()["data"]["checkpoint"]
        r = c.post(
            f"/api/sandboxes/{parent}/fork",
            params={"wait": "true"},
            json={"checkpoint": checkpoint, "name": "kid"},
        )
        assert r.status_code == 202, r.text
        child = r.json()["data"]["sandbox_id"]
        assert r.json()["data"]["status"] == "running"
        assert run(c, child, "cat /root/marker; echo child > /root/marker").stdout == "parent\n"
        assert c.delete(f"/api/sandboxes/{parent}").status_code == 409  # it has a fork
        c.post(f"/api/sandboxes/{parent}/start", params={"wait": "true"})
        assert run(c, parent, "cat /root/marker").stdout == "parent\n"
        bad = c.post(f"/api/sandboxes/{parent}/fork", json={"checkpoint": "ckpt-nope"})
        assert bad.status_code == 409
    finally:
        if child:
            destroy(c, child)
        destroy(c, parent)


def test_pause_freezes_and_resume_continues(c: httpx.Client) -> None:
    sid = create(c)["sandbox_id"]
    try:
        url = url_for(c, sid)
        with connect_ws(url, c) as ws:
            ws.send_text(start_message("i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done"))
            process_id = json.loads(ws.receive().data)["process_id"]
            ws.receive()
        paused = c.post(f"/api/sandboxes/{sid}/pause").json()["data"]
        assert paused["status"] == "paused" and paused["checkpoint"]
        assert c.post(f"/api/sandboxes/{sid}/connections").status_code == 409
        time.sleep(0.3)
        resumed = c.post(f"/api/sandboxes/{sid}/resume")
        assert resumed.status_code == 200 and resumed.json()["data"]["status"] == "running"
        r = run(
            c, sid, "", first=attach_message(process_id, 0), stop_after=lambda cur: cur.offset > 40
        )
        numbers = [int(x) for x in r.stdout.split()]
        assert numbers[:5] == [1, 2, 3, 4, 5]
        assert run(c, sid, "", first=kill_message(process_id)).events == [{"type": "killed"}]
    finally:
        destroy(c, sid)


# -- the process protocol --------------------------------------------------------------


def test_output_bytes_offsets_and_attach_after_a_drop(c: httpx.Client) -> None:
    sid = create(c)["sandbox_id"]
    try:
        command = "printf 'a\\377b'; printf 'E' >&2; sleep 0.3; printf 'after'"
        partial = run(c, sid, command, stop_after=lambda cur: cur.offset >= 4)
        assert partial.cursor.offset >= 4
        resumed = OutputCursor(partial.cursor.offset)
        with connect_ws(url_for(c, sid), c) as ws:
            ws.send_text(attach_message(partial.process_id, partial.cursor.offset))
            assert json.loads(ws.receive().data) == {
                "type": "attached",
                "process_id": partial.process_id,
            }
            while True:
                message = ws.receive()
                if isinstance(message.data, str):
                    exit_event = json.loads(message.data)
                    break
                resumed.feed(bytes(message.data))
        assert exit_event["status"] == "completed"
        everything = run(c, sid, "", first=attach_message(partial.process_id, 0))
        assert bytes(everything.raw["stdout"]) == b"a\xffbafter"
        assert bytes(everything.raw["stderr"]) == b"E"
        assert everything.stdout == "a\ufffdbafter"
        assert exit_event["cursor"] == 9 == everything.exit["cursor"]
        assert resumed.offset == 9 and resumed.skipped == 0
    finally:
        destroy(c, sid)


def test_stdin_terminal_resize_timeout_and_kill(c: httpx.Client) -> None:
    sid = create(c)["sandbox_id"]
    try:
        assert run(c, sid, "cat", stdin=b"piped\n").stdout == "piped\n"
        tty = run(c, sid, "tty >/dev/null && echo yes; stty size", terminal=(100, 30))
        assert tty.stdout.replace("\r", "") == "yes\n30 100\n"
        timed = run(c, sid, "sleep 30", timeout_seconds=1)
        assert timed.exit["status"] == "timed_out" and timed.exit["exit_code"] is None
        with connect_ws(url_for(c, sid), c) as ws:
            ws.send_text(start_message("sleep 30 & sleep 30"))
            process_id = json.loads(ws.receive().data)["process_id"]
        assert run(c, sid, "", first=kill_message(process_id)).events == [{"type": "killed"}]
        ended = run(c, sid, "", first=attach_message(process_id, 0))
        assert ended.exit["status"] == "cancelled"
        missing = run(c, sid, "", first=attach_message("proc-0000000000000000", 0))
        assert missing.exit["type"] == "error" and missing.exit["error"] == "process_not_found"
        failed_cwd = run(c, sid, "true", cwd="/does/not/exist")
        assert failed_cwd.exit["error"] == "spawn_failed"
    finally:
        destroy(c, sid)


def test_a_connection_url_is_good_for_its_own_sandbox_only(c: httpx.Client) -> None:
    a = create(c)["sandbox_id"]
    b = create(c)["sandbox_id"]
    try:
        url = url_for(c, a)
        foreign = url.replace(f"/sandboxes/{a}/", f"/sandboxes/{b}/")
        with pytest.raises(Exception), connect_ws(foreign, c):  # noqa: B017
            pass
        forged = url.rsplit("token=", 1)[0] + "token=9999999999.deadbeef"
        with pytest.raises(Exception), connect_ws(forged, c):  # noqa: B017
            pass
    finally:
        destroy(c, a)
        destroy(c, b)


# -- mounts ------------------------------------------------------------------------------


def test_mounts_read_only_subdirectory_and_isolation(
    c: httpx.Client, disk: str, srv: LocalServer
) -> None:
    other = c.post("/api/disks", json={"name": f"o-{uuid.uuid4().hex[:6]}"}).json()["data"][
        "diskId"
    ]
    (srv.data_dir / "disks" / other / "sub").mkdir()
    (srv.data_dir / "disks" / other / "sub" / "f.txt").write_text("inside")
    mounts = [
        {"disk_id": disk, "path": "/mnt/archil"},
        {"disk_id": other, "path": "/data", "subdirectory": "sub", "read_only": True},
    ]
    sid = create(c, mounts=mounts)["sandbox_id"]
    try:
        r = run(c, sid, "cat /data/f.txt; touch /data/x 2>&1; ls /mnt/archil >/dev/null; echo ok")
        assert r.stdout.startswith("inside")
        assert "Read-only file system" in r.stdout
        hidden = run(
            c, sid, f"ls {srv.data_dir} 2>&1 || echo hidden; cat /root/.archil 2>/dev/null"
        )
        assert "hidden" in hidden.stdout
        assert not (srv.data_dir / "disks" / other / "sub" / "x").exists()
    finally:
        destroy(c, sid)


def test_a_plain_mount_is_exclusive_and_conditional_mounts_share(
    c: httpx.Client, disk: str
) -> None:
    first = create(c, mounts=[{"disk_id": disk}])["sandbox_id"]
    try:
        second = create(c, mounts=[{"disk_id": disk}])
        assert second["status"] == "failed"
        assert "exclusively" in second["exit_reason"]
        c.delete(f"/api/sandboxes/{second['sandbox_id']}")
        shared = create(c, mounts=[{"disk_id": disk, "conditional": True}])
        assert shared["status"] == "running"
        destroy(c, shared["sandbox_id"])
    finally:
        destroy(c, first)


# -- timeouts, ports, images ---------------------------------------------------------------


def test_idle_ttl_pauses_and_timeout_endpoint(c: httpx.Client) -> None:
    sid = create(c, idle_ttl_seconds=1)["sandbox_id"]
    try:
        assert wait_for(lambda: c.get(f"/api/sandboxes/{sid}").json()["data"]["status"] == "paused")
        c.post(f"/api/sandboxes/{sid}/resume")
        r = c.post(f"/api/sandboxes/{sid}/timeout", json={"idle_ttl_seconds": 0, "timeout": 1})
        assert r.status_code == 200 and r.json()["data"]["idle_ttl_seconds"] == 0
        assert wait_for(lambda: c.get(f"/api/sandboxes/{sid}").json()["data"]["status"] == "paused")
    finally:
        destroy(c, sid)


def test_reap_idle_stops_a_sandbox_whose_idle_ttl_runs_out(tmp_path: Path) -> None:
    server = LocalServer(tmp_path / "reap", stop_grace=2.0, reap_idle=True)
    server.start()
    try:
        with httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": server.api_key},
            timeout=60,
            trust_env=False,
        ) as c:
            sid = create(c, idle_ttl_seconds=1)["sandbox_id"]
            kept = create(c, idle_ttl_seconds=0)["sandbox_id"]
            try:
                assert wait_for(
                    lambda: c.get(f"/api/sandboxes/{sid}").json()["data"]["status"] == "stopped"
                )
                data = c.get(f"/api/sandboxes/{sid}").json()["data"]
                assert data["exit_reason"] == "idle_ttl_seconds ran out"
                assert c.get(f"/api/sandboxes/{kept}").json()["data"]["status"] == "running"
            finally:
                destroy(c, sid)
                destroy(c, kept)
    finally:
        server.stop()


def test_ports(c: httpx.Client) -> None:
    sid = create(c, ports=[8080])["sandbox_id"]
    try:
        assert c.get(f"/api/sandboxes/{sid}/ports").json()["data"]["ports"] == [
            {"port": 8080, "hostname": "127.0.0.1:8080"}
        ]
        assert c.put(f"/api/sandboxes/{sid}/ports/9090").status_code == 201
        assert c.put(f"/api/sandboxes/{sid}/ports/9090").status_code == 200
        assert c.delete(f"/api/sandboxes/{sid}/ports/9090").status_code == 204
        assert c.put(f"/api/sandboxes/{sid}/ports/70000").status_code == 400
    finally:
        destroy(c, sid)


def test_images_and_unavailable_bases(c: httpx.Client) -> None:
    r = c.post("/api/images", json={"source": f"python:{PY}-slim"})
    assert r.status_code == 202
    image = r.json()["data"]
    deadline = time.monotonic() + 60
    while image["status"] == "building" and time.monotonic() < deadline:
        time.sleep(0.2)
        image = c.get(f"/api/images/{image['image_id']}").json()["data"]
    assert image["status"] == "ready"
    sb = create(c, base_image=None, image_id=image["image_id"])
    assert sb["status"] == "running"
    assert (
        run(c, sb["sandbox_id"], "python -c 'import sys; print(sys.version_info[:2])'").exit[
            "exit_code"
        ]
        == 0
    )
    destroy(c, sb["sandbox_id"])
    alpine = c.post("/api/images", json={"source": "alpine:3.20"}).json()["data"]
    assert alpine["status"] == "failed" and alpine["failure_reason"] == "invalid_source"
    failed = create(c, base_image="python:2.7-slim")
    assert failed["status"] == "failed" and failed["exit_reason"]
    c.delete(f"/api/sandboxes/{failed['sandbox_id']}")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mounts": [{"disk_id": "d", "path": "relative"}]}, "mounts"),
        ({"mounts": [{"disk_id": "d", "path": "/a/../b"}]}, "mounts"),
        ({"mounts": [{"disk_id": "a", "path": "/x"}, {"disk_id": "b", "path": "/x"}]}, "mounts"),
        ({"max_ttl_seconds": 0}, "max_ttl_seconds"),
        ({"ports": [0]}, "ports"),
        ({"base_image": "Not A Ref"}, "base_image"),
        ({"base_image": "python:3.11", "image_id": "img-1"}, "image_id"),
        ({"mounts": [{"disk_id": "missing-disk-xyz"}]}, "mounts[0].disk_id"),
    ],
)
def test_bad_creates_name_the_field_and_create_nothing(
    c: httpx.Client, body: dict[str, Any], field: str
) -> None:
    before = len(c.get("/api/sandboxes").json()["data"]["sandboxes"])
    r = c.post("/api/sandboxes", json=body)
    assert r.status_code in (400, 404), r.text
    assert field in r.json()["error"]
    assert len(c.get("/api/sandboxes").json()["data"]["sandboxes"]) == before


def test_process_output_survives_in_files_not_memory(srv: LocalServer, c: httpx.Client) -> None:
    sid = create(c)["sandbox_id"]
    try:
        big = run(c, sid, "head -c 3000000 /dev/zero | tr '\\0' x")
        assert big.cursor.offset == 3_000_000 and big.exit["cursor"] == 3_000_000
        files = list(Path(srv.data_dir / "processes" / sid).glob("*.out"))
        assert files and max(f.stat().st_size for f in files) == 3_000_000
    finally:
        destroy(c, sid)


def test_a_process_start_does_not_hold_up_other_requests(
    c: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spawn waits for the sandbox's agent on a worker thread, not on the event loop."""
    import threading

    from archil.local.runtime import Environment

    sid = create(c)["sandbox_id"]
    entered, release = threading.Event(), threading.Event()
    real_spawn = Environment.spawn

    def slow_spawn(self: Environment, *args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
        return real_spawn(self, *args, **kwargs)

    monkeypatch.setattr(Environment, "spawn", slow_spawn)
    result: list[Run] = []
    starter = threading.Thread(target=lambda: result.append(run(c, sid, "echo started")))
    starter.start()
    try:
        assert entered.wait(10), "the process start never reached the runtime"
        with httpx.Client(
            base_url=c.base_url, headers={"Authorization": c.headers["Authorization"]}
        ) as other:
            r = other.get(f"/api/sandboxes/{sid}", timeout=5)
        assert r.status_code == 200, "a request waited for another sandbox's process start"
    finally:
        release.set()
        starter.join(30)
    assert result and result[0].exit["exit_code"] == 0
    assert result[0].stdout == "started\n"
    destroy(c, sid)
