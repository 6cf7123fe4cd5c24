"""The ranged, parallel download behind ``objects.download_file``.

The first range tells the object's size; the other ranges of ``part_size``
bytes follow, ``concurrency`` at a time, written in place into a partial file
that is renamed over the destination once complete. Every range is pinned to
the object's ETag (``If-Match``) and resumes where it stopped when its
connection drops. A whole body (a small object, or a gateway that ignores
``Range``) is saved the same way in one stream.
"""

from __future__ import annotations

import os

import httpx

from ..._compat import agather_bounded
from ..._errors import APIConnectionError, APIError
from ..._files import AsyncRangeWriter, PartialFile
from ..._models import ObjectInfo
from ..._wire import RequestOptions, object_info_from_headers, parse_content_range, part_ranges
from .._transport import AsyncTransport
from .objects_parts import _Tuning

__all__ = ["download_ranges", "save_whole"]

_UNBOUNDED = 1 << 62


async def download_ranges(
    transport: AsyncTransport,
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
    async with transport.stream("GET", url, headers=headers, **options) as first:
        got = parse_content_range(first.headers.get("content-range"))
        if first.status_code == 206 and (got is None or got[2] is None):
            raise APIError(
                "the object gateway answered a range without the object's size "
                f"(Content-Range {first.headers.get('content-range')!r})"
            )
        total = got[2] if got is not None and first.status_code == 206 else None
        if got is None or total is None or got[1] + 1 >= total:
            # The whole object: it was small, or the gateway ignored the range.
            return await save_whole(first, key, path, chunk_size)
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
                    await _finish_first(
                        transport, first, url, info.etag, target.fd, head_end, chunk_size, options
                    )
                else:
                    await _fetch_range(
                        transport,
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


async def save_whole(
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
    transport: AsyncTransport,
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
        await _fetch_range(
            transport, url, etag, fd, writer.position, end, chunk_size, options, failures
        )


async def _fetch_range(
    transport: AsyncTransport,
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
    retries = options.get("max_retries", transport.config.max_retries)
    writer = AsyncRangeWriter(fd, pos, end, chunk_size)
    while writer.position < end:
        headers = {"Range": f"bytes={writer.position}-{end - 1}"}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        try:
            async with transport.stream("GET", url, headers=headers, **options) as resp:
                got = parse_content_range(resp.headers.get("content-range"))
                if resp.status_code != 206 or got is None or got[:2] != (writer.position, end - 1):
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
