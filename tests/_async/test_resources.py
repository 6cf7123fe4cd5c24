"""Containers, disks, tokens, images and exec against a mocked control plane."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from archil._async.client import AsyncArchil
from archil._errors import APIConnectionError, APITimeoutError, InternalServerError, NotFoundError
from archil._models import AdditionalMount, ArchilMount, ExecMount, Mount

from .helpers import CNTR, DISK, DroppingStream, FakeClock, container_json, disk_json, err, ok

EXEC_RESULT = {
    "exitCode": 0,
    "stdout": "hi\n",
    "stderr": "",
    "timing": {"totalMs": 12, "queueMs": 2, "executeMs": 10},
}


def log_lines(*entries: tuple[str, int, str]) -> bytes:
    return b"".join(
        json.dumps({"stream": s, "offset": o, "data": d}).encode() + b"\n" for s, o, d in entries
    )


# -- containers -------------------------------------------------------------------


async def test_create_container_body(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.post("/api/containers").mock(
        return_value=ok(container_json("pending", vcpuCount=2), 201)
    )
    container = await client.containers.create(
        archil_mount=ArchilMount(disk_id=DISK, env="production"),
        vcpu_count=2,
        mem_size_mib=1024,
        kernel_variant="extended",
        initialization_script="pip install numpy",
        command="python train.py",
        env={"A": "1"},
        additional_mounts=[AdditionalMount(path="/datasets", disk_id="dsk-2", read_only=True)],
        ports=[8080],
        metadata={"experiment_id": "exp_123"},
        timeout_seconds=600,
    )
    assert container.container_id == CNTR
    assert container.status == "pending"
    body = json.loads(route.calls[0].request.content)
    assert body == {
        "archilMount": {"diskId": DISK, "env": "production"},
        "additionalMounts": [
            {"path": "/datasets", "diskId": "dsk-2", "env": "production", "readOnly": True}
        ],
        "vcpuCount": 2,
        "memSizeMib": 1024,
        "kernelVariant": "extended",
        "initializationScript": "pip install numpy",
        "command": "python train.py",
        "env": {"A": "1"},
        "ports": [8080],
        "metadata": {"experiment_id": "exp_123"},
        "timeoutSeconds": 600,
    }


async def test_get_stop_delete_container(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"/api/containers/{CNTR}").mock(return_value=ok(container_json()))
    stop = router.post(f"/api/containers/{CNTR}/stop").mock(
        return_value=ok(container_json("stopped"))
    )
    delete = router.delete(f"/api/containers/{CNTR}").mock(return_value=ok(None))
    assert (await client.containers.get(CNTR)).status == "running"
    stopped = await client.containers.stop(CNTR)
    assert stopped.status == "stopped" and stopped.is_terminal
    await client.containers.delete(CNTR)
    assert stop.call_count == 1 and delete.call_count == 1


async def test_unknown_container_is_not_found(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.get("/api/containers/invalid_id").mock(return_value=err(404, "no such container"))
    with pytest.raises(NotFoundError):
        await client.containers.get("invalid_id")


async def test_wait_long_polls(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.get(f"/api/containers/{CNTR}").mock(
        side_effect=[ok(container_json("running")), ok(container_json("exited", exitCode=0))]
    )
    final = await client.containers.wait(CNTR)
    assert final.status == "exited" and final.exit_code == 0
    for call in route.calls:
        wait = int(call.request.url.params["wait"])
        assert 1 <= wait <= 30
        assert call.request.extensions["timeout"]["read"] > wait


async def test_wait_polls_when_the_server_ignores_wait(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    route = router.get(f"/api/containers/{CNTR}").mock(
        side_effect=[
            ok(container_json("pending")),
            ok(container_json("starting")),
            ok(container_json("running")),
            ok(container_json("failed", failureReason="oom")),
        ]
    )
    final = await client.containers.wait(CNTR, timeout=60)
    assert final.status == "failed" and final.failure_reason == "oom"
    assert route.call_count == 4
    assert clock.sleeps == [0.25, 0.5, 1.0]


async def test_wait_deadline(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    router.get(f"/api/containers/{CNTR}").mock(return_value=ok(container_json("running")))
    with pytest.raises(APITimeoutError, match=CNTR):
        await client.containers.wait(CNTR, timeout=5)
    assert sum(clock.sleeps) == pytest.approx(5.0)


async def test_logs(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.get(f"/api/containers/{CNTR}/logs").mock(
        return_value=httpx.Response(
            200,
            content=log_lines(("build", 0, "step 1\n"), ("stdout", 1, "hello\n"))
            + b"\n"
            + log_lines(("stderr", 2, "oops\n")),
            headers={"content-type": "application/x-ndjson"},
        )
    )
    entries = [e async for e in client.containers.logs(CNTR)]
    assert [(e.stream, e.offset, e.data) for e in entries] == [
        ("build", 0, "step 1\n"),
        ("stdout", 1, "hello\n"),
        ("stderr", 2, "oops\n"),
    ]
    assert dict(route.calls[0].request.url.params) == {"offset": "0", "follow": "false"}


async def test_logs_follow_resumes_after_a_dropped_connection(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    route = router.get(f"/api/containers/{CNTR}/logs").mock(
        side_effect=[
            httpx.Response(
                200, stream=DroppingStream(log_lines(("stdout", 3, "a\n"), ("stdout", 4, "b\n")))
            ),
            httpx.Response(
                200,
                stream=DroppingStream(
                    log_lines(("stdout", 4, "b\n"), ("stdout", 5, "c\n")), b'{"stream": "std'
                ),
            ),
            httpx.Response(200, content=log_lines(("system", 6, "exited 0\n"))),
        ]
    )
    entries = [e async for e in client.containers.logs(CNTR, follow=True, offset=3)]
    assert [e.offset for e in entries] == [3, 4, 5, 6]
    offsets = [call.request.url.params["offset"] for call in route.calls]
    assert offsets == ["3", "5", "6"]
    assert all(call.request.url.params["follow"] == "true" for call in route.calls)
    assert len(clock.sleeps) == 2


async def test_logs_give_up_after_the_retry_budget(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.get(f"/api/containers/{CNTR}/logs").mock(
        side_effect=lambda request: httpx.Response(200, stream=DroppingStream())
    )
    with pytest.raises(APIConnectionError):
        async for _ in client.containers.logs(CNTR, follow=True, max_retries=2):
            pass


async def test_logs_error_status(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"/api/containers/{CNTR}/logs").mock(return_value=err(404, "gone"))
    with pytest.raises(NotFoundError, match="gone"):
        async for _ in client.containers.logs(CNTR):
            pass


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


async def test_images(client: AsyncArchil, router: respx.MockRouter, clock: FakeClock) -> None:
    create = router.post("/api/images").mock(
        return_value=ok({"imageId": "img-1", "status": "building"}, 201)
    )
    router.get("/api/images/img-1").mock(
        side_effect=[
            ok({"imageId": "img-1", "status": "building"}),
            ok({"imageId": "img-1", "status": "building"}),
            ok({"imageId": "img-1", "status": "ready"}),
        ]
    )
    image = await client.images.create("FROM python:3.11-slim\n")
    assert image.status == "building"
    assert json.loads(create.calls[0].request.content) == {"dockerfile": "FROM python:3.11-slim\n"}
    ready = await client.images.wait("img-1", timeout=60)
    assert ready.status == "ready"
    assert clock.sleeps == [0.5, 0.75]


async def test_image_wait_deadline(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get("/api/images/img-1").mock(
        return_value=ok({"imageId": "img-1", "status": "building"})
    )
    with pytest.raises(APITimeoutError, match="img-1"):
        await client.images.wait("img-1", timeout=3)


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
