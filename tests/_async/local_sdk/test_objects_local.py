"""Large objects through the SDK and the real local control plane: multipart, ranges, bulk delete, append."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

import archil
from archil._async.client import AsyncArchil
from archil.local.embedded import LocalServer

MIB = 1024 * 1024
ServerFactory = Callable[..., LocalServer]


@pytest.fixture
async def sdk(shared_server: LocalServer) -> AsyncIterator[AsyncArchil]:
    client = AsyncArchil(base_url=shared_server.base_url, api_key=shared_server.api_key)
    yield client
    await client.aclose()


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(MIB, left)
            f.write(os.urandom(n))
            left -= n
    return path


def _staged(server: LocalServer) -> list[Path]:
    return [p for p in (server.data_dir / "disks" / ".multipart").rglob("*") if p.is_file()]


async def _disk(sdk: AsyncArchil) -> str:
    return (await sdk.disks.create(f"o-{uuid.uuid4().hex[:12]}")).id


class RequestLog:
    """An httpx client whose requests (method, query, Range) are recorded."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    async def hook(self, request: httpx.Request) -> None:
        self.seen.append(
            (request.method, request.url.query.decode(), request.headers.get("range", ""))
        )

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"request": [self.hook]}, trust_env=False)


async def test_a_50_mb_upload_goes_multipart_intact(
    shared_server: LocalServer, tmp_path: Path
) -> None:
    log = RequestLog()
    async with (
        log.client() as http,
        AsyncArchil(
            base_url=shared_server.base_url, api_key=shared_server.api_key, http_client=http
        ) as sdk,
    ):
        disk = await _disk(sdk)
        src = _random_file(tmp_path / "big.bin", 50 * MIB + 12345)
        info = await sdk.objects.upload_file(disk, "data/big.bin", src, part_size=5 * MIB)
        assert info.size == src.stat().st_size
        assert info.etag is not None and info.etag.endswith("-11")
        parts = [q for m, q, _ in log.seen if m == "PUT" and "partNumber" in q]
        assert len(parts) == 11
        dst = tmp_path / "back.bin"
        got = await sdk.objects.download_file(disk, "data/big.bin", dst, part_size=5 * MIB)
        assert _sha(dst) == _sha(src)
        assert got.etag == info.etag and got.size == info.size
        ranges = [r for m, _, r in log.seen if m == "GET" and r]
        assert len(ranges) == 1 + 7  # the first 16 MiB, then 5 MiB ranges
        assert (await sdk.objects.head(disk, "data/big.bin")).etag == info.etag

        data = src.read_bytes()
        info = await sdk.objects.put(disk, "bytes.bin", data, part_size=5 * MIB, concurrency=8)
        assert info.etag is not None and info.etag.endswith("-11")
        assert hashlib.sha256(await sdk.objects.get(disk, "bytes.bin")).digest() == (
            hashlib.sha256(data).digest()
        )
        assert (await sdk.objects.multipart.list_uploads(disk)).uploads == []


async def test_parts_failing_transiently_are_retried(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    # One request in four fails (503, 429, a dropped connection; before or after its
    # effect): every part, the creation and the completion are retried through it.
    server = make_server(chaos_rate=0.25, chaos_seed=3)
    async with AsyncArchil(base_url=server.base_url, api_key=server.api_key, max_retries=10) as sdk:
        disk = (await sdk.disks.create("chaos-objects")).id
        src = _random_file(tmp_path / "src.bin", 26 * MIB)
        info = await sdk.objects.upload_file(disk, "f.bin", src, part_size=5 * MIB, concurrency=3)
        dst = tmp_path / "dst.bin"
        await sdk.objects.download_file(disk, "f.bin", dst, part_size=5 * MIB)
        server.set_chaos(0.0)
        assert _sha(dst) == _sha(src)
        assert (await sdk.objects.head(disk, "f.bin")).etag == info.etag
        assert (await sdk.objects.multipart.list_uploads(disk)).uploads == []


async def test_a_failure_mid_upload_aborts_it(sdk: AsyncArchil, shared_server: LocalServer) -> None:
    disk = await _disk(sdk)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield os.urandom(MIB)
        raise OSError("the source failed after 30 MiB")

    with pytest.raises(OSError, match="source failed"):
        await sdk.objects.put(disk, "half.bin", source(), part_size=5 * MIB)
    with pytest.raises(archil.NotFoundError):
        await sdk.objects.head(disk, "half.bin")
    assert [o async for o in sdk.objects.list(disk)] == []
    assert (await sdk.objects.multipart.list_uploads(disk)).uploads == []
    assert _staged(shared_server) == [] or all(
        p.name == "completed.json" for p in _staged(shared_server)
    )


async def test_ctrl_c_mid_upload_aborts_it(sdk: AsyncArchil) -> None:
    disk = await _disk(sdk)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(24):
            yield b"k" * MIB
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await sdk.objects.put(disk, "interrupted.bin", source(), part_size=5 * MIB)
    with pytest.raises(archil.NotFoundError):
        await sdk.objects.head(disk, "interrupted.bin")
    assert (await sdk.objects.multipart.list_uploads(disk)).uploads == []


async def test_a_failed_ranged_download_leaves_the_old_file(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server()
    async with AsyncArchil(base_url=server.base_url, api_key=server.api_key, max_retries=0) as sdk:
        disk = (await sdk.disks.create("ranges")).id
        src = _random_file(tmp_path / "src.bin", 30 * MIB)
        await sdk.objects.upload_file(disk, "f.bin", src)
        dst = tmp_path / "out" / "f.bin"
        dst.parent.mkdir()
        failures = 0
        for seed in range(10):
            dst.write_bytes(b"the previous version")
            server.set_chaos(0.4, seed=seed)
            try:
                await sdk.objects.download_file(disk, "f.bin", dst, part_size=5 * MIB)
            except archil.APIError:
                failures += 1
                assert dst.read_bytes() == b"the previous version"
            else:
                assert _sha(dst) == _sha(src)
            assert [p.name for p in dst.parent.iterdir()] == ["f.bin"]
        server.set_chaos(0.0)
        assert failures > 0
        await sdk.objects.download_file(disk, "f.bin", dst, part_size=5 * MIB, concurrency=6)
        assert _sha(dst) == _sha(src)


async def test_delete_many(sdk: AsyncArchil) -> None:
    disk = await _disk(sdk)
    for key in ("a", "b/c", "b/d", "e"):
        await sdk.objects.put(disk, key, key.encode())
    result = await sdk.objects.delete_many(disk, ["a", "b/c", "never-there"])
    assert result.deleted == ["a", "b/c", "never-there"] and result.errors == []
    assert [o.key async for o in sdk.objects.list(disk)] == ["b/d", "e"]
    quiet = await sdk.objects.delete_many(disk, ["b/d", "e"], quiet=True)
    assert quiet.deleted == [] and quiet.errors == []
    assert [o.key async for o in sdk.objects.list(disk)] == []
    many = await sdk.objects.delete_many(disk, [f"k/{i}" for i in range(1500)], quiet=True)
    assert many.errors == []
    with pytest.raises(ValueError, match=r"keys\[1\]"):
        await sdk.objects.delete_many(disk, ["ok", "../escape"])


async def test_append(sdk: AsyncArchil) -> None:
    disk = await _disk(sdk)
    first = await sdk.objects.append(disk, "logs/app.log", "line 1\n")
    assert first.size == 7
    second = await sdk.objects.append(disk, "logs/app.log", b"line 2\n")
    assert second.size == 14
    assert await sdk.objects.get(disk, "logs/app.log") == b"line 1\nline 2\n"
    assert second.etag == hashlib.md5(b"line 1\nline 2\n").hexdigest()
    big = await sdk.objects.append(disk, "logs/app.log", b"x" * MIB)
    assert big.size == 14 + MIB
    with pytest.raises(ValueError, match="data"):
        await sdk.objects.append(disk, "logs/app.log", b"x" * (MIB + 1))


async def test_the_multipart_lifecycle_by_hand(
    sdk: AsyncArchil, shared_server: LocalServer
) -> None:
    disk = await _disk(sdk)
    mp = sdk.objects.multipart
    upload = await mp.create(disk, "manual.bin", content_type="application/x-manual")
    bodies = {1: os.urandom(5 * MIB), 2: os.urandom(5 * MIB), 3: b"end"}
    for number in (3, 1, 2):
        await mp.upload_part(disk, "manual.bin", upload.upload_id, number, bodies[number])
    listing = await mp.list_parts(disk, "manual.bin", upload.upload_id)
    assert [(p.part_number, p.size) for p in listing.parts] == [(1, 5 * MIB), (2, 5 * MIB), (3, 3)]
    uploads = await mp.list_uploads(disk)
    assert [(u.key, u.upload_id) for u in uploads.uploads] == [("manual.bin", upload.upload_id)]
    with pytest.raises(archil.NotFoundError):
        await sdk.objects.head(disk, "manual.bin")
    info = await mp.complete(disk, "manual.bin", upload.upload_id, listing.parts)
    assert info.size == 10 * MIB + 3 and info.etag is not None and info.etag.endswith("-3")
    assert await sdk.objects.get(disk, "manual.bin") == bodies[1] + bodies[2] + bodies[3]

    other = await mp.create(disk, "dropped.bin")
    await mp.upload_part(disk, "dropped.bin", other.upload_id, 1, b"x")
    await mp.abort(disk, "dropped.bin", other.upload_id)
    await mp.abort(disk, "dropped.bin", other.upload_id)
    assert (await mp.list_uploads(disk)).uploads == []
    too_small = await mp.create(disk, "small.bin")
    a = await mp.upload_part(disk, "small.bin", too_small.upload_id, 1, b"a")
    b = await mp.upload_part(disk, "small.bin", too_small.upload_id, 2, b"b")
    with pytest.raises(archil.BadRequestError) as err:
        await mp.complete(disk, "small.bin", too_small.upload_id, [a, b])
    assert err.value.code == "EntityTooSmall"
    await mp.abort(disk, "small.bin", too_small.upload_id)
