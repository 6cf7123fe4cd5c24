"""Multipart uploads, ranged downloads, bulk delete and append, against a mocked gateway."""

from __future__ import annotations

import base64
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from archil._async.client import AsyncArchil
from archil._errors import (
    APIConnectionError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
)
from archil._models import UploadedPart

from .helpers import DISK, OBJ, FakeClock, chunked

MIB = 1024 * 1024
NS = "http://s3.amazonaws.com/doc/2006-03-01/"
UPLOAD_ID = "0123456789abcdef0123456789abcdef"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _xml(root: str, inner: str) -> httpx.Response:
    body = f'<?xml version="1.0"?><{root} xmlns="{NS}">{inner}</{root}>'
    return httpx.Response(200, content=body.encode(), headers={"content-type": "application/xml"})


def _error(status: int, code: str) -> httpx.Response:
    body = f"<Error><Code>{code}</Code><Message>{code} happened</Message></Error>"
    return httpx.Response(
        status, content=body.encode(), headers={"content-type": "application/xml"}
    )


class FakeGateway:
    """A mocked multipart gateway that records what it was sent."""

    def __init__(self, router: respx.MockRouter, key: str = "big.bin") -> None:
        self.key = key
        self.parts: dict[int, bytes] = {}
        self.part_calls: list[int] = []
        self.fail: dict[int, list[httpx.Response]] = {}
        self.completed: list[bytes] = []
        self.complete_answers: list[httpx.Response] = []
        self.aborted = 0
        url = f"{OBJ}/{DISK}/{key}"
        self.create = router.post(url, params={"uploads": ""}).mock(
            return_value=_xml(
                "InitiateMultipartUploadResult",
                f"<Bucket>{DISK}</Bucket><Key>{key}</Key><UploadId>{UPLOAD_ID}</UploadId>",
            )
        )
        self.put_part = router.put(url, params={"uploadId": UPLOAD_ID}).mock(side_effect=self._part)
        self.complete = router.post(url, params={"uploadId": UPLOAD_ID}).mock(
            side_effect=self._complete
        )
        self.abort = router.delete(url, params={"uploadId": UPLOAD_ID}).mock(
            side_effect=self._abort
        )

    def _part(self, request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["partNumber"])
        self.part_calls.append(number)
        assert request.headers["content-length"] == str(len(request.content))
        queued = self.fail.get(number)
        if queued:
            return queued.pop(0)
        self.parts[number] = request.content
        return httpx.Response(200, headers={"ETag": f'"{_md5(request.content)}"'})

    def _complete(self, request: httpx.Request) -> httpx.Response:
        self.completed.append(request.content)
        if self.complete_answers:
            return self.complete_answers.pop(0)
        return _xml("CompleteMultipartUploadResult", f"<ETag>&quot;{self.etag()}&quot;</ETag>")

    def _abort(self, request: httpx.Request) -> httpx.Response:
        self.aborted += 1
        return httpx.Response(204)

    def etag(self) -> str:
        numbers = sorted(self.parts)
        digest = hashlib.md5(b"".join(bytes.fromhex(_md5(self.parts[n])) for n in numbers))
        return f"{digest.hexdigest()}-{len(numbers)}"

    def listed_parts(self, index: int = -1) -> list[tuple[int, str]]:
        root = ET.fromstring(self.completed[index])
        return [
            (int(p.findtext("PartNumber") or 0), (p.findtext("ETag") or "").strip('"'))
            for p in root.findall("Part")
        ]


@pytest.fixture
def gateway(router: respx.MockRouter) -> FakeGateway:
    return FakeGateway(router)


def _data(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


async def test_put_above_the_threshold_is_a_multipart_upload(
    client: AsyncArchil, gateway: FakeGateway
) -> None:
    data = _data(12 * MIB + 7)
    info = await client.objects.put(
        DISK, "big.bin", data, part_size=5 * MIB, multipart_threshold=5 * MIB, content_type="x/y"
    )
    assert gateway.create.calls[0].request.headers["content-type"] == "x/y"
    assert sorted(gateway.parts) == [1, 2, 3]
    assert [len(gateway.parts[n]) for n in (1, 2, 3)] == [5 * MIB, 5 * MIB, 2 * MIB + 7]
    assert b"".join(gateway.parts[n] for n in (1, 2, 3)) == data
    assert gateway.listed_parts() == [(n, _md5(gateway.parts[n])) for n in (1, 2, 3)]
    assert (info.key, info.size, info.etag) == ("big.bin", len(data), gateway.etag())
    assert gateway.aborted == 0


async def test_small_bodies_stay_a_single_put(
    client: AsyncArchil, router: respx.MockRouter, gateway: FakeGateway
) -> None:
    route = router.put(f"{OBJ}/{DISK}/big.bin").mock(
        return_value=httpx.Response(200, headers={"ETag": '"e"'})
    )
    await client.objects.put(DISK, "big.bin", _data(5 * MIB), multipart_threshold=5 * MIB)
    assert gateway.create.call_count == 0
    assert route.call_count == 1


async def test_a_part_failing_transiently_is_retried_alone(
    client: AsyncArchil, gateway: FakeGateway, clock: FakeClock
) -> None:
    gateway.fail[2] = [httpx.Response(503), _error(500, "InternalError")]
    data = _data(11 * MIB)
    info = await client.objects.put(
        DISK, "big.bin", data, part_size=5 * MIB, multipart_threshold=0, concurrency=2
    )
    assert sorted(gateway.part_calls) == [1, 2, 2, 2, 3]
    assert len(clock.sleeps) == 2
    assert b"".join(gateway.parts[n] for n in (1, 2, 3)) == data
    assert info.etag == gateway.etag() and gateway.aborted == 0


async def test_a_part_that_keeps_failing_aborts_the_upload(
    client: AsyncArchil, gateway: FakeGateway
) -> None:
    gateway.fail[2] = [_error(400, "InvalidArgument")]
    with pytest.raises(BadRequestError):
        await client.objects.put(
            DISK, "big.bin", _data(11 * MIB), part_size=5 * MIB, multipart_threshold=0
        )
    assert gateway.complete.call_count == 0
    assert gateway.aborted == 1


async def test_running_out_of_retries_aborts_the_upload(
    client: AsyncArchil, gateway: FakeGateway
) -> None:
    gateway.fail[1] = [httpx.Response(503) for _ in range(10)]
    with pytest.raises(InternalServerError):
        await client.objects.put(
            DISK, "big.bin", _data(6 * MIB), part_size=5 * MIB, multipart_threshold=0, max_retries=2
        )
    assert gateway.part_calls.count(1) == 3
    assert gateway.aborted == 1


class Interrupted(BaseException):
    """Stands for Ctrl-C (or a cancelled task) in the middle of an upload."""


async def test_an_interrupted_upload_is_aborted(
    client: AsyncArchil, gateway: FakeGateway, router: respx.MockRouter
) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise Interrupted()

    gateway.put_part.mock(side_effect=boom)
    with pytest.raises(Interrupted):
        await client.objects.put(
            DISK, "big.bin", _data(6 * MIB), part_size=5 * MIB, multipart_threshold=0
        )
    assert gateway.aborted == 1 and gateway.complete.call_count == 0


async def test_a_failing_source_stream_aborts_the_upload(
    client: AsyncArchil, gateway: FakeGateway
) -> None:
    async def source() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield b"s" * MIB
        raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        await client.objects.put(
            DISK, "big.bin", source(), part_size=5 * MIB, multipart_threshold=5 * MIB
        )
    assert gateway.aborted == 1 and gateway.complete.call_count == 0


async def test_a_stream_above_the_threshold_goes_in_parts(
    client: AsyncArchil, gateway: FakeGateway
) -> None:
    chunks = [bytes([i]) * (MIB + 3) for i in range(13)]
    info = await client.objects.put(
        DISK, "big.bin", chunked(*chunks), part_size=5 * MIB, multipart_threshold=6 * MIB
    )
    assert b"".join(gateway.parts[n] for n in sorted(gateway.parts)) == b"".join(chunks)
    assert [len(gateway.parts[n]) for n in sorted(gateway.parts)] == [
        5 * MIB,
        5 * MIB,
        3 * MIB + 39,
    ]
    assert info.size == sum(len(c) for c in chunks)


async def test_upload_file_sends_ranges_of_the_file(
    client: AsyncArchil, gateway: FakeGateway, tmp_path: Path
) -> None:
    data = _data(16 * MIB + 1)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    gateway.fail[3] = [httpx.Response(502)]
    info = await client.objects.upload_file(DISK, "big.bin", src, part_size=5 * MIB)
    assert sorted(gateway.parts) == [1, 2, 3, 4]
    assert b"".join(gateway.parts[n] for n in (1, 2, 3, 4)) == data
    assert info.size == len(data) and info.etag == gateway.etag()


async def test_complete_whose_answer_was_lost_checks_the_object(
    client: AsyncArchil, gateway: FakeGateway, router: respx.MockRouter
) -> None:
    # The first completion worked but its answer was lost; the retry finds no upload.
    gateway.complete_answers = [httpx.Response(503), _error(404, "NoSuchUpload")]
    head = router.head(f"{OBJ}/{DISK}/big.bin").mock(
        side_effect=lambda request: httpx.Response(
            200, headers={"ETag": f'"{gateway.etag()}"', "Content-Length": str(6 * MIB)}
        )
    )
    info = await client.objects.put(
        DISK, "big.bin", _data(6 * MIB), part_size=5 * MIB, multipart_threshold=0
    )
    assert gateway.complete.call_count == 2 and head.call_count == 1
    assert info.etag == gateway.etag() and gateway.aborted == 0


async def test_complete_of_an_upload_that_is_really_gone_fails(
    client: AsyncArchil, gateway: FakeGateway, router: respx.MockRouter
) -> None:
    gateway.complete_answers = [_error(404, "NoSuchUpload")]
    router.head(f"{OBJ}/{DISK}/big.bin").mock(
        return_value=httpx.Response(200, headers={"ETag": '"someone-else"'})
    )
    with pytest.raises(NotFoundError) as info:
        await client.objects.put(
            DISK, "big.bin", _data(6 * MIB), part_size=5 * MIB, multipart_threshold=0
        )
    assert info.value.code == "NoSuchUpload"
    assert gateway.aborted == 1


async def test_an_error_inside_a_200_completion_is_raised(
    client: AsyncArchil, gateway: FakeGateway
) -> None:
    gateway.complete_answers = [
        httpx.Response(
            200, content=b"<Error><Code>InternalError</Code><Message>x</Message></Error>"
        )
    ]
    with pytest.raises(Exception, match="x") as info:
        await client.objects.put(
            DISK, "big.bin", _data(6 * MIB), part_size=5 * MIB, multipart_threshold=0
        )
    assert getattr(info.value, "code", None) == "InternalError"
    assert gateway.aborted == 1


async def test_the_multipart_lifecycle_by_hand(
    client: AsyncArchil, gateway: FakeGateway, router: respx.MockRouter
) -> None:
    mp = client.objects.multipart
    upload = await mp.create(DISK, "big.bin")
    assert upload.upload_id == UPLOAD_ID and upload.key == "big.bin"
    second = await mp.upload_part(DISK, "big.bin", UPLOAD_ID, 2, b"world")
    first = await mp.upload_part(DISK, "big.bin", UPLOAD_ID, 1, b"hello ")
    assert (first.part_number, first.etag, first.size) == (1, _md5(b"hello "), 6)
    info = await mp.complete(DISK, "big.bin", UPLOAD_ID, [second, first])
    assert gateway.listed_parts() == [(1, first.etag), (2, second.etag)]
    assert (info.etag, info.size) == (gateway.etag(), 11)
    # Parts given as (number, etag) have no size: the object is asked for it.
    router.head(f"{OBJ}/{DISK}/big.bin").mock(
        return_value=httpx.Response(200, headers={"ETag": '"x-2"', "Content-Length": "11"})
    )
    info = await mp.complete(DISK, "big.bin", UPLOAD_ID, [(2, second.etag), (1, first.etag)])
    assert gateway.listed_parts() == [(1, first.etag), (2, second.etag)]
    assert info.size == 11

    router.get(f"{OBJ}/{DISK}/big.bin", params={"uploadId": UPLOAD_ID}).mock(
        return_value=_xml(
            "ListPartsResult",
            "<IsTruncated>true</IsTruncated><NextPartNumberMarker>1</NextPartNumberMarker>"
            f"<Part><PartNumber>1</PartNumber><ETag>&quot;{first.etag}&quot;</ETag>"
            "<Size>6</Size><LastModified>2024-05-01T12:00:00.000Z</LastModified></Part>",
        )
    )
    listing = await mp.list_parts(DISK, "big.bin", UPLOAD_ID, max_parts=1)
    assert listing.is_truncated and listing.next_part_number_marker == 1
    assert [(p.part_number, p.etag, p.size) for p in listing.parts] == [(1, first.etag, 6)]

    uploads = router.get(f"{OBJ}/{DISK}", params={"uploads": ""}).mock(
        return_value=_xml(
            "ListMultipartUploadsResult",
            "<IsTruncated>false</IsTruncated>"
            f"<Upload><Key>big.bin</Key><UploadId>{UPLOAD_ID}</UploadId>"
            "<Initiated>2024-05-01T12:00:00.000Z</Initiated></Upload>"
            "<CommonPrefixes><Prefix>logs/</Prefix></CommonPrefixes>",
        )
    )
    page = await mp.list_uploads(DISK, prefix="b", delimiter="/")
    assert [(u.key, u.upload_id) for u in page.uploads] == [("big.bin", UPLOAD_ID)]
    assert page.uploads[0].initiated is not None and page.common_prefixes == ["logs/"]
    assert dict(uploads.calls[0].request.url.params) == {
        "uploads": "",
        "prefix": "b",
        "delimiter": "/",
    }
    await mp.abort(DISK, "big.bin", UPLOAD_ID)
    gateway.abort.mock(return_value=_error(404, "NoSuchUpload"))
    await mp.abort(DISK, "big.bin", UPLOAD_ID)  # already gone: fine


async def test_delete_many_sends_batches_of_1000(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        body = request.content
        assert (
            request.headers["content-md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
        )
        keys = [k.findtext("Key") for k in ET.fromstring(body).findall("Object")]
        if b"<Quiet>true</Quiet>" in body:
            return _xml("DeleteResult", "")
        inner = "".join(f"<Deleted><Key>{k}</Key></Deleted>" for k in keys if k != "k7")
        if "k7" in keys:
            inner += "<Error><Key>k7</Key><Code>AccessDenied</Code><Message>no</Message></Error>"
        return _xml("DeleteResult", inner)

    route = router.post(f"{OBJ}/{DISK}", params={"delete": ""}).mock(side_effect=answer)
    keys = [f"k{i}" for i in range(2500)]
    result = await client.objects.delete_many(DISK, keys)
    assert route.call_count == 3
    sizes = [len(ET.fromstring(c.request.content).findall("Object")) for c in route.calls]
    assert sizes == [1000, 1000, 500]
    assert result.deleted == [k for k in keys if k != "k7"]
    assert [(e.key, e.code) for e in result.errors] == [("k7", "AccessDenied")]
    quiet = await client.objects.delete_many(DISK, ["a & <b>"], quiet=True)
    assert quiet.deleted == [] and quiet.errors == []
    assert b"<Key>a &amp; &lt;b&gt;</Key>" in route.calls[-1].request.content


async def test_append_is_not_retried_once_sent(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.put(f"{OBJ}/{DISK}/log", params={"append": "true"}).mock(
        side_effect=[httpx.Response(503), httpx.Response(200)]
    )
    with pytest.raises(InternalServerError):
        await client.objects.append(DISK, "log", b"line\n")
    assert route.call_count == 1

    route.mock(side_effect=[httpx.ReadTimeout("lost"), httpx.Response(200)])
    with pytest.raises(APIConnectionError):
        await client.objects.append(DISK, "log", b"line\n")
    assert route.call_count == 2

    # Nothing reached the gateway: connecting again is safe.
    route.mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(200, headers={"ETag": '"e2"', "x-archil-object-size": "10"}),
        ]
    )
    info = await client.objects.append(DISK, "log", "line\n")
    assert route.call_count == 4
    assert (info.etag, info.size) == ("e2", 10)
    assert route.calls[-1].request.content == b"line\n"


def _serve_ranges(
    data: bytes, etag: str, seen: list[str]
) -> Callable[[httpx.Request], httpx.Response]:
    def serve(request: httpx.Request) -> httpx.Response:
        rng = request.headers.get("range", "")
        seen.append(rng)
        if "if-match" in request.headers:
            assert request.headers["if-match"] == f'"{etag}"'
        m = re.match(r"bytes=(\d+)-(\d+)", rng)
        assert m, rng
        start, end = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
        return httpx.Response(
            206,
            content=data[start : end + 1],
            headers={"Content-Range": f"bytes {start}-{end}/{len(data)}", "ETag": f'"{etag}"'},
        )

    return serve


async def test_download_file_fetches_ranges_in_parallel(
    client: AsyncArchil, router: respx.MockRouter, tmp_path: Path
) -> None:
    data = _data(23 * MIB)
    seen: list[str] = []
    router.get(f"{OBJ}/{DISK}/model.bin").mock(side_effect=_serve_ranges(data, "v1", seen))
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    info = await client.objects.download_file(
        DISK, "model.bin", target, part_size=5 * MIB, multipart_threshold=8 * MIB
    )
    assert target.read_bytes() == data
    assert (info.size, info.etag) == (len(data), "v1")
    assert seen[0] == f"bytes=0-{8 * MIB - 1}"
    assert sorted(seen[1:]) == sorted(
        f"bytes={s}-{min(s + 5 * MIB, len(data)) - 1}" for s in range(8 * MIB, len(data), 5 * MIB)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


async def test_a_small_object_is_one_ranged_request(
    client: AsyncArchil, router: respx.MockRouter, tmp_path: Path
) -> None:
    seen: list[str] = []
    router.get(f"{OBJ}/{DISK}/s").mock(side_effect=_serve_ranges(b"tiny", "v", seen))
    await client.objects.download_file(DISK, "s", tmp_path / "s")
    assert (tmp_path / "s").read_bytes() == b"tiny" and len(seen) == 1


async def test_a_range_of_unknown_size_is_refused(
    client: AsyncArchil, router: respx.MockRouter, tmp_path: Path
) -> None:
    router.get(f"{OBJ}/{DISK}/u").mock(
        return_value=httpx.Response(206, content=b"abc", headers={"Content-Range": "bytes 0-2/*"})
    )
    with pytest.raises(Exception, match="size"):
        await client.objects.download_file(DISK, "u", tmp_path / "u")
    assert list(tmp_path.iterdir()) == []


async def test_an_empty_object_downloads(
    client: AsyncArchil, router: respx.MockRouter, tmp_path: Path
) -> None:
    router.get(f"{OBJ}/{DISK}/e").mock(
        side_effect=[_error(416, "InvalidRange"), httpx.Response(200, content=b"")]
    )
    info = await client.objects.download_file(DISK, "e", tmp_path / "e")
    assert info.size == 0 and (tmp_path / "e").read_bytes() == b""


async def test_a_failed_range_leaves_the_old_file(
    client: AsyncArchil, router: respx.MockRouter, tmp_path: Path
) -> None:
    data = _data(20 * MIB)
    seen: list[str] = []
    serve = _serve_ranges(data, "v1", seen)

    def changed_midway(request: httpx.Request) -> httpx.Response:
        if len(seen) >= 2:
            seen.append(request.headers["range"])
            return _error(412, "PreconditionFailed")
        return serve(request)

    router.get(f"{OBJ}/{DISK}/m").mock(side_effect=changed_midway)
    target = tmp_path / "m"
    target.write_bytes(b"previous")
    with pytest.raises(Exception, match="PreconditionFailed happened"):
        await client.objects.download_file(
            DISK, "m", target, part_size=5 * MIB, multipart_threshold=5 * MIB, concurrency=2
        )
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


class _CutStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


async def test_a_dropped_range_resumes_where_it_stopped(
    client: AsyncArchil, router: respx.MockRouter, tmp_path: Path
) -> None:
    data = _data(12 * MIB)
    seen: list[str] = []
    serve = _serve_ranges(data, "v1", seen)
    cut = {"done": False}

    def flaky(request: httpx.Request) -> httpx.Response:
        rng = request.headers["range"]
        if rng.startswith(f"bytes={8 * MIB}-") and not cut["done"]:
            cut["done"] = True
            seen.append(rng)
            return httpx.Response(
                206,
                stream=_CutStream(data[8 * MIB : 9 * MIB]),
                headers={"Content-Range": f"bytes {8 * MIB}-{12 * MIB - 1}/{12 * MIB}"},
            )
        return serve(request)

    router.get(f"{OBJ}/{DISK}/r").mock(side_effect=flaky)
    target = tmp_path / "r"
    await client.objects.download_file(
        DISK, "r", target, part_size=5 * MIB, multipart_threshold=8 * MIB
    )
    assert target.read_bytes() == data
    assert f"bytes={9 * MIB}-{12 * MIB - 1}" in seen


async def test_bad_arguments_are_refused_before_any_request(
    client: AsyncArchil, router: respx.MockRouter, tmp_path: Path
) -> None:
    objects, mp = client.objects, client.objects.multipart
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("part_size", lambda: objects.put(DISK, "k", b"x", part_size=MIB)),
        ("part_size", lambda: objects.put(DISK, "k", b"x", part_size=6 * 1024**3)),
        ("concurrency", lambda: objects.put(DISK, "k", b"x", concurrency=0)),
        ("multipart_threshold", lambda: objects.put(DISK, "k", b"x", multipart_threshold=-1)),
        ("concurrency", lambda: objects.download_file(DISK, "k", tmp_path / "x", concurrency=99)),
        ("part_size", lambda: objects.upload_file(DISK, "k", tmp_path, part_size=True)),
        ("data", lambda: objects.append(DISK, "k", b"x" * (MIB + 1))),
        ("key", lambda: objects.append(DISK, "dir/", b"x")),
        ("key", lambda: objects.put(DISK, "dir/", b"x" * (17 * MIB))),
        ("keys", lambda: objects.delete_many(DISK, "k")),
        ("keys\\[1\\]", lambda: objects.delete_many(DISK, ["ok", "../bad"])),
        ("keys\\[1\\]", lambda: objects.delete_many(DISK, ["ok", "ctl\x01"])),
        ("key", lambda: mp.create(DISK, "../k")),
        ("part_number", lambda: mp.upload_part(DISK, "k", UPLOAD_ID, 0, b"x")),
        ("part_number", lambda: mp.upload_part(DISK, "k", UPLOAD_ID, 10_001, b"x")),
        ("upload_id", lambda: mp.upload_part(DISK, "k", "", 1, b"x")),
        ("parts", lambda: mp.complete(DISK, "k", UPLOAD_ID, [])),
        ("parts", lambda: mp.complete(DISK, "k", UPLOAD_ID, [(1, "a"), (1, "b")])),
        ("parts\\[0\\]", lambda: mp.complete(DISK, "k", UPLOAD_ID, [(0, "a")])),
        ("max_parts", lambda: mp.list_parts(DISK, "k", UPLOAD_ID, max_parts=0)),
        ("max_uploads", lambda: mp.list_uploads(DISK, max_uploads=1001)),
        ("upload_id", lambda: mp.abort(DISK, "k", " ")),
    ]
    for field, call in cases:
        with pytest.raises(ValueError, match=field):
            await call()
    assert not router.calls


async def test_uploaded_part_model_checks_its_number() -> None:
    with pytest.raises(ValueError, match="part_number"):
        UploadedPart(part_number=0, etag="x")
