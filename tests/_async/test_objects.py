"""The object API: S3-style paths, streaming, XML listings and XML errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx

from archil._async.client import AsyncArchil
from archil._errors import (
    APIConnectionError,
    NotFoundError,
    PermissionDeniedError,
)

from .helpers import DISK, OBJ, DroppingStream, chunked

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def listing(
    keys: list[tuple[str, int]], prefixes: tuple[str, ...] = (), token: str | None = None
) -> bytes:
    contents = "".join(
        f"<Contents><Key>{k}</Key><Size>{s}</Size><ETag>&quot;e-{k}&quot;</ETag>"
        f"<LastModified>2024-05-01T12:00:00.000Z</LastModified></Contents>"
        for k, s in keys
    )
    common = "".join(f"<CommonPrefixes><Prefix>{p}</Prefix></CommonPrefixes>" for p in prefixes)
    more = (
        f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
        if token
        else "<IsTruncated>false</IsTruncated>"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{S3_NS}">'
        f"<Name>{DISK}</Name>{contents}{common}{more}</ListBucketResult>"
    ).encode()


def xml_error(status: int, code: str, message: str) -> httpx.Response:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message><RequestId>r-9</RequestId></Error>"
    return httpx.Response(
        status, content=body.encode(), headers={"content-type": "application/xml"}
    )


async def test_put_bytes(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.put(f"{OBJ}/{DISK}/dir/my%20file.bin").mock(
        return_value=httpx.Response(200, headers={"ETag": '"abc123"'})
    )
    info = await client.objects.put(DISK, "dir/my file.bin", b"\x00\x01\x02")
    assert (info.key, info.size, info.etag) == ("dir/my file.bin", 3, "abc123")
    request = route.calls[0].request
    assert request.content == b"\x00\x01\x02"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.headers["Authorization"].startswith("key-")


async def test_put_text_is_retried(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.put(f"{OBJ}/{DISK}/notes.txt").mock(
        side_effect=[httpx.Response(503), httpx.Response(200)]
    )
    info = await client.objects.put(DISK, "notes.txt", "héllo")
    assert info.size == len("héllo".encode())
    assert [c.request.content for c in route.calls] == ["héllo".encode()] * 2
    assert route.calls[0].request.headers["Content-Type"].startswith("text/plain")


async def test_small_put_stream_is_buffered_and_retried(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    # A stream up to the multipart threshold is read ahead, so it is retried like bytes.
    route = router.put(f"{OBJ}/{DISK}/big").mock(
        side_effect=[httpx.Response(503), httpx.Response(200)]
    )
    info = await client.objects.put(DISK, "big", chunked(b"ab", b"cd"))
    assert info.size == 4
    assert [c.request.content for c in route.calls] == [b"abcd", b"abcd"]


async def test_put_stream(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.put(f"{OBJ}/{DISK}/big").mock(return_value=httpx.Response(200))
    info = await client.objects.put(DISK, "big", chunked(b"ab", b"cd", b"e"), content_type="x/y")
    assert info.size == 5
    assert route.calls[0].request.content == b"abcde"
    assert route.calls[0].request.headers["Content-Type"] == "x/y"


async def test_upload_file_is_retried_by_reopening(
    client: AsyncArchil, router: respx.MockRouter, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 1000
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    route = router.put(f"{OBJ}/{DISK}/up.bin").mock(
        side_effect=[httpx.Response(500), httpx.Response(200, headers={"ETag": "e1"})]
    )
    info = await client.objects.upload_file(DISK, "up.bin", src, chunk_size=4096)
    assert info.size == len(data) and info.etag == "e1"
    assert route.call_count == 2
    for call in route.calls:
        assert call.request.content == data
        assert call.request.headers["Content-Length"] == str(len(data))


async def test_get_and_iter_bytes(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"{OBJ}/{DISK}/a/b.txt").mock(return_value=httpx.Response(200, content=b"x" * 10))
    assert await client.objects.get(DISK, "a/b.txt") == b"x" * 10
    chunks = [c async for c in client.objects.iter_bytes(DISK, "a/b.txt", chunk_size=4)]
    assert chunks == [b"xxxx", b"xxxx", b"xx"]


async def test_iter_bytes_dropped_connection(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"{OBJ}/{DISK}/f").mock(
        return_value=httpx.Response(200, stream=DroppingStream(b"ab"))
    )
    with pytest.raises(APIConnectionError):
        async for _ in client.objects.iter_bytes(DISK, "f"):
            pass


async def test_download_file(client: AsyncArchil, router: respx.MockRouter, tmp_path: Path) -> None:
    data = b"0123456789" * 1000
    router.get(f"{OBJ}/{DISK}/model.bin").mock(
        return_value=httpx.Response(200, content=data, headers={"ETag": '"m1"'})
    )
    target = tmp_path / "model.bin"
    info = await client.objects.download_file(DISK, "model.bin", target, chunk_size=1000)
    assert target.read_bytes() == data
    assert info.size == len(data) and info.etag == "m1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


async def test_failed_download_leaves_no_file(
    client: AsyncArchil, router: respx.MockRouter, tmp_path: Path
) -> None:
    router.get(f"{OBJ}/{DISK}/f").mock(
        return_value=httpx.Response(200, stream=DroppingStream(b"ab"))
    )
    with pytest.raises(APIConnectionError):
        await client.objects.download_file(DISK, "f", tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


async def test_head(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.head(f"{OBJ}/{DISK}/k").mock(
        return_value=httpx.Response(
            200,
            headers={
                "Content-Length": "1234",
                "ETag": '"etag-1"',
                "Last-Modified": "Wed, 01 May 2024 12:00:00 GMT",
            },
        )
    )
    info = await client.objects.head(DISK, "k")
    assert info.size == 1234 and info.etag == "etag-1"
    assert info.last_modified is not None and info.last_modified.year == 2024


async def test_head_missing(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.head(f"{OBJ}/{DISK}/k").mock(return_value=httpx.Response(404))
    with pytest.raises(NotFoundError):
        await client.objects.head(DISK, "k")


async def test_delete(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.delete(f"{OBJ}/{DISK}/k").mock(return_value=httpx.Response(204))
    await client.objects.delete(DISK, "k")
    assert route.call_count == 1


async def test_xml_errors_map_to_exceptions(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"{OBJ}/{DISK}/missing").mock(
        return_value=xml_error(404, "NoSuchKey", "The specified key does not exist.")
    )
    router.get(f"{OBJ}/{DISK}/secret").mock(
        return_value=xml_error(403, "AccessDenied", "Access Denied")
    )
    with pytest.raises(NotFoundError) as info:
        await client.objects.get(DISK, "missing")
    assert info.value.code == "NoSuchKey"
    assert info.value.message == "The specified key does not exist."
    assert info.value.request_id == "r-9"
    with pytest.raises(PermissionDeniedError) as denied:
        await client.objects.get(DISK, "secret")
    assert denied.value.code == "AccessDenied"


async def test_list_walks_continuation_tokens(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.get(f"{OBJ}/{DISK}").mock(
        side_effect=[
            httpx.Response(200, content=listing([("data/a", 1), ("data/b", 2)], token="t-1")),
            httpx.Response(200, content=listing([("data/c", 3)])),
        ]
    )
    objects = [o async for o in client.objects.list(DISK, prefix="data/", page_size=2)]
    assert [(o.key, o.size, o.etag) for o in objects] == [
        ("data/a", 1, "e-data/a"),
        ("data/b", 2, "e-data/b"),
        ("data/c", 3, "e-data/c"),
    ]
    assert objects[0].last_modified is not None
    first, second = (dict(c.request.url.params) for c in route.calls)
    assert first == {"list-type": "2", "prefix": "data/", "max-keys": "2"}
    assert second == {
        "list-type": "2",
        "prefix": "data/",
        "max-keys": "2",
        "continuation-token": "t-1",
    }


async def test_list_page_with_delimiter(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.get(f"{OBJ}/{DISK}").mock(
        return_value=httpx.Response(
            200, content=listing([("top.txt", 5)], prefixes=("data/", "logs/"))
        )
    )
    page = await client.objects.list_page(DISK, delimiter="/")
    assert [o.key for o in page.objects] == ["top.txt"]
    assert page.common_prefixes == ["data/", "logs/"]
    assert page.is_truncated is False and page.next_continuation_token is None
    assert route.calls[0].request.url.params["delimiter"] == "/"


@pytest.mark.parametrize(
    "key", ["", "../escape", "a/../../b", "/abs", "a/./b", "a//b", "\n", "a\nb", "a\r", "x\x7f"]
)
async def test_bad_keys_are_rejected(
    client: AsyncArchil, router: respx.MockRouter, key: str
) -> None:
    with pytest.raises(ValueError, match="key"):
        await client.objects.get(DISK, key)
    with pytest.raises(ValueError, match="key"):
        await client.objects.put(DISK, key, b"x")
    assert not router.calls


async def test_bad_prefix_and_disk(client: AsyncArchil, router: respx.MockRouter) -> None:
    with pytest.raises(ValueError, match="prefix"):
        client.objects.list(DISK, prefix="../")
    with pytest.raises(ValueError, match="disk_id"):
        await client.objects.get("", "k")
    assert not router.calls
