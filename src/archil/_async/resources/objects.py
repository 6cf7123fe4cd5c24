"""``client.objects``: files on a disk through the S3-compatible object gateway.

Large transfers are parallel: above ``multipart_threshold`` bytes, ``put`` and
``upload_file`` become a multipart upload whose parts (``part_size`` bytes,
``concurrency`` at a time) are each retried on their own and which is aborted
on any failure (Ctrl-C included), so a half-written object is never visible;
``download_file`` fetches ranges in parallel into a partial file that is
renamed into place once complete. ``client.objects.multipart`` drives the
multipart lifecycle by hand.

This module holds the client-facing classes; beside it are
:mod:`.objects_multipart` (``client.objects.multipart``) and
:mod:`.objects_parts` (how a transfer is cut into parts).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable

import httpx
from typing_extensions import Unpack

from ..._compat import agather_bounded
from ..._errors import APIConnectionError, APIError, APIStatusError
from ..._files import AsyncRangeWriter, PartialFile, aiter_file
from ..._models import (
    DeleteResult,
    ObjectInfo,
    ObjectListing,
    UploadedPart,
    validate_disk_id,
    validate_object_key,
)
from ..._pagination import Page
from ..._wire import (
    MAX_APPEND_SIZE,
    MAX_DELETE_KEYS,
    RequestOptions,
    check_limit,
    delete_objects_body,
    object_info_from_headers,
    object_url,
    parse_content_range,
    parse_delete_result,
    parse_list_objects,
    part_ranges,
    query,
)
from .._transport import AsyncTransport
from ..pagers import AsyncPager
from .objects_multipart import _COMPLETE_READ_TIMEOUT, AsyncMultipart, _check_parts
from .objects_parts import (
    _OCTET_STREAM,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_PART_SIZE,
    BodyFactory,
    _check_chunk_size,
    _check_file_key,
    _check_prefix,
    _check_upload_id,
    _ChunkReader,
    _file_body,
    _PartBody,
    _RangeParts,
    _StreamParts,
    _Tuning,
    _view_body,
    _view_chunks,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MULTIPART_THRESHOLD",
    "DEFAULT_PART_SIZE",
    "MAX_KEYS",
    "_COMPLETE_READ_TIMEOUT",
    "_OCTET_STREAM",
    "_UNBOUNDED",
    "AsyncMultipart",
    "AsyncObjectPager",
    "AsyncObjects",
    "BodyFactory",
    "_ChunkReader",
    "_PartBody",
    "_RangeParts",
    "_StreamParts",
    "_Tuning",
    "_check_chunk_size",
    "_check_file_key",
    "_check_parts",
    "_check_prefix",
    "_check_upload_id",
    "_file_body",
    "_view_body",
    "_view_chunks",
]

MAX_KEYS = 1000
_UNBOUNDED = 1 << 62


class AsyncObjects:
    """Objects: read and write a disk's files by key (``path/inside/the/disk``).

    Attributes:
        multipart: the multipart-upload lifecycle, for callers who drive parts themselves.
    """

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport
        self.multipart = AsyncMultipart(transport)

    def _url(self, disk_id: str, key: str | None = None) -> str:
        return object_url(self._transport.config.object_base_url, disk_id, key)

    async def put(
        self,
        disk_id: str,
        key: str,
        data: bytes | str | AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        multipart_threshold: int | None = None,
        part_size: int | None = None,
        concurrency: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Write ``data`` to ``key`` on the disk, replacing what was there.

        Up to ``multipart_threshold`` bytes (16 MiB by default) go in one PUT;
        more become a multipart upload of ``part_size`` parts (8 MiB; at least
        5 MiB), ``concurrency`` at a time (4), each retried on its own, aborted
        on any failure so no partial object is ever visible. The parts of
        bytes or text (sent as UTF-8) are slices of it, sent 1 MiB at a time,
        never copied whole. An iterable of chunks is
        read ``multipart_threshold`` bytes ahead and then ``concurrency`` parts
        at a time, so it is retried like bytes and holds at most that much in
        memory.
        """
        url = self._url(disk_id, key)
        tuning = _Tuning.of(multipart_threshold, part_size, concurrency)
        if isinstance(data, str):
            data = data.encode("utf-8")
            content_type = content_type or "text/plain; charset=utf-8"
        headers = {"Content-Type": content_type or _OCTET_STREAM}
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data).cast("B")
            if len(view) > tuning.threshold:
                _check_file_key(key)
                chunk = DEFAULT_CHUNK_SIZE
                parts = [
                    _PartBody(n, length, _view_body(view[off : off + length], chunk))
                    for n, off, length in part_ranges(len(view), tuning.part_size)
                ]
                return await self._put_multipart(
                    disk_id, key, _RangeParts(parts), content_type, tuning, options
                )
            payload = data if isinstance(data, bytes) else bytes(view)
            response = await self._transport.send(
                "PUT", url, content=payload, headers=headers, **options
            )
            return object_info_from_headers(key, response.headers, size=len(view))
        if not isinstance(data, AsyncIterable):
            raise TypeError(
                f"data must be bytes, str or an iterable of bytes, not {type(data).__name__}"
            )
        return await self._put_stream(disk_id, key, data, content_type, tuning, options)

    async def _put_stream(
        self,
        disk_id: str,
        key: str,
        data: AsyncIterable[bytes],
        content_type: str | None,
        tuning: _Tuning,
        options: RequestOptions,
    ) -> ObjectInfo:
        reader = _ChunkReader(data)
        if await reader.fill(tuning.threshold + 1) <= tuning.threshold:
            body = await reader.read(tuning.threshold + 1)
            response = await self._transport.send(
                "PUT",
                self._url(disk_id, key),
                content=body,
                headers={"Content-Type": content_type or _OCTET_STREAM},
                **options,
            )
            return object_info_from_headers(key, response.headers, size=len(body))
        _check_file_key(key)
        parts = _StreamParts(reader, tuning.part_size, tuning.concurrency)
        return await self._put_multipart(disk_id, key, parts, content_type, tuning, options)

    async def _put_multipart(
        self,
        disk_id: str,
        key: str,
        source: _RangeParts | _StreamParts,
        content_type: str | None,
        tuning: _Tuning,
        options: RequestOptions,
    ) -> ObjectInfo:
        """Create an upload, send every part with bounded concurrency, complete it; abort on failure."""
        url = self._url(disk_id, key)
        upload = await self.multipart.create(
            disk_id, key, content_type=content_type, part_size=source.part_size, **options
        )
        try:
            parts: list[UploadedPart] = []

            async def send(part: _PartBody) -> UploadedPart:
                return await self.multipart._send_part(url, upload.upload_id, part, options)

            while batch := await source.next_batch():
                async for done in agather_bounded(send, batch, tuning.concurrency):
                    parts.append(done)
            return await self.multipart.complete(disk_id, key, upload.upload_id, parts, **options)
        except BaseException:
            await self._abort_quietly(disk_id, key, upload.upload_id, options)
            raise

    async def _abort_quietly(
        self, disk_id: str, key: str, upload_id: str, options: RequestOptions
    ) -> None:
        """Abort after a failure; a failing abort never hides the failure (the server sweeps)."""
        with contextlib.suppress(Exception):
            await self.multipart.abort(disk_id, key, upload_id, **options)

    async def upload_file(
        self,
        disk_id: str,
        key: str,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        multipart_threshold: int | None = None,
        part_size: int | None = None,
        concurrency: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Stream the local file at ``path`` to ``key``; a failed attempt reopens the file.

        A file larger than ``multipart_threshold`` is sent as a multipart
        upload, ``concurrency`` ranges of ``part_size`` bytes at a time, each
        read from the file in ``chunk_size`` pieces and retried on its own (see
        :meth:`put`). Memory stays at about ``concurrency * chunk_size``.
        """
        url = self._url(disk_id, key)
        _check_chunk_size(chunk_size)
        tuning = _Tuning.of(multipart_threshold, part_size, concurrency)
        size = os.path.getsize(path)
        if size > tuning.threshold:
            _check_file_key(key)
            parts = [
                _PartBody(n, length, _file_body(path, off, length, chunk_size))
                for n, off, length in part_ranges(size, tuning.part_size)
            ]
            return await self._put_multipart(
                disk_id, key, _RangeParts(parts), content_type, tuning, options
            )
        headers = {"Content-Type": content_type or _OCTET_STREAM, "Content-Length": str(size)}
        response = await self._transport.send(
            "PUT",
            url,
            stream_body=lambda: aiter_file(path, chunk_size),
            headers=headers,
            **options,
        )
        return object_info_from_headers(key, response.headers, size=size)

    async def append(
        self,
        disk_id: str,
        key: str,
        data: bytes | str,
        *,
        content_type: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Append ``data`` (at most 1 MiB) to ``key``, creating the object if it does not exist.

        Appending is not idempotent, so it is **not retried** once the request
        may have reached the gateway (a lost answer could otherwise append the
        bytes twice); only a failure to connect is retried. After an error,
        check the object's size before appending again. ``content_type``
        applies when the object is created. The returned ``size`` is the
        object's size after the append when the gateway reports it (the local
        one does), otherwise the number of bytes appended.
        """
        url = self._url(disk_id, _check_file_key(key))
        if isinstance(data, str):
            data = data.encode("utf-8")
            content_type = content_type or "text/plain; charset=utf-8"
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes or str, not {type(data).__name__}")
        body = bytes(data)
        if len(body) > MAX_APPEND_SIZE:
            raise ValueError(
                f"data is {len(body)} bytes: one append takes at most {MAX_APPEND_SIZE} bytes"
            )
        response = await self._transport.send(
            "PUT",
            url,
            params={"append": "true"},
            content=body,
            replayable=False,
            headers={"Content-Type": content_type or _OCTET_STREAM},
            **options,
        )
        size = response.headers.get("x-archil-object-size", "")
        return object_info_from_headers(
            key, response.headers, size=int(size) if size.isdigit() else len(body)
        )

    async def delete_many(
        self,
        disk_id: str,
        keys: Iterable[str],
        *,
        quiet: bool = False,
        **options: Unpack[RequestOptions],
    ) -> DeleteResult:
        """Delete many keys with DeleteObjects, 1000 per request; a missing key counts as deleted.

        Failures are reported per key in ``errors`` rather than raised. With
        ``quiet=True`` the gateway lists only the failures (``deleted`` is empty).
        """
        url = self._url(disk_id)
        if isinstance(keys, (str, bytes)):
            raise ValueError("keys must be a list of keys, not a single string")
        wanted = list(keys)
        for i, key in enumerate(wanted):
            validate_object_key(key, f"keys[{i}]")
        bodies = [
            delete_objects_body(wanted[i : i + MAX_DELETE_KEYS], quiet, first_index=i)
            for i in range(0, len(wanted), MAX_DELETE_KEYS)
        ]
        result = DeleteResult()
        for body in bodies:
            md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
            response = await self._transport.send(
                "POST",
                url,
                params={"delete": ""},
                content=body,
                headers={"Content-Type": "application/xml", "Content-MD5": md5},
                **options,
            )
            page = parse_delete_result(response.content)
            result.deleted.extend(page.deleted)
            result.errors.extend(page.errors)
        return result

    async def get(self, disk_id: str, key: str, **options: Unpack[RequestOptions]) -> bytes:
        """The whole content of ``key`` (use :meth:`iter_bytes` or :meth:`download_file` for big objects)."""
        response = await self._transport.send("GET", self._url(disk_id, key), **options)
        return response.content

    def iter_bytes(
        self,
        disk_id: str,
        key: str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **options: Unpack[RequestOptions],
    ) -> AsyncIterator[bytes]:
        """Stream the content of ``key`` in chunks of at most ``chunk_size`` bytes."""
        url = self._url(disk_id, key)
        _check_chunk_size(chunk_size)
        return self._iter_bytes(url, chunk_size, options)

    async def _iter_bytes(
        self, url: str, chunk_size: int, options: RequestOptions
    ) -> AsyncIterator[bytes]:
        async with self._transport.stream("GET", url, **options) as response:
            async for chunk in response.aiter_bytes(chunk_size):
                yield chunk

    async def download_file(
        self,
        disk_id: str,
        key: str,
        path: str | os.PathLike[str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        multipart_threshold: int | None = None,
        part_size: int | None = None,
        concurrency: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Stream ``key`` into the local file ``path`` (replaced only once complete).

        The first request asks for the first ``multipart_threshold`` bytes: a
        smaller object is done in that one request. The rest of a larger one
        is fetched as ranges of ``part_size`` bytes, ``concurrency`` at a time,
        written in place into a partial file; each range is pinned to the
        object's ETag (``If-Match``), so a download never mixes two versions,
        and a range whose connection drops resumes where it stopped. A gateway
        that ignores ``Range`` is read in one stream.
        """
        url = self._url(disk_id, key)
        _check_chunk_size(chunk_size)
        tuning = _Tuning.of(multipart_threshold, part_size, concurrency)
        if tuning.concurrency > 1:
            try:
                return await self._download_ranges(url, key, path, chunk_size, tuning, options)
            except APIStatusError as exc:
                if exc.status_code != 416:  # an empty object has no first byte
                    raise
        async with self._transport.stream("GET", url, **options) as response:
            return await self._save_whole(response, key, path, chunk_size)

    async def _download_ranges(
        self,
        url: str,
        key: str,
        path: str | os.PathLike[str],
        chunk_size: int,
        tuning: _Tuning,
        options: RequestOptions,
    ) -> ObjectInfo:
        """The ranged download: the first range tells the size, the others follow in parallel."""
        first_end = max(tuning.threshold, tuning.part_size, 1)
        headers = {"Range": f"bytes=0-{first_end - 1}"}
        async with self._transport.stream("GET", url, headers=headers, **options) as first:
            got = parse_content_range(first.headers.get("content-range"))
            if first.status_code == 206 and (got is None or got[2] is None):
                raise APIError(
                    "the object gateway answered a range without the object's size "
                    f"(Content-Range {first.headers.get('content-range')!r})"
                )
            total = got[2] if got is not None and first.status_code == 206 else None
            if got is None or total is None or got[1] + 1 >= total:
                # The whole object: it was small, or the gateway ignored the range.
                return await self._save_whole(first, key, path, chunk_size)
            if got[0] != 0:
                raise APIError(f"the object gateway sent bytes {got[0]}-{got[1]} for bytes 0-")
            info = object_info_from_headers(key, first.headers, size=total)
            head_end = got[1] + 1
            ranges = [
                (off + head_end, n) for _, off, n in part_ranges(total - head_end, tuning.part_size)
            ]
            with PartialFile(path, total) as target:

                async def fetch(spec: tuple[int, int] | None) -> None:
                    if spec is None:
                        await self._finish_first(
                            first, url, info.etag, target.fd, head_end, chunk_size, options
                        )
                    else:
                        await self._fetch_range(
                            url,
                            info.etag,
                            target.fd,
                            spec[0],
                            spec[0] + spec[1],
                            chunk_size,
                            options,
                        )

                items: list[tuple[int, int] | None] = [None, *ranges]
                async for _ in agather_bounded(fetch, items, tuning.concurrency):
                    pass
                target.commit()
            return info

    async def _save_whole(
        self,
        response: httpx.Response,
        key: str,
        path: str | os.PathLike[str],
        chunk_size: int,
    ) -> ObjectInfo:
        """Write a whole body into a partial file renamed over ``path`` once complete."""
        with PartialFile(path, 0) as target:
            writer = AsyncRangeWriter(target.fd, 0, _UNBOUNDED, chunk_size)
            async for chunk in response.aiter_bytes():
                await writer.write(chunk)
            await writer.flush()
            target.commit()
        return object_info_from_headers(key, response.headers, size=writer.position)

    async def _finish_first(
        self,
        first: httpx.Response,
        url: str,
        etag: str | None,
        fd: int,
        end: int,
        chunk_size: int,
        options: RequestOptions,
    ) -> None:
        """Write the first range from the response already open; resume it if it drops."""
        writer = AsyncRangeWriter(fd, 0, end, chunk_size)
        failures = 0
        try:
            async for chunk in first.aiter_bytes():
                await writer.write(chunk)
        except (httpx.TransportError, APIConnectionError):
            failures = 1
        await writer.flush()
        if writer.position < end:
            await self._fetch_range(
                url, etag, fd, writer.position, end, chunk_size, options, failures
            )

    async def _fetch_range(
        self,
        url: str,
        etag: str | None,
        fd: int,
        pos: int,
        end: int,
        chunk_size: int,
        options: RequestOptions,
        failures: int = 0,
    ) -> None:
        """GET bytes ``pos`` to ``end`` into ``fd``; a dropped body resumes where it stopped."""
        retries = options.get("max_retries", self._transport.config.max_retries)
        writer = AsyncRangeWriter(fd, pos, end, chunk_size)
        while writer.position < end:
            headers = {"Range": f"bytes={writer.position}-{end - 1}"}
            if etag:
                headers["If-Match"] = f'"{etag}"'
            try:
                async with self._transport.stream("GET", url, headers=headers, **options) as resp:
                    got = parse_content_range(resp.headers.get("content-range"))
                    if (
                        resp.status_code != 206
                        or got is None
                        or got[:2] != (writer.position, end - 1)
                    ):
                        raise APIError(
                            f"the object gateway did not answer the range {writer.position}-{end - 1} "
                            f"(HTTP {resp.status_code}, "
                            f"Content-Range {resp.headers.get('content-range')!r})"
                        )
                    async for chunk in resp.aiter_bytes():
                        await writer.write(chunk)
                    await writer.flush()
                if writer.position < end:
                    raise APIConnectionError("the object gateway ended a range early")
            except APIConnectionError:
                await writer.flush()  # keep what arrived: the retry starts after it
                failures += 1
                if failures > retries:
                    raise

    async def head(self, disk_id: str, key: str, **options: Unpack[RequestOptions]) -> ObjectInfo:
        """The size, ETag and modification time of ``key``, without its content."""
        response = await self._transport.send("HEAD", self._url(disk_id, key), **options)
        return object_info_from_headers(key, response.headers)

    async def delete(self, disk_id: str, key: str, **options: Unpack[RequestOptions]) -> None:
        """Delete ``key`` from the disk."""
        await self._transport.send("DELETE", self._url(disk_id, key), **options)

    async def list_page(
        self,
        disk_id: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        continuation_token: str | None = None,
        max_keys: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> ObjectListing:
        """One page of the keys under ``prefix`` (ListObjectsV2).

        With a ``delimiter`` (usually ``"/"``), keys below the next delimiter are
        rolled up into ``common_prefixes``.
        """
        url = self._url(disk_id)
        params = query(
            **{
                "list-type": 2,
                "prefix": _check_prefix(prefix),
                "delimiter": delimiter or None,
                "continuation-token": continuation_token,
                "max-keys": check_limit(max_keys, "max_keys", MAX_KEYS),
            }
        )
        response = await self._transport.send("GET", url, params=params, **options)
        return parse_list_objects(response.content)

    def list(
        self,
        disk_id: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        page_size: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncObjectPager:
        """Every object under ``prefix``, fetched page by page as it is iterated."""
        validate_disk_id(disk_id)
        _check_prefix(prefix)
        check_limit(page_size, "page_size", MAX_KEYS)
        return AsyncObjectPager(self, disk_id, prefix, delimiter, page_size, options)


class AsyncObjectPager(AsyncPager[ObjectInfo]):
    """The objects under a prefix, paginated by ListObjectsV2 continuation tokens."""

    def __init__(
        self,
        objects: AsyncObjects,
        disk_id: str,
        prefix: str,
        delimiter: str | None,
        page_size: int | None,
        options: RequestOptions,
    ) -> None:
        self._objects = objects
        self._disk_id = disk_id
        self._prefix = prefix
        self._delimiter = delimiter
        self._page_size = page_size
        self._options = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(disk_id={self._disk_id!r}, prefix={self._prefix!r})"

    async def _fetch_page(self, cursor: str | None) -> Page[ObjectInfo]:
        listing = await self._objects.list_page(
            self._disk_id,
            prefix=self._prefix,
            delimiter=self._delimiter,
            continuation_token=cursor,
            max_keys=self._page_size,
            **self._options,
        )
        return Page(listing.objects, listing.next_continuation_token)
