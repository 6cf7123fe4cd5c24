"""How ``objects.put`` and ``objects.upload_file`` send a body to a key.

Up to ``multipart_threshold`` bytes go in one PUT. Above it the body becomes
a multipart upload: its parts (slices of bytes, ranges of a file, or pieces
of a stream read a few parts ahead) are sent ``concurrency`` at a time, each
retried on its own, then completed; any failure (Ctrl-C included) aborts the
upload, so a half-written object is never visible.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterable

from ..._compat import agather_bounded
from ..._files import aiter_file
from ..._models import ObjectInfo, UploadedPart
from ..._wire import RequestOptions, object_info_from_headers, part_ranges
from .._transport import AsyncTransport
from .objects_multipart import AsyncMultipart
from .objects_parts import (
    _OCTET_STREAM,
    DEFAULT_CHUNK_SIZE,
    _check_file_key,
    _ChunkReader,
    _file_body,
    _PartBody,
    _RangeParts,
    _StreamParts,
    _Tuning,
    _view_body,
)

__all__ = ["put_bytes", "put_file", "put_multipart", "put_stream"]


async def put_bytes(
    transport: AsyncTransport,
    multipart: AsyncMultipart,
    url: str,
    disk_id: str,
    key: str,
    data: bytes | bytearray | memoryview,
    content_type: str | None,
    tuning: _Tuning,
    options: RequestOptions,
) -> ObjectInfo:
    """Bytes: one PUT up to the threshold, above it a multipart upload of slices of them."""
    headers = {"Content-Type": content_type or _OCTET_STREAM}
    view = memoryview(data).cast("B")
    if len(view) > tuning.threshold:
        _check_file_key(key)
        chunk = DEFAULT_CHUNK_SIZE
        parts = [
            _PartBody(n, length, _view_body(view[off : off + length], chunk))
            for n, off, length in part_ranges(len(view), tuning.part_size)
        ]
        return await put_multipart(
            multipart, url, disk_id, key, _RangeParts(parts), content_type, tuning, options
        )
    payload = data if isinstance(data, bytes) else bytes(view)
    response = await transport.send("PUT", url, content=payload, headers=headers, **options)
    return object_info_from_headers(key, response.headers, size=len(view))


async def put_stream(
    transport: AsyncTransport,
    multipart: AsyncMultipart,
    url: str,
    disk_id: str,
    key: str,
    data: AsyncIterable[bytes],
    content_type: str | None,
    tuning: _Tuning,
    options: RequestOptions,
) -> ObjectInfo:
    """A stream: read ahead past the threshold, then one PUT or a multipart upload of its parts."""
    reader = _ChunkReader(data)
    if await reader.fill(tuning.threshold + 1) <= tuning.threshold:
        body = await reader.read(tuning.threshold + 1)
        response = await transport.send(
            "PUT",
            url,
            content=body,
            headers={"Content-Type": content_type or _OCTET_STREAM},
            **options,
        )
        return object_info_from_headers(key, response.headers, size=len(body))
    _check_file_key(key)
    parts = _StreamParts(reader, tuning.part_size, tuning.concurrency)
    return await put_multipart(multipart, url, disk_id, key, parts, content_type, tuning, options)


async def put_file(
    transport: AsyncTransport,
    multipart: AsyncMultipart,
    url: str,
    disk_id: str,
    key: str,
    path: str | os.PathLike[str],
    content_type: str | None,
    chunk_size: int,
    tuning: _Tuning,
    options: RequestOptions,
) -> ObjectInfo:
    """A local file: one PUT up to the threshold, above it a multipart upload of its ranges."""
    size = os.path.getsize(path)
    if size > tuning.threshold:
        _check_file_key(key)
        parts = [
            _PartBody(n, length, _file_body(path, off, length, chunk_size))
            for n, off, length in part_ranges(size, tuning.part_size)
        ]
        return await put_multipart(
            multipart, url, disk_id, key, _RangeParts(parts), content_type, tuning, options
        )
    headers = {"Content-Type": content_type or _OCTET_STREAM, "Content-Length": str(size)}
    response = await transport.send(
        "PUT",
        url,
        stream_body=lambda: aiter_file(path, chunk_size),
        headers=headers,
        **options,
    )
    return object_info_from_headers(key, response.headers, size=size)


async def put_multipart(
    multipart: AsyncMultipart,
    url: str,
    disk_id: str,
    key: str,
    source: _RangeParts | _StreamParts,
    content_type: str | None,
    tuning: _Tuning,
    options: RequestOptions,
) -> ObjectInfo:
    """Create an upload, send every part with bounded concurrency, complete it; abort on failure."""
    upload = await multipart.create(
        disk_id, key, content_type=content_type, part_size=source.part_size, **options
    )
    try:
        parts: list[UploadedPart] = []

        async def send(part: _PartBody) -> UploadedPart:
            return await multipart._send_part(url, upload.upload_id, part, options)

        while batch := await source.next_batch():
            async for done in agather_bounded(send, batch, tuning.concurrency):
                parts.append(done)
        return await multipart.complete(disk_id, key, upload.upload_id, parts, **options)
    except BaseException:
        await _abort_quietly(multipart, disk_id, key, upload.upload_id, options)
        raise


async def _abort_quietly(
    multipart: AsyncMultipart, disk_id: str, key: str, upload_id: str, options: RequestOptions
) -> None:
    """Abort after a failure; a failing abort never hides the failure (the server sweeps)."""
    with contextlib.suppress(Exception):
        await multipart.abort(disk_id, key, upload_id, **options)
