"""Containers, disks, tokens and exec against a mocked control plane."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from archil._async.client import AsyncArchil
from archil._errors import APITimeoutError, InternalServerError, NotFoundError
from archil._models import AdditionalMount, ArchilMount, ExecMount, Mount

from .helpers import CHILD, CNTR, DISK, SID, FakeClock, disk_json, err, ok, sandbox_json

EXEC_RESULT = {
    "exitCode": 0,
    "stdout": "hi\n",
    "stderr": "",
    "timing": {"totalMs": 12, "queueMs": 2, "executeMs": 10},
}


OBJ = "http://127.0.0.1:8931/s3"
RECORD_KEY = f".archil/containers/{SID}.json"
EXIT_KEY = f".archil/containers/{SID}.exit"


def container_sandbox(status: str = "running", **extra: Any) -> dict[str, Any]:
    """The sandbox record of a container: its name says it is one, its disk is at /mnt/archil."""
    mounts = [{"disk_id": DISK, "path": "/mnt/archil", "conditional": True}]
    return sandbox_json(status, name="cntr-0123456789abcdef", mounts=mounts, **extra)


def mock_records(
    router: respx.MockRouter, record: dict[str, Any] | None, exit_code: int | None
) -> None:
    """The container's record and exit code on its disk (404 when absent)."""
    router.get(f"{OBJ}/{DISK}/{RECORD_KEY}").mock(
        return_value=httpx.Response(200, json=record) if record is not None else httpx.Response(404)
    )
    router.get(f"{OBJ}/{DISK}/{EXIT_KEY}").mock(
        return_value=httpx.Response(200, content=str(exit_code).encode())
        if exit_code is not None
        else httpx.Response(404)
    )
    router.get(f"/api/sandboxes/{SID}/ports").mock(return_value=ok({"ports": []}))


# -- containers (a facade over sandboxes) ---------------------------------------------


async def test_create_container_without_a_command(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    create = router.post("/api/sandboxes").mock(
        return_value=ok(container_sandbox(kernel_variant="extended"), 202)
    )
    record = router.put(f"{OBJ}/{DISK}/{RECORD_KEY}").mock(return_value=httpx.Response(200))
    router.get(f"/api/sandboxes/{SID}/ports").mock(
        return_value=ok({"ports": [{"port": 8080, "hostname": "127.0.0.1:8080"}]})
    )
    container = await client.containers.create(
        archil_mount=ArchilMount(disk_id=DISK, env="production"),
        vcpu_count=2,
        mem_size_mib=1024,
        kernel_variant="extended",
        additional_mounts=[AdditionalMount(path="/datasets", disk_id="dsk-2", read_only=True)],
        ports=[8080],
        metadata={"experiment_id": "exp_123"},
    )
    assert container.container_id == SID
    assert container.status == "running"
    assert container.metadata == {"experiment_id": "exp_123"}
    assert [(p.container_port, p.url) for p in container.ports] == [(8080, "http://127.0.0.1:8080")]
    body = json.loads(create.calls[0].request.content)
    assert body["name"].startswith("cntr-")
    assert body["mounts"] == [
        {"disk_id": DISK, "path": "/mnt/archil", "read_only": False, "conditional": True},
        {"disk_id": "dsk-2", "path": "/datasets", "read_only": True, "conditional": False},
    ]
    assert (body["vcpu_count"], body["mem_size_mib"], body["ports"]) == (2, 1024, [8080])
    assert body["kernel_variant"] == "extended"
    assert body["idle_ttl_seconds"] == 0
    assert "metadata" not in body and "env" not in body
    assert json.loads(record.calls[0].request.content) == {
        "process_id": None,
        "command": None,
        "metadata": {"experiment_id": "exp_123"},
        "kernel_variant": "extended",
    }


@pytest.mark.parametrize(
    ("sandbox_status", "exit_code", "expected"),
    [
        ("pending", None, "pending"),
        ("running", None, "running"),
        ("running", 3, "exited"),
        ("stopped", 0, "exited"),
        ("stopped", None, "stopped"),
        ("paused", None, "paused"),
        ("failed", None, "failed"),
    ],
)
async def test_container_status_comes_from_its_sandbox_and_its_exit_code(
    client: AsyncArchil,
    router: respx.MockRouter,
    sandbox_status: str,
    exit_code: int | None,
    expected: str,
) -> None:
    router.get(f"/api/sandboxes/{SID}").mock(
        return_value=ok(container_sandbox(sandbox_status, exit_reason="no image"))
    )
    record = {"process_id": "proc-1", "command": "make", "metadata": {"k": "v"}}
    mock_records(router, record, exit_code)
    container = await client.containers.get(SID)
    assert container.status == expected
    assert container.exit_code == exit_code
    assert (container.process_id, container.command, container.metadata) == (
        "proc-1",
        "make",
        {"k": "v"},
    )
    assert container.failure_reason == ("no image" if expected == "failed" else None)
    assert container.is_terminal == (expected in ("exited", "failed", "stopped"))


async def test_list_containers_keeps_only_containers(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    other = sandbox_json(sandbox_id=CHILD, name="not-a-container")
    listing = router.get("/api/sandboxes").mock(
        return_value=ok({"sandboxes": [container_sandbox(), other]})
    )
    mock_records(router, None, 0)
    found = await client.containers.list(disk_id=DISK).to_list()
    assert [c.container_id for c in found] == [SID]
    assert listing.calls[0].request.url.params["filesystem"] == DISK
    assert [c.container_id async for c in client.containers.list(status="exited")] == [SID]
    assert await client.containers.list(status="running").to_list() == []


async def test_stop_and_delete_container(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"/api/sandboxes/{SID}").mock(return_value=ok(container_sandbox()))
    stop = router.post(f"/api/sandboxes/{SID}/stop").mock(
        return_value=ok(container_sandbox("stopped"))
    )
    delete = router.delete(f"/api/sandboxes/{SID}").mock(return_value=httpx.Response(204))
    removed = [
        router.delete(f"{OBJ}/{DISK}/{key}").mock(return_value=httpx.Response(204))
        for key in (RECORD_KEY, EXIT_KEY)
    ]
    mock_records(router, None, None)
    stopped = await client.containers.stop(SID)
    assert stopped.status == "stopped" and stopped.is_terminal
    await client.containers.delete(SID)
    assert stop.call_count == 2 and delete.call_count == 1
    assert all(r.call_count == 1 for r in removed)


async def test_unknown_container_is_not_found(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.get(f"/api/sandboxes/{SID}").mock(return_value=err(404, "no such sandbox"))
    with pytest.raises(NotFoundError):
        await client.containers.get(SID)


async def test_wait_with_a_timeout_polls_for_the_exit_code(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    router.get(f"/api/sandboxes/{SID}").mock(return_value=ok(container_sandbox()))
    router.get(f"{OBJ}/{DISK}/{RECORD_KEY}").mock(return_value=httpx.Response(404))
    router.get(f"/api/sandboxes/{SID}/ports").mock(return_value=ok({"ports": []}))
    router.get(f"{OBJ}/{DISK}/{EXIT_KEY}").mock(
        side_effect=[httpx.Response(404)] * 3 + [httpx.Response(200, content=b"7")]
    )
    final = await client.containers.wait(SID, timeout=60)
    assert final.status == "exited" and final.exit_code == 7
    assert clock.sleeps == [0.25, 0.5, 1.0]


async def test_wait_deadline(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    router.get(f"/api/sandboxes/{SID}").mock(return_value=ok(container_sandbox()))
    mock_records(router, None, None)
    with pytest.raises(APITimeoutError, match=SID):
        await client.containers.wait(SID, timeout=5)
    assert sum(clock.sleeps) == pytest.approx(5.0)


# -- disks --------------------------------------------------------------------------


async def test_create_disk(client: AsyncArchil, router: respx.MockRouter) -> None:
    create = router.post("/api/disks").mock(
        return_value=ok(
            {
                "diskId": DISK,
                "authorizedUsers": [
                    {
                        "type": "token",
                        "nickname": "default",
                        "tokenSuffix": "wxyz",
                        "token": "disk-token-secret-wxyz",
                        "identifier": "u-1",
                    }
                ],
            },
            201,
        )
    )
    router.get(f"/api/disks/{DISK}").mock(
        return_value=ok(
            disk_json(
                name="my-dataset",
                authorizedUsers=[
                    {
                        "type": "token",
                        "nickname": "default",
                        "tokenSuffix": "wxyz",
                        "identifier": "u-1",
                    }
                ],
            )
        )
    )
    disk = await client.disks.create(
        name="my-dataset",
        provider="s3",
        region="us-west-2",
        mounts=[
            Mount(
                provider="s3",
                bucket="my-bucket",
                region="us-west-2",
                access_key_id="AKIAEXAMPLE",
                secret_access_key="bucket-secret-value",
            )
        ],
    )
    assert disk.id == DISK and disk.name == "my-dataset"
    assert len(disk.authorized_users) == 1
    token = disk.authorized_users[0].token
    assert token is not None and token.get_secret_value() == "disk-token-secret-wxyz"
    assert "disk-token-secret-wxyz" not in repr(disk)
    body = json.loads(create.calls[0].request.content)
    assert body == {
        "name": "my-dataset",
        "mounts": [
            {
                "type": "s3",
                "bucketName": "my-bucket",
                "accessKeyId": "AKIAEXAMPLE",
                "secretAccessKey": "bucket-secret-value",
            }
        ],
    }
    assert "Idempotency-Key" in create.calls[0].request.headers


async def test_create_disk_existing(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.post("/api/disks").mock(return_value=ok({"diskId": DISK, "authorizedUsers": []}))
    router.get(f"/api/disks/{DISK}").mock(return_value=ok(disk_json()))
    disk = await client.disks.create("data")
    assert disk.id == DISK and disk.authorized_users == []


async def test_disk_users_directory_delete(client: AsyncArchil, router: respx.MockRouter) -> None:
    add = router.post(f"/api/disks/{DISK}/users").mock(
        return_value=ok({"type": "token", "nickname": "alice", "identifier": "u-2"}, 201)
    )
    remove = router.delete(f"/api/disks/{DISK}/users/token").mock(
        return_value=ok({"message": "removed"})
    )
    directory = router.get(f"/api/disks/{DISK}/directory").mock(
        return_value=ok(
            {
                "inodeId": 1,
                "path": "/",
                "entries": [{"name": "data", "inodeId": 2, "type": "directory"}],
            }
        )
    )
    delete = router.delete(f"/api/disks/{DISK}").mock(return_value=ok(None))

    user = await client.disks.add_user(
        disk_id=DISK,
        user_type="token",
        principal="user@example.com",
        nickname="alice",
        token_suffix="ab12",
    )
    assert user.identifier == "u-2"
    assert json.loads(add.calls[0].request.content) == {
        "type": "token",
        "principal": "user@example.com",
        "nickname": "alice",
        "tokenSuffix": "ab12",
    }
    await client.disks.remove_user(DISK, "token", "u-2")
    assert remove.calls[0].request.url.params["identifier"] == "u-2"
    listing = await client.disks.read_directory(DISK, inode_id=1)
    assert listing.entries[0].name == "data" and listing.entries[0].inode_id == 2
    assert directory.calls[0].request.url.params["inode"] == "1"
    await client.disks.delete(DISK)
    assert delete.call_count == 1


async def test_disk_exec(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.post(f"/api/disks/{DISK}/exec").mock(return_value=ok(EXEC_RESULT))
    result = await client.disks.exec(DISK, "echo hi")
    assert result.exit_code == 0 and result.stdout == "hi\n"
    assert result.timing.execute_ms == 10
    assert json.loads(route.calls[0].request.content) == {"command": "echo hi"}
    assert route.calls[0].request.extensions["timeout"]["read"] >= 300


async def test_exec_timeout_504_is_not_retried(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.post(f"/api/disks/{DISK}/exec").mock(return_value=err(504, "command timed out"))
    with pytest.raises(InternalServerError) as info:
        await client.disks.exec(DISK, "sleep 999")
    assert info.value.status_code == 504
    assert route.call_count == 1


async def test_multi_disk_exec(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.post("/api/exec").mock(return_value=ok(EXEC_RESULT))
    result = await client.exec(
        {"data": DISK, "logs": ExecMount(disk="dsk-2", subdirectory="app/logs", read_only=True)},
        "ls /mnt/archil",
    )
    assert result.exit_code == 0
    assert json.loads(route.calls[0].request.content) == {
        "disks": {
            "data": DISK,
            "logs": {"disk": "dsk-2", "subdirectory": "app/logs", "readOnly": True},
        },
        "command": "ls /mnt/archil",
    }


# -- tokens and images -------------------------------------------------------------------


async def test_tokens(client: AsyncArchil, router: respx.MockRouter) -> None:
    create = router.post("/api/tokens").mock(
        return_value=ok({"id": "t1", "name": "ci", "token": "key-new-secret-token"}, 201)
    )
    delete = router.delete("/api/tokens/t1").mock(return_value=ok({"message": "deleted"}))
    token = await client.tokens.create("ci", description="for CI")
    assert token.token is not None and token.token.get_secret_value() == "key-new-secret-token"
    assert "key-new-secret-token" not in repr(token)
    assert json.loads(create.calls[0].request.content) == {"name": "ci", "description": "for CI"}
    await client.tokens.delete("t1")
    assert delete.call_count == 1


# -- bad input: rejected before any request ------------------------------------------

BAD_INPUT: list[tuple[str, Callable[[AsyncArchil], Any]]] = [
    ("disk_id", lambda c: c.disks.get("")),
    ("disk_id", lambda c: c.disks.get("../etc")),
    ("disk_id", lambda c: c.disks.delete("a/b")),
    ("container_id", lambda c: c.containers.get("")),
    ("container_id", lambda c: c.containers.stop("bad id")),
    ("container_id", lambda c: c.containers.logs("")),
    ("offset", lambda c: c.containers.logs(CNTR, offset=-1)),
    ("timeout", lambda c: c.containers.wait(CNTR, timeout=-1)),
    ("status", lambda c: c.containers.list(status="sleeping")),
    (
        "vcpu_count",
        lambda c: c.containers.create(archil_mount=ArchilMount(disk_id=DISK), vcpu_count=0),
    ),
    (
        "mem_size_mib",
        lambda c: c.containers.create(archil_mount={"disk_id": DISK}, mem_size_mib=-5),
    ),
    (
        "kernel_variant",
        lambda c: c.containers.create(archil_mount={"disk_id": DISK}, kernel_variant="gpu"),  # type: ignore[arg-type]
    ),
    ("ports", lambda c: c.containers.create(archil_mount={"disk_id": DISK}, ports=[70000])),
    ("disk_id", lambda c: c.containers.create(archil_mount={"disk_id": ""})),
    ("archil_mount", lambda c: c.containers.create(archil_mount={"disk": DISK})),
    (
        "path",
        lambda c: c.containers.create(
            archil_mount={"disk_id": DISK},
            additional_mounts=[{"path": "/data/../etc", "disk_id": DISK}],
        ),
    ),
    ("name", lambda c: c.disks.create("bad name!")),
    (
        "provider",
        lambda c: c.disks.create("d", provider="gcs", mounts=[Mount(provider="s3", bucket="b")]),
    ),
    ("provider", lambda c: c.disks.create("d", provider="dropbox")),
    (
        "region",
        lambda c: c.disks.create(
            "d", region="eu", mounts=[Mount(provider="s3", bucket="b", region="us")]
        ),
    ),
    ("inode_id", lambda c: c.disks.read_directory(DISK, inode_id=0)),
    ("nickname", lambda c: c.disks.add_user(DISK, "token")),
    ("user_type", lambda c: c.disks.remove_user(DISK, "root", "x")),  # type: ignore[arg-type]
    ("user_type", lambda c: c.disks.add_user(DISK, "root", nickname="x")),  # type: ignore[arg-type]
    ("identifier", lambda c: c.disks.remove_user(DISK, "token", "")),
    ("command", lambda c: c.disks.exec(DISK, "")),
    ("disks", lambda c: c.exec({"../up": DISK}, "ls")),
    ("disks", lambda c: c.exec({}, "ls")),
    ("token_id", lambda c: c.tokens.delete("")),
    ("image_id", lambda c: c.images.get("a/b")),
]


@pytest.mark.parametrize(("field", "call"), BAD_INPUT, ids=[f for f, _ in BAD_INPUT])
async def test_bad_input_is_rejected_before_any_request(
    client: AsyncArchil,
    router: respx.MockRouter,
    field: str,
    call: Callable[[AsyncArchil], Any],
) -> None:
    with pytest.raises(ValueError, match=field):
        await call(client)
    assert not router.calls
