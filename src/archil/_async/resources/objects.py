"""``client.objects``: files on a disk through the S3-compatible object gateway."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator

from typing_extensions import Unpack

from ..._files import aiter_file, awrite_file
from ..._models import ObjectInfo, ObjectListing, validate_disk_id, validate_object_key
from ..._pagination import Page
from ..._wire import (
    RequestOptions,
    check_limit,
    object_info_from_headers,
    object_url,
    parse_list_objects,
    query,
)
from .._transport import AsyncTransport
from ..pagers import AsyncPager

__all__ = ["AsyncObjectPager", "AsyncObjects"]

DEFAULT_CHUNK_SIZE = 1 << 20
MAX_KEYS = 1000
_OCTET_STREAM = "application/octet-stream"


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


async def _counted(chunks: AsyncIterable[bytes], total: list[int]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        total[0] += len(chunk)
        yield chunk


class AsyncObjects:
    """Objects: read and write a disk's files by key (``path/inside/the/disk``)."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    def _url(self, disk_id: str, key: str | None = None) -> str:
        return object_url(self._transport.config.object_base_url, disk_id, key)

    async def put(
        self,
        disk_id: str,
        key: str,
        data: bytes | str | AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Write ``data`` to ``key`` on the disk, replacing what was there.

        Bytes and text (sent as UTF-8) are retried on transient failures; an
        iterable of chunks is streamed and, once sending started, not retried.
        """
        url = self._url(disk_id, key)
        if isinstance(data, str):
            data = data.encode("utf-8")
            content_type = content_type or "text/plain; charset=utf-8"
        headers = {"Content-Type": content_type or _OCTET_STREAM}
        if isinstance(data, (bytes, bytearray, memoryview)):
            payload = bytes(data)
            response = await self._transport.send(
                "PUT", url, content=payload, headers=headers, **options
            )
            return object_info_from_headers(key, response.headers, size=len(payload))
        if not isinstance(data, AsyncIterable):
            raise TypeError(
                f"data must be bytes, str or an iterable of bytes, not {type(data).__name__}"
            )
        chunks = data
        total = [0]
        response = await self._transport.send(
            "PUT",
            url,
            stream_body=lambda: _counted(chunks, total),
            replayable=False,
            headers=headers,
            **options,
        )
        return object_info_from_headers(key, response.headers, size=total[0])

    async def upload_file(
        self,
        disk_id: str,
        key: str,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Stream the local file at ``path`` to ``key``; a failed attempt reopens the file."""
        url = self._url(disk_id, key)
        _check_chunk_size(chunk_size)
        size = os.path.getsize(path)
        headers = {"Content-Type": content_type or _OCTET_STREAM, "Content-Length": str(size)}
        response = await self._transport.send(
            "PUT",
            url,
            stream_body=lambda: aiter_file(path, chunk_size),
            headers=headers,
            **options,
        )
        return object_info_from_headers(key, response.headers, size=size)

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
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Stream ``key`` into the local file ``path`` (replaced only once complete)."""
        url = self._url(disk_id, key)
        _check_chunk_size(chunk_size)
        async with self._transport.stream("GET", url, **options) as response:
            size = await awrite_file(path, response.aiter_bytes(chunk_size))
            return object_info_from_headers(key, response.headers, size=size)

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
