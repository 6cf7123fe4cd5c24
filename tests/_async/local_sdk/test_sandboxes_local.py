"""Sandboxes, their processes and images through the SDK against the real local control plane."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import archil
from archil._async.client import AsyncArchil
from archil._async.resources.sandboxes import AsyncSandbox
from archil._compat import asleep
from archil.local.embedded import LocalServer


@pytest.fixture
async def sdk(shared_server: LocalServer) -> AsyncIterator[AsyncArchil]:
    client = AsyncArchil(base_url=shared_server.base_url, api_key=shared_server.api_key)
    yield client
    await client.aclose()


async def _disk(sdk: AsyncArchil) -> str:
    return (await sdk.disks.create(f"sb-{uuid.uuid4().hex[:12]}")).id


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asleep(0.1)
    return await check()


async def _destroy(sandbox: AsyncSandbox) -> None:
    try:
        await sandbox.refresh()
    except archil.NotFoundError:
        return
    if sandbox.status not in ("stopped", "exited", "failed", "deleted"):
        await sandbox.stop()
    await sandbox.delete()


async def test_lifecycle_stop_start_pause_resume_fork_delete(
    sdk: AsyncArchil, shared_server: LocalServer
) -> None:
    disk = await _disk(sdk)
    name = f"life-{uuid.uuid4().hex[:8]}"
    sandbox = await sdk.sandboxes.create(
        name=name,
        base_image="python:3.11-slim",
        mounts=[archil.SandboxMount(disk_id=disk, conditional=True)],
        mem_size_mib=256,
    )
    child: AsyncSandbox | None = None
    try:
        assert sandbox.status == "running" and sandbox.name == name
        assert sandbox.mounts[0].path == "/mnt/archil"
        assert [s.id for s in await sdk.sandboxes.list(disk_id=disk)] == [sandbox.id]
        found = await sdk.sandboxes.find(name)
        assert found is not None and found.id == sandbox.id
        assert (await sdk.sandboxes.get(sandbox.id)).id == sandbox.id

        result = await sandbox.exec(
            "echo out; echo err >&2; echo hi > /mnt/archil/hello.txt; "
            "echo kept > /root/state; pwd; exit 3"
        )
        assert (result.status, result.exit_code) == ("completed", 3)
        assert (result.stdout, result.stderr) == ("out\n/mnt/archil\n", "err\n")
        assert not result.ok
        assert (shared_server.data_dir / "disks" / disk / "hello.txt").read_text() == "hi\n"

        await sandbox.stop()
        assert sandbox.status == "stopped" and sandbox.checkpoint
        await sandbox.start()
        assert sandbox.status == "running"
        assert (await sandbox.exec("cat /root/state")).stdout == "kept\n"

        await sandbox.pause()
        assert sandbox.status == "paused"
        await sandbox.resume()
        assert sandbox.status == "running"

        await sandbox.exec("echo parent > /root/marker")
        child = await sandbox.fork()
        assert child.id != sandbox.id and child.status == "running"
        assert (await child.exec("cat /root/marker; echo child > /root/marker")).stdout == (
            "parent\n"
        )
        await sandbox.refresh()
        assert sandbox.status == "running"  # a live source is resumed after the fork
        assert (await sandbox.exec("cat /root/marker")).stdout == "parent\n"
    finally:
        if child is not None:
            await _destroy(child)
        await _destroy(sandbox)
    with pytest.raises(archil.NotFoundError):
        await sdk.sandboxes.get(sandbox.id)
    assert await sdk.sandboxes.find(name) is None


async def test_process_frames_offsets_attach_kill_and_timeouts(sdk: AsyncArchil) -> None:
    sandbox = await sdk.sandboxes.create(base_image="python:3.11-slim", mem_size_mib=256)
    try:
        # Output that is not UTF-8 keeps its bytes; offsets count both streams.
        process = await sandbox.run("printf 'a\\377b'; printf 'E' >&2; sleep 0.2; printf 'after'")
        pieces = [out async for out in process]
        result = await process.wait()
        stdout = b"".join(p.data for p in pieces if p.stream == "stdout")
        stderr = b"".join(p.data for p in pieces if p.stream == "stderr")
        assert (stdout, stderr) == (b"a\xffbafter", b"E")
        assert result.stdout == "a\ufffdbafter" and result.exit_code == 0
        offsets = [p.offset for p in pieces]
        assert offsets == sorted(offsets) and process.cursor == 9

        # Attach from an offset: only what comes after it.
        again = await sandbox.attach(process.id, offset=4)
        rest = b"".join([out.data async for out in again])
        assert rest == b"after"  # offsets 0-2 "a\\377b", 3 "E", 4-8 "after"

        # Kill: the process ends as cancelled.
        sleeper = await sandbox.run("sleep 30 & sleep 30")
        await sandbox.kill(sleeper.id)
        killed = await sleeper.wait()
        assert killed.status == "cancelled" and killed.exit_code is None

        timed = await sandbox.exec("sleep 30", timeout_seconds=1)
        assert timed.status == "timed_out"

        with pytest.raises(archil.ProcessError):
            await sandbox.attach("proc-0000000000000000")
        with pytest.raises(archil.ProcessError):
            await sandbox.run("true", cwd="/does/not/exist")
    finally:
        await _destroy(sandbox)


async def test_idle_and_max_ttls_pause_the_sandbox(sdk: AsyncArchil) -> None:
    idle = await sdk.sandboxes.create(
        base_image="python:3.11-slim", mem_size_mib=128, idle_ttl_seconds=1
    )
    capped = await sdk.sandboxes.create(base_image="python:3.11-slim", mem_size_mib=128)
    try:
        await capped.set_timeout(timeout=1, idle_ttl_seconds=0)
        assert capped.idle_ttl_seconds == 0

        async def paused(sandbox: AsyncSandbox) -> bool:
            await sandbox.refresh()
            return sandbox.status == "paused"

        assert await _eventually(lambda: paused(idle))
        assert idle.exit_reason == "idle_ttl_seconds ran out"
        assert await _eventually(lambda: paused(capped))
        assert capped.exit_reason == "max_ttl_seconds ran out"
    finally:
        await _destroy(idle)
        await _destroy(capped)


async def test_ports_and_images(sdk: AsyncArchil) -> None:
    image = await sdk.images.build("python:3.11-slim")
    assert image.status == "ready"
    assert (await sdk.images.get(image.image_id)).image_id == image.image_id
    sandbox = await sdk.sandboxes.create(image_id=image.image_id, mem_size_mib=128)
    try:
        python = await sandbox.exec("python -c 'import sys; print(sys.version_info[:2])'")
        assert python.stdout == "(3, 11)\n"
        port = await sandbox.expose_port(8080)
        assert port.port == 8080
        assert [p.port for p in await sandbox.list_ports()] == [8080]
        await sandbox.unexpose_port(8080)
        assert await sandbox.list_ports() == []
    finally:
        await _destroy(sandbox)
    with pytest.raises(archil.ImageBuildError):
        await sdk.images.build("registry.invalid/no/such-image:1")
