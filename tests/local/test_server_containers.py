"""Containers and images through the local server's HTTP API, on the real runtime."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from archil.local.embedded import LocalServer

TERMINAL = {"exited", "failed", "stopped"}


def create(client: httpx.Client, disk: str, command: str | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"archilMount": {"diskId": disk, "env": "production"}, **extra}
    if command is not None:
        body["command"] = command
    r = client.post("/api/containers", json=body)
    assert r.status_code == 201, r.text
    record: dict[str, Any] = r.json()["data"]
    return record


def wait(client: httpx.Client, cid: str, seconds: float = 30) -> dict[str, Any]:
    r = client.get(f"/api/containers/{cid}", params={"wait": seconds}, timeout=seconds + 10)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()["data"]
    return record


def wait_status(client: httpx.Client, cid: str, status: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, Any] = client.get(f"/api/containers/{cid}").json()["data"]
        if record["status"] == status or time.monotonic() > deadline:
            return record
        time.sleep(0.02)


def logs(client: httpx.Client, cid: str, **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"/api/containers/{cid}/logs", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def test_a_container_writes_to_its_disk(client: httpx.Client, disk: str) -> None:
    record = create(
        client,
        disk,
        "echo hello; mkdir -p /mnt/archil/out && echo -n from-container > /mnt/archil/out/x",
        metadata={"experiment": "e1"},
        vcpuCount=2,
        memSizeMib=256,
    )
    cid = record["containerId"]
    assert cid.startswith("cntr-") and len(cid) == 21
    assert record["status"] in ("pending", "starting", "running", "exited")
    assert record["metadata"] == {"experiment": "e1"}
    assert record["vcpuCount"] == 2 and record["memSizeMib"] == 256
    assert record["archilMount"] == {"diskId": disk, "env": "production"}
    assert record["kernelVariant"] == "base"
    assert record["limits"].keys() >= {"memory", "cpu", "isolation"}

    final = wait(client, cid)
    assert final["status"] == "exited" and final["exitCode"] == 0, final
    assert final["startedAt"] and final["finishedAt"]
    assert (
        parse_time(final["createdAt"])
        <= parse_time(final["startedAt"])
        <= parse_time(final["finishedAt"])
    )
    r = client.get(f"/s3/{disk}/out/x")
    assert r.status_code == 200 and r.content == b"from-container"
    stdout = [e["data"] for e in logs(client, cid) if e["stream"] == "stdout"]
    assert stdout == ["hello\n"]


def test_exit_codes_and_failures(client: httpx.Client, disk: str) -> None:
    final = wait(client, create(client, disk, "echo oops >&2; exit 3")["containerId"])
    assert final["status"] == "exited" and final["exitCode"] == 3
    assert "failureReason" not in final
    stderr = [e["data"] for e in logs(client, final["containerId"]) if e["stream"] == "stderr"]
    assert stderr == ["oops\n"]

    final = wait(client, create(client, disk, "sleep 30", timeoutSeconds=1)["containerId"])
    assert final["status"] == "failed" and final["failureReason"]


def test_additional_mounts_and_read_only(client: httpx.Client, disk: str) -> None:
    other = client.post("/api/disks", json={"name": "shared"}).json()["data"]["diskId"]
    client.put(f"/s3/{other}/input.txt", content=b"shared data")
    record = create(
        client,
        disk,
        "cat /datasets/input.txt > /mnt/archil/copied.txt; "
        "if echo nope > /datasets/written.txt; then echo WROTE; else echo REFUSED; fi; "
        "echo rw > /scratch/ok.txt",
        additionalMounts=[
            {"path": "/datasets", "diskId": other, "readOnly": True},
            {"path": "/scratch", "diskId": other, "env": "production"},
        ],
    )
    assert record["additionalMounts"][0] == {
        "path": "/datasets",
        "diskId": other,
        "env": "production",
        "readOnly": True,
    }
    final = wait(client, record["containerId"])
    if not final["limits"]["isolation"]:
        pytest.skip("this machine runs containers without mount namespaces")
    assert final["status"] == "exited", final
    out = "".join(e["data"] for e in logs(client, record["containerId"]) if e["stream"] == "stdout")
    assert "REFUSED" in out and "WROTE" not in out
    assert client.get(f"/s3/{disk}/copied.txt").content == b"shared data"
    assert client.get(f"/s3/{other}/written.txt").status_code == 404
    assert client.get(f"/s3/{other}/ok.txt").content == b"rw\n"


def test_wait_returns_as_soon_as_the_container_ends(client: httpx.Client, disk: str) -> None:
    cid = create(client, disk, "sleep 1")["containerId"]
    started = time.monotonic()
    final = wait(client, cid, 30)
    answered = time.time()
    assert final["status"] == "exited"
    assert time.monotonic() - started < 10
    lag = answered - parse_time(final["finishedAt"])
    assert lag < 0.3, f"the long-poll answered {lag:.3f} s after the container finished"


def test_wait_runs_out(client: httpx.Client, disk: str) -> None:
    cid = create(client, disk, "sleep 30")["containerId"]
    started = time.monotonic()
    record = wait(client, cid, 0.5)
    elapsed = time.monotonic() - started
    assert record["status"] in ("pending", "starting", "running")
    assert 0.4 <= elapsed < 3
    for bad in ("soon", "-1", "nan"):
        r = client.get(f"/api/containers/{cid}", params={"wait": bad})
        assert r.status_code == 400 and r.json()["error"].startswith("wait")


def test_stop_kills_the_container(server: LocalServer, client: httpx.Client, disk: str) -> None:
    cid = create(client, disk, "trap '' TERM; echo ready; sleep 600")["containerId"]
    assert wait_status(client, cid, "running")["status"] == "running"
    assert server.app is not None
    assert server.app.plane.runtime.is_running(cid)
    started = time.monotonic()
    r = client.post(f"/api/containers/{cid}/stop")
    assert r.status_code == 200, r.text
    record = r.json()["data"]
    assert record["status"] == "stopped"
    assert time.monotonic() - started < 10
    assert not server.app.plane.runtime.is_running(cid)
    assert client.post(f"/api/containers/{cid}/stop").json()["data"]["status"] == "stopped"
    assert wait(client, cid, 5)["status"] == "stopped"


def test_a_container_without_a_command_runs_until_stopped(client: httpx.Client, disk: str) -> None:
    cid = create(client, disk, None)["containerId"]
    assert wait_status(client, cid, "running")["status"] == "running"
    assert wait(client, cid, 0.3)["status"] == "running"
    assert client.post(f"/api/containers/{cid}/stop").json()["data"]["status"] == "stopped"


def test_delete(server: LocalServer, client: httpx.Client, disk: str) -> None:
    cid = create(client, disk, "sleep 600")["containerId"]
    wait_status(client, cid, "running")
    r = client.delete(f"/api/containers/{cid}")
    assert r.status_code == 200 and r.json()["data"]["status"] == "stopped"
    assert server.app is not None
    assert not server.app.plane.runtime.is_running(cid)
    assert client.get(f"/api/containers/{cid}").status_code == 404
    assert client.get(f"/api/containers/{cid}/logs").status_code == 404
    assert client.delete(f"/api/containers/{cid}").status_code == 404
    assert not (server.data_dir / "logs" / f"{cid}.jsonl").exists()

    done = create(client, disk, "true")["containerId"]
    wait(client, done)
    assert client.delete(f"/api/containers/{done}").json()["data"]["status"] == "exited"


def test_logs_with_offset_and_follow(client: httpx.Client, disk: str) -> None:
    cid = create(client, disk, "for i in 1 2 3 4 5; do echo line-$i; sleep 0.1; done")[
        "containerId"
    ]
    entries: list[dict[str, Any]] = []
    with client.stream("GET", f"/api/containers/{cid}/logs", params={"follow": "true"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.strip():
                entries.append(json.loads(line))
    assert [e["offset"] for e in entries] == list(range(len(entries)))
    assert {e["stream"] for e in entries} <= {"stdout", "stderr", "system", "build"}
    stdout = [e["data"] for e in entries if e["stream"] == "stdout"]
    assert stdout == [f"line-{i}\n" for i in range(1, 6)]
    assert client.get(f"/api/containers/{cid}").json()["data"]["status"] == "exited"

    all_entries = logs(client, cid)
    assert all_entries == entries
    tail = logs(client, cid, offset=3)
    assert tail == entries[3:]
    assert logs(client, cid, offset=len(entries)) == []
    assert logs(client, cid, offset=1000, follow="true") == []
    for bad in ({"offset": -1}, {"offset": "x"}, {"follow": "maybe"}):
        r = client.get(f"/api/containers/{cid}/logs", params=bad)
        assert r.status_code == 400, bad


def test_follow_streams_while_running(client: httpx.Client, disk: str) -> None:
    cid = create(client, disk, "echo first; sleep 1; echo second")["containerId"]
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    with client.stream("GET", f"/api/containers/{cid}/logs", params={"follow": "true"}) as r:
        for line in r.iter_lines():
            if line.strip():
                entry = json.loads(line)
                if entry["stream"] == "stdout":
                    seen.append((time.monotonic() - started, entry["data"]))
    assert [d for _, d in seen] == ["first\n", "second\n"]
    assert seen[0][0] < seen[1][0] - 0.5, "the first line should arrive before the container ends"


def test_many_containers_at_once(client: httpx.Client, disk: str) -> None:
    n = 20

    def run(i: int) -> dict[str, Any]:
        record = create(client, disk, f"echo {i} > /mnt/archil/out-{i}; sleep 0.2")
        return wait(client, record["containerId"], 60)

    with ThreadPoolExecutor(n) as pool:
        finals = list(pool.map(run, range(n)))
    assert [f["status"] for f in finals] == ["exited"] * n
    assert [f["exitCode"] for f in finals] == [0] * n
    for i in range(n):
        assert client.get(f"/s3/{disk}/out-{i}").content == f"{i}\n".encode()


def test_list_containers(client: httpx.Client, disk: str) -> None:
    other = client.post("/api/disks", json={"name": "other"}).json()["data"]["diskId"]
    ids = [create(client, disk, "true")["containerId"] for _ in range(3)]
    ids.append(create(client, other, "sleep 600")["containerId"])
    for cid in ids[:3]:
        wait(client, cid)
    wait_status(client, ids[3], "running")

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/api/containers", params=params).json()
        seen += [c["containerId"] for c in body["data"]]
        cursor = body.get("nextCursor")
        if not cursor:
            break
    assert seen == ids
    by_disk = client.get("/api/containers", params={"diskId": other}).json()["data"]
    assert [c["containerId"] for c in by_disk] == [ids[3]]
    running = client.get("/api/containers", params={"status": "running"}).json()["data"]
    assert [c["containerId"] for c in running] == [ids[3]]
    exited = client.get("/api/containers", params={"status": "exited"}).json()["data"]
    assert [c["containerId"] for c in exited] == ids[:3]
    r = client.get("/api/containers", params={"status": "sleeping"})
    assert r.status_code == 400 and r.json()["error"].startswith("status")
    r = client.delete(f"/api/disks/{other}")
    assert r.status_code == 409 and r.json()["code"] == "disk_in_use"
    client.post(f"/api/containers/{ids[3]}/stop")
    assert client.delete(f"/api/disks/{other}").status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"archilMount": {"diskId": "dsk-0000000000000000"}}, "archilMount.diskId", 404),
        (
            {
                "archilMount": {"diskId": "DISK"},
                "additionalMounts": [{"path": "/d", "diskId": "dsk-0000000000000000"}],
            },
            "additionalMounts[0].diskId",
            404,
        ),
        ({"archilMount": {"diskId": "DISK"}, "imageId": "img-0000000000000000"}, "imageId", 404),
        (
            {
                "archilMount": {"diskId": "DISK"},
                "additionalMounts": [{"path": "/a/../etc", "diskId": "DISK"}],
            },
            "additionalMounts[0].path",
            400,
        ),
        (
            {
                "archilMount": {"diskId": "DISK"},
                "additionalMounts": [{"path": "relative", "diskId": "DISK"}],
            },
            "additionalMounts[0].path",
            400,
        ),
        (
            {
                "archilMount": {"diskId": "DISK"},
                "additionalMounts": [{"path": "/mnt/archil/x", "diskId": "DISK"}],
            },
            "additionalMounts[0].path",
            400,
        ),
        (
            {
                "archilMount": {"diskId": "DISK"},
                "additionalMounts": [{"path": "/proc", "diskId": "DISK"}],
            },
            "additionalMounts[0].path",
            400,
        ),
        ({"archilMount": {"diskId": "DISK"}, "vcpuCount": 0}, "vcpuCount", 400),
        ({"archilMount": {"diskId": "DISK"}, "vcpuCount": 65}, "vcpuCount", 400),
        ({"archilMount": {"diskId": "DISK"}, "memSizeMib": 1}, "memSizeMib", 400),
        ({"archilMount": {"diskId": "DISK"}, "kernelVariant": "gpu"}, "kernelVariant", 400),
        ({"archilMount": {"diskId": "DISK"}, "ports": [70000]}, "ports", 400),
        ({"archilMount": {"diskId": "DISK"}, "ports": [80, 80]}, "ports", 400),
        ({"archilMount": {"diskId": "DISK"}, "env": {"1BAD": "x"}}, "env", 400),
        ({"archilMount": {"diskId": "DISK"}, "metadata": {"k": 1}}, "metadata.k", 400),
        ({"archilMount": {"diskId": "DISK"}, "timeoutSeconds": 0}, "timeoutSeconds", 400),
        ({"archilMount": {"diskId": "bad id!"}}, "archilMount.diskId", 400),
        ({"archilMount": {}}, "archilMount.diskId", 400),
        ({}, "archilMount", 400),
        ({"archilMount": {"diskId": "DISK"}, "cpu": 1}, "cpu", 400),
    ],
)
def test_bad_container_requests(
    client: httpx.Client, disk: str, body: dict[str, Any], field: str, status: int
) -> None:
    payload = json.loads(json.dumps(body).replace('"DISK"', json.dumps(disk)))
    r = client.post("/api/containers", json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error"].startswith(field), r.json()["error"]
    assert client.get("/api/containers").json()["data"] == []


def test_an_image_build_shows_in_the_container_log(client: httpx.Client, disk: str) -> None:
    dockerfile = (
        "FROM debian:bookworm-slim\nRUN echo building-step-output\nENV GREETING=hi-from-image\n"
    )
    r = client.post("/api/images", json={"dockerfile": dockerfile})
    assert r.status_code == 201, r.text
    image = r.json()["data"]
    assert image["imageId"].startswith("img-")
    assert image["status"] in ("building", "ready")
    again = client.post("/api/images", json={"dockerfile": dockerfile})
    assert again.status_code == 200 and again.json()["data"]["imageId"] == image["imageId"]

    record = create(client, disk, "echo $GREETING", imageId=image["imageId"])
    assert record["imageId"] == image["imageId"]
    entries: list[dict[str, Any]] = []
    with client.stream(
        "GET", f"/api/containers/{record['containerId']}/logs", params={"follow": "true"}
    ) as resp:
        for line in resp.iter_lines():
            if line.strip():
                entries.append(json.loads(line))
    final = wait(client, record["containerId"])
    assert final["status"] == "exited" and final["exitCode"] == 0, (final, entries)
    build = "".join(e["data"] for e in entries if e["stream"] == "build")
    assert "building-step-output" in build
    assert [e["data"] for e in entries if e["stream"] == "stdout"] == ["hi-from-image\n"]
    assert client.get(f"/api/images/{image['imageId']}").json()["data"]["status"] == "ready"


def test_a_failed_build_fails_the_container(client: httpx.Client, disk: str) -> None:
    dockerfile = "FROM debian:bookworm-slim\nRUN echo about-to-fail && exit 7\n"
    image = client.post("/api/images", json={"dockerfile": dockerfile}).json()["data"]
    record = create(client, disk, "echo never", imageId=image["imageId"])
    final = wait(client, record["containerId"], 60)
    assert final["status"] == "failed", final
    assert image["imageId"] in final["failureReason"] and "build" in final["failureReason"]
    got = client.get(f"/api/images/{image['imageId']}").json()["data"]
    assert got["status"] == "failed" and got["failureReason"]
    build = "".join(
        e["data"] for e in logs(client, record["containerId"]) if e["stream"] == "build"
    )
    assert "about-to-fail" in build
    for body in ({}, {"dockerfile": ""}, {"dockerfile": 3}):
        r = client.post("/api/images", json=body)
        assert r.status_code == 400 and r.json()["error"].startswith("dockerfile")


def test_container_environment(client: httpx.Client, disk: str) -> None:
    record = create(
        client,
        disk,
        "echo $ARCHIL_CONTAINER_ID $ARCHIL_DISK_ID $MY_VAR; pwd",
        env={"MY_VAR": "custom"},
        initializationScript="echo init-ran > /mnt/archil/init.txt",
    )
    wait(client, record["containerId"])
    out = "".join(e["data"] for e in logs(client, record["containerId"]) if e["stream"] == "stdout")
    assert f"{record['containerId']} {disk} custom" in out
    for text in (
        client.get(f"/api/containers/{record['containerId']}").text,
        client.get("/api/containers").text,
    ):
        assert "custom" not in text and "init-ran" not in text
    assert client.get(f"/s3/{disk}/init.txt").content == b"init-ran\n"


def test_ports_are_reported(
    client: httpx.Client, disk: str, wait_until: Callable[..., bool]
) -> None:
    port = _free_port()
    cmd = (
        'exec python3 -c "import socket,time; s=socket.socket(); '
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(600)\""
    )
    cid = create(client, disk, cmd, ports=[port])["containerId"]
    record = wait_status(client, cid, "running")
    assert record["ports"] == [
        {"containerPort": port, "hostPort": port, "url": f"http://127.0.0.1:{port}"}
    ]

    def accepts() -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    assert wait_until(accepts, timeout=10)
    client.post(f"/api/containers/{cid}/stop")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_no_process_outlives_the_server(
    make_server: Callable[..., LocalServer], make_client: Callable[..., httpx.Client]
) -> None:
    server = make_server()
    client = make_client(server)
    disk = client.post("/api/disks", json={"name": "d"}).json()["data"]["diskId"]
    cids = [create(client, disk, "sleep 600")["containerId"] for _ in range(3)]
    for cid in cids:
        wait_status(client, cid, "running")
    server.stop()
    leftovers = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if any(cid.encode() in env for cid in cids):
            leftovers.append(pid)
    assert leftovers == []
