"""``client.objects``: files on a disk through the S3-compatible object gateway.

Large transfers are parallel: above ``multipart_threshold`` bytes, ``put`` and
``upload_file`` become a multipart upload whose parts (``part_size`` bytes,
``concurrency`` at a time) are each retried on their own and which is aborted
on any failure (Ctrl-C included), so a half-written object is never visible;
``download_file`` fetches ranges in parallel into a partial file that is
renamed into place once complete. ``client.objects.multipart`` drives the
multipart lifecycle by hand.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx
from typing_extensions import Unpack

from ..._compat import agather_bounded
from ..._errors import APIConnectionError, APIError, APIStatusError, NotFoundError
from ..._files import AsyncRangeWriter, PartialFile, aiter_file, aiter_file_range
from ..._models import (
    DeleteResult,
    MultipartUpload,
    MultipartUploadListing,
    ObjectInfo,
    ObjectListing,
    PartListing,
    UploadedPart,
    validate_disk_id,
    validate_object_key,
)
from ..._pagination import Page
from ..._wire import (
    MAX_APPEND_SIZE,
    MAX_CONCURRENCY,
    MAX_DELETE_KEYS,
    MAX_PART_SIZE,
    MAX_PARTS,
    RequestOptions,
    check_count,
    check_limit,
    check_part_size,
    complete_multipart_body,
    delete_objects_body,
    multipart_etag,
    object_info_from_headers,
    object_url,
    parse_complete_multipart,
    parse_content_range,
    parse_delete_result,
    parse_initiate_multipart,
    parse_list_multipart_uploads,
    parse_list_objects,
    parse_list_parts,
    part_ranges,
    query,
)
from .._transport import AsyncTransport
from ..pagers import AsyncPager

__all__ = ["AsyncMultipart", "AsyncObjectPager", "AsyncObjects"]

DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_PART_SIZE = 8 << 20
"""Bytes per part of a multipart upload or a parallel download."""
DEFAULT_MULTIPART_THRESHOLD = 16 << 20
"""Bodies and objects larger than this travel in parallel parts."""
DEFAULT_CONCURRENCY = 4
"""Parts in flight at once."""
MAX_KEYS = 1000
_OCTET_STREAM = "application/octet-stream"
_COMPLETE_READ_TIMEOUT = 600.0
_UNBOUNDED = 1 << 62

BodyFactory = Callable[[], AsyncIterable[bytes]]


def _check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, got {prefix!r}")
    if prefix:
        validate_object_key(prefix, "prefix")
    return prefix


def _check_upload_id(upload_id: str) -> str:
    if not isinstance(upload_id, str) or not upload_id.strip():
        raise ValueError(f"upload_id must be a non-empty string, got {upload_id!r}")
    if any(c.isspace() or ord(c) < 32 for c in upload_id):
        raise ValueError(f"upload_id {upload_id!r} contains whitespace or control characters")
    return upload_id


def _check_file_key(key: str, field: str = "key") -> str:
    validate_object_key(key, field)
    if key.endswith("/"):
        raise ValueError(f"{field} {key!r} ends with '/': that names a folder, not a file")
    return key


@dataclass(frozen=True)
class _Tuning:
    """How a large transfer is split: the threshold, the part size and the parts in flight."""

    threshold: int
    part_size: int
    concurrency: int

    @classmethod
    def of(cls, threshold: int | None, part_size: int | None, concurrency: int | None) -> _Tuning:
        part = DEFAULT_PART_SIZE if part_size is None else check_part_size(part_size)
        if threshold is None:
            limit = max(DEFAULT_MULTIPART_THRESHOLD, part)
        else:
            limit = check_count(threshold, "multipart_threshold", minimum=0)
        if concurrency is None:
            conc = DEFAULT_CONCURRENCY
        else:
            conc = check_count(concurrency, "concurrency", 1, MAX_CONCURRENCY)
        return cls(limit, part, conc)


@dataclass(frozen=True)
class _PartBody:
    """One part to send: its number, its length, and a fresh body for each attempt."""

    number: int
    length: int
    body: BodyFactory


async def _view_chunks(view: memoryview, chunk_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start : start + chunk_size])


def _view_body(view: memoryview, chunk_size: int) -> BodyFactory:
    return lambda: _view_chunks(view, chunk_size)


def _file_body(path: str | os.PathLike[str], offset: int, length: int, chunk: int) -> BodyFactory:
    return lambda: aiter_file_range(path, offset, length, chunk)


class _ChunkReader:
    """Reads an iterable of chunks in pieces of a chosen size."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._it = aiter(chunks)
        self._buf = bytearray()
        self._eof = False

    async def fill(self, n: int) -> int:
        """Buffer at least ``n`` bytes unless the stream ends first; the buffered length."""
        while len(self._buf) < n and not self._eof:
            chunk = await anext(self._it, None)
            if chunk is None:
                self._eof = True
            elif not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"data must yield bytes, not {type(chunk).__name__}")
            else:
                self._buf += chunk
        return len(self._buf)

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        await self.fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


class _RangeParts:
    """The parts of a body whose size is known: every part is produced at once."""

    def __init__(self, parts: list[_PartBody]) -> None:
        self._parts: list[_PartBody] | None = parts
        self.part_size = parts[0].length if parts else None

    async def next_batch(self) -> list[_PartBody]:
        parts, self._parts = self._parts or [], None
        return parts


class _StreamParts:
    """The parts of a stream: ``concurrency`` parts are read into memory at a time."""

    def __init__(self, reader: _ChunkReader, part_size: int, concurrency: int) -> None:
        self._reader = reader
        self.part_size = part_size
        self._concurrency = concurrency
        self._next = 1

    async def next_batch(self) -> list[_PartBody]:
        batch: list[_PartBody] = []
        while len(batch) < self._concurrency:
            data = await self._reader.read(self.part_size)
            if not data:
                break
            if self._next > MAX_PARTS:
                raise ValueError(
                    f"data is longer than {MAX_PARTS} parts of part_size={self.part_size} bytes: "
                    "raise part_size"
                )
            body = memoryview(data)
            batch.append(_PartBody(self._next, len(data), _view_body(body, DEFAULT_CHUNK_SIZE)))
            self._next += 1
        return batch


class AsyncMultipart:
    """The multipart-upload lifecycle, for callers who drive the parts themselves.

    ``create`` -> ``upload_part`` (any order, in parallel if you like; every part
    but the last at least 5 MiB) -> ``complete`` (or ``abort``), with
    ``list_parts`` and ``list_uploads`` to resume. Nothing is visible under the
    key until ``complete`` succeeds. ``objects.put`` and ``objects.upload_file``
    run this lifecycle for you above their ``multipart_threshold``.
    """

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _url(self, disk_id: str, key: str | None = None) -> str:
        return object_url(self._transport.config.object_base_url, disk_id, key)

    async def create(
        self,
        disk_id: str,
        key: str,
        *,
        content_type: str | None = None,
        part_size: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> MultipartUpload:
        """Start a multipart upload of ``key`` (CreateMultipartUpload); the object gets ``content_type``.

        ``part_size``, when every part but the last will have that size, is
        sent as a hint (``x-archil-part-size``) that lets the local gateway
        write the parts in place and complete without copying; other gateways
        ignore it.
        """
        url = self._url(disk_id, _check_file_key(key))
        headers = {"Content-Type": content_type or _OCTET_STREAM}
        if part_size is not None:
            headers["x-archil-part-size"] = str(
                check_count(part_size, "part_size", 1, MAX_PART_SIZE)
            )
        response = await self._transport.send(
            "POST", url, params={"uploads": ""}, headers=headers, **options
        )
        return parse_initiate_multipart(response.content, disk_id, key)

    async def upload_part(
        self,
        disk_id: str,
        key: str,
        upload_id: str,
        part_number: int,
        data: bytes,
        **options: Unpack[RequestOptions],
    ) -> UploadedPart:
        """Upload part ``part_number`` (1 to 10,000) of an upload; retried on transient failures.

        Uploading a part number again replaces that part. Keep the returned
        parts (or call :meth:`list_parts`) for :meth:`complete`.
        """
        url = self._url(disk_id, _check_file_key(key))
        _check_upload_id(upload_id)
        check_count(part_number, "part_number", 1, MAX_PARTS)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        view = memoryview(data).cast("B")
        part = _PartBody(part_number, len(view), _view_body(view, DEFAULT_CHUNK_SIZE))
        return await self._send_part(url, upload_id, part, options)

    async def _send_part(
        self, url: str, upload_id: str, part: _PartBody, options: RequestOptions
    ) -> UploadedPart:
        response = await self._transport.send(
            "PUT",
            url,
            params={"partNumber": part.number, "uploadId": upload_id},
            stream_body=part.body,
            headers={"Content-Length": str(part.length), "Content-Type": _OCTET_STREAM},
            **options,
        )
        etag = object_info_from_headers("", response.headers).etag
        if not etag:
            raise APIError(f"the object gateway sent no ETag for part {part.number}")
        return UploadedPart(part_number=part.number, etag=etag, size=part.length)

    async def list_parts(
        self,
        disk_id: str,
        key: str,
        upload_id: str,
        *,
        max_parts: int | None = None,
        part_number_marker: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> PartListing:
        """One page of the parts uploaded so far (ListParts); follow ``next_part_number_marker``."""
        url = self._url(disk_id, _check_file_key(key))
        params = query(
            **{
                "uploadId": _check_upload_id(upload_id),
                "max-parts": check_limit(max_parts, "max_parts", 1000),
                "part-number-marker": None
                if part_number_marker is None
                else check_count(part_number_marker, "part_number_marker", 0, MAX_PARTS),
            }
        )
        response = await self._transport.send("GET", url, params=params, **options)
        return parse_list_parts(response.content)

    async def list_uploads(
        self,
        disk_id: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        key_marker: str | None = None,
        upload_id_marker: str | None = None,
        max_uploads: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> MultipartUploadListing:
        """One page of the uploads in progress on a disk (ListMultipartUploads)."""
        url = self._url(disk_id)
        params = query(
            **{
                "uploads": "",
                "prefix": _check_prefix(prefix) or None,
                "delimiter": delimiter or None,
                "key-marker": key_marker,
                "upload-id-marker": None
                if upload_id_marker is None
                else _check_upload_id(upload_id_marker),
                "max-uploads": check_limit(max_uploads, "max_uploads", 1000),
            }
        )
        response = await self._transport.send("GET", url, params=params, **options)
        return parse_list_multipart_uploads(response.content, disk_id)

    async def complete(
        self,
        disk_id: str,
        key: str,
        upload_id: str,
        parts: Sequence[UploadedPart | tuple[int, str]],
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Assemble ``parts`` into the object (CompleteMultipartUpload); it appears all at once.

        Retried on transient failures: when a retry finds the upload gone
        (``NoSuchUpload``, its first answer was lost), the object is checked
        by its ETag and, if it is the one these parts make, that is success.
        """
        url = self._url(disk_id, _check_file_key(key))
        _check_upload_id(upload_id)
        chosen = _check_parts(parts)
        try:
            response = await self._transport.send(
                "POST",
                url,
                params={"uploadId": upload_id},
                content=complete_multipart_body(chosen),
                headers={"Content-Type": "application/xml"},
                # Assembling a big object takes a while: allow a long wait for the answer.
                timeout=self._transport.timeout(
                    options.get("timeout"), read=_COMPLETE_READ_TIMEOUT
                ),
                max_retries=options.get("max_retries"),
            )
        except NotFoundError as exc:
            if exc.code != "NoSuchUpload":
                raise
            done = await self._already_completed(url, key, chosen, options)
            if done is None:
                raise
            return done
        etag = parse_complete_multipart(response.content)
        sizes = [p.size for p in chosen]
        if any(s is None for s in sizes):
            head = await self._transport.send("HEAD", url, **options)
            return object_info_from_headers(key, head.headers)
        return ObjectInfo(key=key, size=sum(s or 0 for s in sizes), etag=etag)

    async def _already_completed(
        self, url: str, key: str, parts: list[UploadedPart], options: RequestOptions
    ) -> ObjectInfo | None:
        expected = multipart_etag([p.etag for p in parts])
        try:
            head = await self._transport.send("HEAD", url, **options)
        except NotFoundError:
            return None
        info = object_info_from_headers(key, head.headers)
        return info if expected and info.etag == expected else None

    async def abort(
        self, disk_id: str, key: str, upload_id: str, **options: Unpack[RequestOptions]
    ) -> None:
        """Discard an upload and its parts (AbortMultipartUpload); an upload already gone is fine."""
        url = self._url(disk_id, _check_file_key(key))
        try:
            await self._transport.send(
                "DELETE", url, params={"uploadId": _check_upload_id(upload_id)}, **options
            )
        except NotFoundError as exc:
            if exc.code not in (None, "NoSuchUpload"):
                raise


def _check_parts(parts: Sequence[UploadedPart | tuple[int, str]]) -> list[UploadedPart]:
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) or not parts:
        raise ValueError("parts must be a non-empty list of UploadedPart or (part_number, etag)")
    out: list[UploadedPart] = []
    for i, part in enumerate(parts):
        if isinstance(part, tuple):
            if len(part) != 2:
                raise ValueError(f"parts[{i}] must be (part_number, etag), got {part!r}")
            check_count(part[0], f"parts[{i}].part_number", 1, MAX_PARTS)
            part = UploadedPart(part_number=part[0], etag=str(part[1]))
        elif not isinstance(part, UploadedPart):
            raise ValueError(f"parts[{i}] must be an UploadedPart, got {type(part).__name__}")
        if not part.etag:
            raise ValueError(f"parts[{i}].etag must not be empty")
        out.append(part)
    out.sort(key=lambda p: p.part_number)
    for i in range(1, len(out)):
        if out[i].part_number == out[i - 1].part_number:
            raise ValueError(f"parts: part number {out[i].part_number} is listed twice")
    return out


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
