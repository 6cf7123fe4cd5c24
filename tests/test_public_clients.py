"""The public clients: archil.Archil (blocking, and ``async with``) and archil.aio.Archil."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest
import respx

import archil
import archil.aio
import fake_sandbox_server
from archil._async.client import AsyncArchil
from archil._async.pagers import AsyncCursorPager
from archil._async.resources.sandboxes import AsyncProcess, AsyncSandbox, AsyncSandboxes
from archil._client import Archil
from archil._sync.pagers import CursorPager
from archil._sync.resources.sandboxes import Process, Sandbox, Sandboxes
from fake_sandbox_server import SANDBOX_ID, FakeSandboxServer, Plan

_fake_sandbox_server = fake_sandbox_server._fake_sandbox_server
sandbox_server = fake_sandbox_server.sandbox_server

BASE = "http://127.0.0.1:8932"
KEY = "key-public-client-test"
DISK = "dsk-0123456789abcdef"
SANDBOX = {
    "sandbox_id": "0b7c1f0e-5d2a-4e8b-9c3f-7a6d5e4c3b2a",
    "name": "cntr-0123456789abcdef",
    "status": "running",
    "vcpu_count": 2,
    "mem_size_mib": 512,
    "max_ttl_seconds": 86400,
    "idle_ttl_seconds": 0,
    "max_concurrent_execs": 8,
    "base_image": "node:24-bookworm",
    "created_at": "2026-01-01T00:00:00Z",
    "last_active_at": "2026-01-01T00:00:00Z",
    "mounts": [{"disk_id": "disk_abc123", "path": "/mnt/archil", "conditional": True}],
}


def ok(data: object, cursor: str | None = None) -> httpx.Response:
    body: dict[str, object] = {"success": True, "data": data}
    if cursor:
        body["nextCursor"] = cursor
    return httpx.Response(200, json=body)


def disk(disk_id: str) -> dict[str, str]:
    return {"id": disk_id, "name": disk_id, "status": "available"}


@pytest.fixture(autouse=True)
def _no_archil_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ARCHIL_API_KEY", "ARCHIL_BASE_URL", "ARCHIL_REGION", "ARCHIL_OBJECT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/disks").mock(
            side_effect=lambda request: (
                ok([disk("dsk-b")])
                if request.url.params.get("cursor") == "c1"
                else ok([disk("dsk-a")], cursor="c1")
            )
        )
        mock.post("/api/sandboxes").mock(
            return_value=httpx.Response(202, json={"success": True, "data": SANDBOX})
        )
        mock.put(url__regex=r"/s3/[^/]+/\.archil/containers/.*").mock(
            return_value=httpx.Response(200)
        )
        yield mock


def test_exports() -> None:
    assert archil.aio.Archil is AsyncArchil
    assert archil.aio.AsyncArchil is AsyncArchil
    assert archil.Archil is Archil
    assert archil.AsyncArchil is AsyncArchil
    assert archil.ArchilMount is archil.aio.ArchilMount


def test_sandbox_exports() -> None:
    assert archil.Sandbox is Sandbox
    assert archil.aio.Sandbox is AsyncSandbox
    assert archil.aio.AsyncSandbox is AsyncSandbox
    assert archil.aio.AsyncSandboxes is AsyncSandboxes
    assert archil.aio.AsyncProcess is AsyncProcess
    for name in (
        "SandboxData",
        "SandboxMount",
        "SandboxPort",
        "SandboxImage",
        "CreateSandboxRequest",
        "ProcessOutput",
        "ProcessResult",
        "SandboxError",
        "ProcessError",
    ):
        assert getattr(archil, name) is getattr(archil.aio, name)
    client = Archil(api_key=KEY, base_url=BASE)
    assert isinstance(client.sandboxes, Sandboxes)
    assert isinstance(AsyncArchil(api_key=KEY, base_url=BASE).sandboxes, AsyncSandboxes)
    assert Process.__name__ == "Process"


def test_importing_archil_does_not_import_the_websocket_client() -> None:
    code = "import sys, archil; archil.Archil; archil.aio; print('httpx_ws' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_processes_can_be_awaited_from_other_tasks(
    sandbox_server: FakeSandboxServer,
) -> None:
    """A process opened in one task may be waited for, and closed, in others."""
    sandbox_server.reset(Plan(chunks=[(1, b"a\n"), (1, b"b\n")]))
    async with AsyncArchil(api_key=sandbox_server.api_key, base_url=sandbox_server.base_url) as c:
        box = await c.sandboxes.get(SANDBOX_ID)
        first, second, third = [await box.run("echo") for _ in range(3)]
        results = await asyncio.gather(first.wait(), second.wait())
        assert [r.stdout for r in results] == ["a\nb\n", "a\nb\n"]
        assert (await asyncio.wait_for(third.wait(), 10)).ok
        sandbox_server.reset(Plan(hold=True))
        held = await box.run("sleep")
        await asyncio.create_task(held.close())
        sandbox_server.reset(Plan(hold=True))
        killed = await box.run("sleep")
        waiting = asyncio.create_task(killed.wait())
        await box.kill(killed.id)
        assert (await asyncio.wait_for(waiting, 10)).status == "cancelled"


def test_an_open_blocking_process_does_not_keep_the_interpreter_alive(
    sandbox_server: FakeSandboxServer,
) -> None:
    sandbox_server.reset(Plan(hold=True))
    code = textwrap.dedent(
        f"""
        import archil
        client = archil.Archil(api_key={sandbox_server.api_key!r}, base_url={sandbox_server.base_url!r})
        process = client.sandboxes.get({SANDBOX_ID!r}).run("sleep 1000")
        print("started", process.id, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("started")


async def test_awaiting_a_listing_gives_a_list(router: respx.MockRouter) -> None:
    async with AsyncArchil(api_key=KEY, base_url=BASE) as client:
        pager = client.disks.list()
        assert isinstance(pager, AsyncCursorPager)
        disks = await pager
        assert isinstance(disks, list)
        assert [d.id for d in disks] == ["dsk-a", "dsk-b"]
        assert [d.id for d in await client.disks.list()] == ["dsk-a", "dsk-b"]


def test_blocking_listing_is_an_iterable_pager(router: respx.MockRouter) -> None:
    with Archil(api_key=KEY, base_url=BASE) as client:
        pager = client.disks.list()
        assert isinstance(pager, CursorPager)
        assert not hasattr(pager, "__await__")
        assert [d.id for d in pager] == ["dsk-a", "dsk-b"]
        assert [d.id for d in pager.to_list()] == ["dsk-a", "dsk-b"]


async def test_seed_async_with(router: respx.MockRouter) -> None:
    async with archil.Archil(api_key=KEY, base_url=BASE) as client:
        assert isinstance(client, AsyncArchil)
        mount = archil.ArchilMount(disk_id="disk_abc123", env="production")
        container = await client.containers.create(
            archil_mount=mount, vcpu_count=2, mem_size_mib=512
        )
        assert container.container_id == SANDBOX["sandbox_id"]
        disks = await client.disks.list()
        assert len(disks) == 2
        aio = client
    assert aio._transport.pool._client is None


def test_blocking_with(router: respx.MockRouter) -> None:
    with archil.Archil(api_key=KEY, base_url=BASE) as client:
        assert isinstance(client, Archil)
        container = client.containers.create(archil_mount=archil.ArchilMount(disk_id=DISK))
        assert container.status == "running"
        assert client.with_options(max_retries=0).config.max_retries == 0
        assert isinstance(client.with_options(timeout=3), Archil)


def test_blocking_client_inside_a_running_event_loop(router: respx.MockRouter) -> None:
    async def notebook_cell() -> list[str]:
        client = Archil(api_key=KEY, base_url=BASE)
        try:
            return [d.id for d in client.disks.list()]
        finally:
            client.close()

    assert asyncio.run(notebook_cell()) == ["dsk-a", "dsk-b"]


def test_config_and_repr() -> None:
    client = Archil(api_key=KEY, base_url=BASE, timeout=12, max_retries=5)
    assert client.config.base_url == BASE
    assert client.config.object_base_url == BASE + "/s3"
    assert (client.config.timeout, client.config.max_retries) == (12.0, 5)
    assert repr(client) == f"Archil(base_url='{BASE}')"
    assert KEY not in repr(client) and KEY not in repr(client.config)


def test_every_lazy_export_resolves_and_is_listed() -> None:
    import archil

    assert set(archil.__all__) == set(archil._EXPORTS) | {"__version__"}
    for name in archil._EXPORTS:
        assert getattr(archil, name) is not None
