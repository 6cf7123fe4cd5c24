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


RESERVED_KEYS = [
    "with space/and more spaces.txt",
    "plus+sign+key",
    "percent%20not-an-escape%2F.bin",
    "unicode/ünïcødé-名前-😀.txt",
    "mixed/a b+c%d é?#&=.dat",
]


@pytest.mark.parametrize("size", [0, 1])
async def test_tiny_objects_through_multipart(sdk: AsyncArchil, size: int) -> None:
    disk = await _disk(sdk)
    body = os.urandom(size)
    upload = await sdk.objects.multipart.create(disk, "tiny.bin")
    part = await sdk.objects.multipart.upload_part(disk, "tiny.bin", upload.upload_id, 1, body)
    info = await sdk.objects.multipart.complete(disk, "tiny.bin", upload.upload_id, [part])
    assert info.size == size
    assert info.etag is not None and info.etag.endswith("-1")
    assert await sdk.objects.get(disk, "tiny.bin") == body
    if size:
        # The same through put(): any body above the threshold goes in parts.
        info = await sdk.objects.put(disk, "put.bin", body, multipart_threshold=0)
        assert info.etag is not None and info.etag.endswith("-1")
        assert await sdk.objects.get(disk, "put.bin") == body
    assert (await sdk.objects.multipart.list_uploads(disk)).uploads == []


async def test_a_200_mb_object_through_multipart_and_ranges(
    sdk: AsyncArchil, tmp_path: Path
) -> None:
    disk = await _disk(sdk)
    src = _random_file(tmp_path / "200.bin", 200 * MIB + 7)
    info = await sdk.objects.upload_file(disk, "big/200.bin", src)
    assert info.size == src.stat().st_size
    assert info.etag is not None and info.etag.endswith("-26")  # 8 MiB parts
    dst = tmp_path / "back.bin"
    got = await sdk.objects.download_file(disk, "big/200.bin", dst)
    assert got.size == info.size
    assert _sha(dst) == _sha(src)
    src.unlink()
    dst.unlink()
    await sdk.objects.delete(disk, "big/200.bin")


async def test_reserved_characters_in_keys_round_trip(sdk: AsyncArchil, tmp_path: Path) -> None:
    disk = await _disk(sdk)
    for n, key in enumerate(RESERVED_KEYS):
        body = f"{n}:{key}".encode()
        await sdk.objects.put(disk, key, body)
        assert await sdk.objects.get(disk, key) == body
        assert (await sdk.objects.head(disk, key)).size == len(body)
    listed = sorted([o.key async for o in sdk.objects.list(disk)])
    assert listed == sorted(RESERVED_KEYS)
    # Through a multipart upload and a ranged download too.
    key = RESERVED_KEYS[-1]
    data = os.urandom(6 * MIB)
    info = await sdk.objects.put(disk, key, data, multipart_threshold=0, part_size=5 * MIB)
    assert info.etag is not None and info.etag.endswith("-2")
    dst = tmp_path / "ranged.bin"
    await sdk.objects.download_file(disk, key, dst, part_size=5 * MIB)
    assert dst.read_bytes() == data
    await sdk.objects.delete_many(disk, RESERVED_KEYS)
    assert [o async for o in sdk.objects.list(disk)] == []


async def test_multipart_mistakes_are_refused_as_s3_refuses_them(sdk: AsyncArchil) -> None:
    disk = await _disk(sdk)
    mp = sdk.objects.multipart
    upload = await mp.create(disk, "m.bin")
    one = await mp.upload_part(disk, "m.bin", upload.upload_id, 1, os.urandom(5 * MIB))
    two = await mp.upload_part(disk, "m.bin", upload.upload_id, 2, b"tail")
    wrong_etag = one.model_copy(update={"etag": '"' + "0" * 32 + '"'})
    missing = archil.UploadedPart(part_number=3, etag=two.etag)
    for parts, code in (
        ([wrong_etag, two], "InvalidPart"),
        ([one, two, missing], "InvalidPart"),
    ):
        with pytest.raises(archil.BadRequestError) as err:
            await mp.complete(disk, "m.bin", upload.upload_id, parts)
        assert err.value.code == code
    with pytest.raises(archil.NotFoundError):
        await sdk.objects.head(disk, "m.bin")
    # An upload id belongs to its key and its disk.
    other_disk = await _disk(sdk)
    for d, k in ((disk, "other.bin"), (other_disk, "m.bin")):
        with pytest.raises(archil.NotFoundError) as missing_upload:
            await mp.upload_part(d, k, upload.upload_id, 1, b"x")
        assert missing_upload.value.code == "NoSuchUpload"
    # Parts listed out of order are put in order (the gateway refuses any other order).
    info = await mp.complete(disk, "m.bin", upload.upload_id, [two, one])
    assert info.size == 5 * MIB + 4
    for bad in (0, 10_001):
        with pytest.raises(ValueError, match="part_number"):
            await mp.upload_part(disk, "m.bin", upload.upload_id, bad, b"x")


class _HalfThenDrop(httpx.AsyncByteStream):
    """Sends the first half of a body, then the connection drops."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body[: len(self.body) // 2]
        raise httpx.WriteError("the connection dropped in the middle of the part")


class DropPartOnce(httpx.AsyncBaseTransport):
    """A real transport that drops the connection once, halfway through one part's body."""

    def __init__(self, part_number: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.part = f"partNumber={part_number}"
        self.dropped = False
        self.parts_sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        query = request.url.query.decode()
        if request.method == "PUT" and "partNumber=" in query:
            number = query.split("partNumber=")[1].split("&")[0]
            self.parts_sent.append(number)
            if self.part in query and not self.dropped:
                self.dropped = True
                body = await request.aread()
                request = httpx.Request(
                    request.method,
                    request.url,
                    headers=request.headers,
                    stream=_HalfThenDrop(body),
                )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_part_dropped_mid_body_is_the_only_one_sent_again(
    shared_server: LocalServer, tmp_path: Path
) -> None:
    transport = DropPartOnce(part_number=3)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        AsyncArchil(
            base_url=shared_server.base_url, api_key=shared_server.api_key, http_client=http
        ) as sdk,
    ):
        disk = await _disk(sdk)
        src = _random_file(tmp_path / "src.bin", 5 * 5 * MIB + 99)
        info = await sdk.objects.upload_file(disk, "f.bin", src, part_size=5 * MIB, concurrency=2)
        assert transport.dropped
        assert sorted(transport.parts_sent, key=int) == ["1", "2", "3", "3", "4", "5", "6"]
        dst = tmp_path / "dst.bin"
        await sdk.objects.download_file(disk, "f.bin", dst)
        assert _sha(dst) == _sha(src)
        assert info.size == src.stat().st_size
        assert (await sdk.objects.multipart.list_uploads(disk)).uploads == []
