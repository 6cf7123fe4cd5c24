"""The SDK against the real local control plane: disks, objects, containers, restarts, chaos."""

from __future__ import annotations

import hashlib
import importlib.abc
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import archil
from archil._async.client import AsyncArchil
from archil._compat import agather_bounded
from archil.local.embedded import LocalServer

ServerFactory = Callable[..., LocalServer]


@pytest.fixture
async def sdk(shared_server: LocalServer) -> AsyncIterator[AsyncArchil]:
    client = AsyncArchil(base_url=shared_server.base_url, api_key=shared_server.api_key)
    yield client
    await client.aclose()


def _name() -> str:
    return f"d-{uuid.uuid4().hex[:12]}"


def _live_processes(container_id: str) -> list[int]:
    from procs import processes_with_env  # from tests/, which pytest puts on the path

    return processes_with_env(f"ARCHIL_SANDBOX_ID={container_id}")


async def _run(sdk: AsyncArchil, disk_id: str, command: str, **kwargs: object) -> archil.Container:
    container = await sdk.containers.create(
        archil_mount=archil.ArchilMount(disk_id=disk_id),
        command=command,
        mem_size_mib=256,
        **kwargs,
    )
    return await sdk.containers.wait(container.container_id)


async def test_disk_crud_and_users(sdk: AsyncArchil) -> None:
    name = _name()
    disk = await sdk.disks.create(name)
    assert disk.id.startswith("dsk-") and disk.name == name and disk.status == "available"
    token_user = disk.authorized_users[0]
    assert token_user.token is not None and token_user.token.get_secret_value() not in repr(disk)

    again = await sdk.disks.create(name)  # idempotent by name
    assert again.id == disk.id
    mount = archil.Mount(
        provider="s3", bucket="b", access_key_id="AKID", secret_access_key="s3cr3t-value"
    )
    with pytest.raises(archil.ConflictError):
        await sdk.disks.create(name, mounts=[mount])

    assert disk.id in [d.id for d in await sdk.disks.list()]
    assert [d.id for d in await sdk.disks.list(name=name)] == [disk.id]
    assert (await sdk.disks.get(disk.id)).name == name

    user = await sdk.disks.add_user(disk.id, user_type="token", nickname="alice")
    assert user.nickname == "alice" and user.identifier
    assert "alice" in [u.nickname for u in (await sdk.disks.get(disk.id)).authorized_users]
    assert user.identifier is not None
    await sdk.disks.remove_user(disk.id, "token", user.identifier)
    assert "alice" not in [u.nickname for u in (await sdk.disks.get(disk.id)).authorized_users]

    with_mount = await sdk.disks.create(_name(), mounts=[mount])
    assert "s3cr3t-value" not in (await sdk.disks.get(with_mount.id)).model_dump_json()

    await sdk.disks.delete(disk.id)
    with pytest.raises(archil.NotFoundError):
        await sdk.disks.get(disk.id)


class _ImportLookups(importlib.abc.MetaPathFinder):
    """Records every import that is not already in ``sys.modules``."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        self.names.append(fullname)
        return None


async def test_requests_in_flight_look_up_no_module(sdk: AsyncArchil) -> None:
    # A module lookup on the request path is a search of sys.path on every request
    # (httpcore asks for sniffio on each lock it sets up, for one).
    disk = await sdk.disks.create(_name())

    async def get(_: int) -> str:
        return (await sdk.disks.get(disk.id)).id

    assert [d async for d in agather_bounded(get, range(8), 8)] == [disk.id] * 8
    lookups = _ImportLookups()
    sys.meta_path.insert(0, lookups)
    try:
        assert [d async for d in agather_bounded(get, range(40), 8)] == [disk.id] * 40
    finally:
        sys.meta_path.remove(lookups)
    assert lookups.names == []


async def test_objects_round_trip_small_and_empty(sdk: AsyncArchil) -> None:
    disk = await sdk.disks.create(_name())
    for key, body in (("empty", b""), ("one", b"x"), ("dir/nested/file.txt", b"hello\n")):
        info = await sdk.objects.put(disk.id, key, body)
        assert info.size == len(body)
        assert await sdk.objects.get(disk.id, key) == body
        assert (await sdk.objects.head(disk.id, key)).size == len(body)
    keys = [o.key async for o in sdk.objects.list(disk.id)]
    assert keys == ["dir/nested/file.txt", "empty", "one"]
    page = await sdk.objects.list_page(disk.id, delimiter="/")
    assert page.common_prefixes == ["dir/"]
    await sdk.objects.delete(disk.id, "one")
    with pytest.raises(archil.NotFoundError):
        await sdk.objects.get(disk.id, "one")


async def test_objects_50_mb_streamed_both_ways(sdk: AsyncArchil, tmp_path: Path) -> None:
    disk = await sdk.disks.create(_name())
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(50):
            f.write(os.urandom(1 << 20))
    await sdk.objects.upload_file(disk.id, "big.bin", src)
    dst = tmp_path / "back.bin"
    info = await sdk.objects.download_file(disk.id, "big.bin", dst)
    assert info.size == 50 << 20
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


async def test_bad_keys_and_paths_are_rejected_before_sending(sdk: AsyncArchil) -> None:
    disk = await sdk.disks.create(_name())
    for key in ("../escape", "a/../../x", "/abs", "a/./b"):
        with pytest.raises(ValueError, match="key"):
            await sdk.objects.put(disk.id, key, b"x")
    with pytest.raises(ValueError, match="path"):
        archil.AdditionalMount(path="/data/../etc", disk_id=disk.id)
    with pytest.raises(archil.NotFoundError):
        await sdk.disks.read_directory(disk.id, inode_id=987654321)
    listing = await sdk.disks.read_directory(disk.id)
    assert listing.entries == []


async def test_container_writes_to_its_disk_and_disks_are_isolated(sdk: AsyncArchil) -> None:
    a = await sdk.disks.create(_name())
    b = await sdk.disks.create(_name())
    await sdk.objects.put(b.id, "secret-of-b.txt", b"b only")
    final = await _run(sdk, a.id, "echo from-a > /mnt/archil/x; ls -a /mnt/archil")
    assert final.status == "exited" and final.exit_code == 0
    assert await sdk.objects.get(a.id, "x") == b"from-a\n"
    out = "".join(
        [e.data async for e in sdk.containers.logs(final.container_id) if e.stream == "stdout"]
    )
    assert "x" in out.split() and "secret-of-b.txt" not in out
    with pytest.raises(archil.NotFoundError):
        await sdk.objects.head(b.id, "x")


async def test_read_only_mount_refuses_a_write(sdk: AsyncArchil) -> None:
    a = await sdk.disks.create(_name())
    shared = await sdk.disks.create(_name())
    await sdk.objects.put(shared.id, "data.txt", b"readable")
    final = await _run(
        sdk,
        a.id,
        "cat /datasets/data.txt && echo nope > /datasets/new.txt",
        additional_mounts=[
            archil.AdditionalMount(path="/datasets", disk_id=shared.id, read_only=True)
        ],
    )
    assert final.exit_code != 0
    logs = [e async for e in sdk.containers.logs(final.container_id)]
    assert "readable" in "".join(e.data for e in logs if e.stream == "stdout")
    assert "Read-only file system" in "".join(e.data for e in logs if e.stream == "stderr")
    with pytest.raises(archil.NotFoundError):
        await sdk.objects.head(shared.id, "new.txt")


async def test_wait_is_prompt_and_stop_kills_the_process_tree(sdk: AsyncArchil) -> None:
    disk = await sdk.disks.create(_name())
    t0 = time.monotonic()
    final = await _run(sdk, disk.id, "sleep 0.3")
    assert final.status == "exited" and time.monotonic() - t0 < 5

    c = await sdk.containers.create(
        archil_mount=archil.ArchilMount(disk_id=disk.id),
        command="trap '' TERM; (setsid sleep 300 &); sleep 300",
    )
    deadline = time.monotonic() + 30
    while (
        await sdk.containers.get(c.container_id)
    ).status != "running" and time.monotonic() < deadline:
        await archil._compat.asleep(0.05)
    while len(_live_processes(c.container_id)) < 2 and time.monotonic() < deadline:
        await archil._compat.asleep(0.05)
    assert _live_processes(c.container_id)
    stopped = await sdk.containers.stop(c.container_id)
    final = await sdk.containers.wait(stopped.container_id, timeout=30)
    assert final.status == "stopped"
    assert _live_processes(c.container_id) == []
    with pytest.raises(archil.ContainerError, match=r"output .* is gone: its sandbox is stopped"):
        [e async for e in sdk.containers.logs(c.container_id)]
    await sdk.containers.delete(c.container_id)
    with pytest.raises(archil.NotFoundError):
        await sdk.containers.get(c.container_id)


async def test_twenty_containers_at_once(sdk: AsyncArchil) -> None:
    disk = await sdk.disks.create(_name())

    async def one(i: int) -> archil.Container:
        return await _run(sdk, disk.id, f"echo {i} > /mnt/archil/c{i}")

    finals = [c async for c in agather_bounded(one, range(20), 20)]
    assert [c.exit_code for c in finals] == [0] * 20
    assert len({c.container_id for c in finals}) == 20
    assert sorted([o.key async for o in sdk.objects.list(disk.id, prefix="c")]) == sorted(
        f"c{i}" for i in range(20)
    )


async def test_containers_are_listed_by_disk_and_cleaned_up(sdk: AsyncArchil) -> None:
    disk = await sdk.disks.create(_name())
    mount = archil.ArchilMount(disk_id=disk.id)
    first = await sdk.containers.create(archil_mount=mount, metadata={"run": "1"})
    second = await sdk.containers.create(archil_mount=mount, command="true")
    listed = {c.container_id: c async for c in sdk.containers.list(disk_id=disk.id)}
    assert set(listed) == {first.container_id, second.container_id}
    assert listed[first.container_id].metadata == {"run": "1"}
    assert listed[first.container_id].status == "running"
    for c in (first, second):
        await sdk.containers.delete(c.container_id)
    assert [c async for c in sdk.containers.list(disk_id=disk.id)] == []
    assert [o.key async for o in sdk.objects.list(disk.id, prefix=".archil/containers/")] == []


async def test_a_failed_container_create_leaves_no_sandbox(
    sdk: AsyncArchil, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller of a create that raised has no container id to stop: nothing may be left.
    from archil._async.resources.objects import AsyncObjects
    from archil._async.resources.sandboxes import AsyncSandbox

    disk = await sdk.disks.create(_name())
    mount = archil.ArchilMount(disk_id=disk.id)
    real_run, real_put = AsyncSandbox.run, AsyncObjects.put
    stopped: list[str] = []

    async def run_after_a_stop(self: AsyncSandbox, command: str, **kwargs: Any) -> Any:
        await self.stop()
        stopped.append(self.id)
        return await real_run(self, command, **kwargs)

    monkeypatch.setattr(AsyncSandbox, "run", run_after_a_stop)
    with pytest.raises(archil.SandboxError, match="stopped before its command started") as info:
        await sdk.containers.create(archil_mount=mount, command="touch /mnt/archil/ran")
    assert info.value.sandbox_id == stopped[0]
    monkeypatch.setattr(AsyncSandbox, "run", real_run)

    async def put_fails(self: AsyncObjects, disk_id: str, key: str, *a: Any, **k: Any) -> Any:
        if key.startswith(".archil/containers/"):
            raise archil.APIConnectionError("the record could not be written")
        return await real_put(self, disk_id, key, *a, **k)

    monkeypatch.setattr(AsyncObjects, "put", put_fails)
    with pytest.raises(archil.APIConnectionError, match="could not be written"):
        await sdk.containers.create(archil_mount=mount, command="sleep 300")
    assert await sdk.sandboxes.list(disk_id=disk.id) == []
    assert [o.key async for o in sdk.objects.list(disk.id, prefix="ran")] == []


async def test_wrong_key_is_401(shared_server: LocalServer) -> None:
    bad = AsyncArchil(base_url=shared_server.base_url, api_key="key-wrong", max_retries=0)
    try:
        with pytest.raises(archil.AuthenticationError) as info:
            await bad.disks.list().to_list()
    finally:
        await bad.aclose()
    assert info.value.status_code == 401
    assert shared_server.api_key not in str(info.value)


async def test_restart_keeps_everything(make_server: ServerFactory, tmp_path: Path) -> None:
    data = tmp_path / "persist"
    first = make_server(data)
    async with AsyncArchil(base_url=first.base_url, api_key=first.api_key) as sdk:
        disk = await sdk.disks.create("persistent")
        await sdk.objects.put(disk.id, "kept.txt", b"still here")
        token = await sdk.tokens.create("ci-token")
        done = await _run(sdk, disk.id, "true")
    key = first.api_key
    first.stop()
    second = make_server(data)
    assert second.api_key == key
    async with AsyncArchil(base_url=second.base_url, api_key=second.api_key) as sdk:
        assert (await sdk.disks.get(disk.id)).name == "persistent"
        assert await sdk.objects.get(disk.id, "kept.txt") == b"still here"
        assert token.id in [t.id async for t in sdk.tokens.list()]
        assert (await sdk.containers.get(done.container_id)).status == "exited"


async def test_chaos_100_creates_give_exactly_100_sandboxes(make_server: ServerFactory) -> None:
    server = make_server(chaos_rate=0.2, chaos_seed=7)
    async with AsyncArchil(base_url=server.base_url, api_key=server.api_key, max_retries=8) as sdk:
        # The chaos RNG also hits this request; retries carry it through.
        disk = await sdk.disks.create("chaos-disk")
        mount = archil.SandboxMount(disk_id=disk.id, conditional=True)
        ids = []
        for _ in range(100):
            sandbox = await sdk.sandboxes.create(mounts=[mount], mem_size_mib=128)
            ids.append(sandbox.id)
            await sandbox.stop()
        server.set_chaos(0.0)
        listed = [s.id for s in await sdk.sandboxes.list(disk_id=disk.id)]
        for sid in listed:
            await (await sdk.sandboxes.get(sid)).delete()
    assert len(set(ids)) == 100
    assert sorted(listed) == sorted(ids)


async def test_dropped_process_sockets_lose_and_repeat_no_output(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Chaos cuts process WebSockets mid-stream; each process's output arrives exactly once."""
    caplog.set_level(logging.DEBUG, logger="archil")

    def drops() -> int:
        return sum("dropped the process connection" in r.getMessage() for r in caplog.records)

    server = make_server(chaos_rate=0.0)
    async with AsyncArchil(base_url=server.base_url, api_key=server.api_key, max_retries=8) as sdk:
        sandbox = await sdk.sandboxes.create(mem_size_mib=128)
        server.set_chaos(0.3, seed=5)
        try:
            script = "for i in $(seq 1 40); do echo line-$i; sleep 0.02; done"
            runs = 0
            while drops() < 3 and runs < 20:
                runs += 1
                result = await sandbox.exec(script)
                assert result.exit_code == 0
                assert result.stdout.split() == [f"line-{i}" for i in range(1, 41)]
        finally:
            server.set_chaos(0.0)
            await sandbox.stop()
            await sandbox.delete()
    assert drops() >= 3
    assert any(r.getMessage().startswith("reconnecting") for r in caplog.records)


async def test_a_container_cannot_reach_other_disks_or_the_key(
    sdk: AsyncArchil, shared_server: LocalServer
) -> None:
    a = await sdk.disks.create(_name())
    b = await sdk.disks.create(_name())
    await sdk.objects.put(b.id, "private.txt", b"b only")
    data = shared_server.data_dir
    final = await _run(
        sdk,
        a.id,
        f"cat {data}/api_key; ls -R {data}/disks; cat {data}/disks/*/private.txt; true",
    )
    logs = [e async for e in sdk.containers.logs(final.container_id)]
    out = "".join(e.data for e in logs)
    assert shared_server.api_key not in out
    assert "b only" not in out
    assert "private.txt" not in "".join(e.data for e in logs if e.stream == "stdout")
