"""``client.objects``: files on a disk through the S3-compatible object gateway.

Large transfers are parallel: above ``multipart_threshold`` bytes, ``put`` and
``upload_file`` become a multipart upload whose parts (``part_size`` bytes,
``concurrency`` at a time) are each retried on their own and which is aborted
on any failure (Ctrl-C included), so a half-written object is never visible;
``download_file`` fetches ranges in parallel into a partial file that is
renamed into place once complete. ``client.objects.multipart`` drives the
multipart lifecycle by hand.

This module holds the client-facing classes; the transfers live beside it:
:mod:`.objects_upload` (``put`` and ``upload_file``), :mod:`.objects_download`
(``download_file``), :mod:`.objects_multipart` (``client.objects.multipart``)
and :mod:`.objects_parts` (how a transfer is cut into parts).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable

from typing_extensions import Unpack

from ..._errors import APIStatusError
from ..._models import (
    DeleteResult,
    ObjectInfo,
    ObjectListing,
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
    parse_delete_result,
    parse_list_objects,
    query,
)
from .._transport import AsyncTransport
from ..pagers import AsyncPager
from .objects_download import _UNBOUNDED, download_ranges, save_whole
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
from .objects_upload import put_bytes, put_file, put_stream

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
        if isinstance(data, (bytes, bytearray, memoryview)):
            return await put_bytes(
                self._transport,
                self.multipart,
                url,
                disk_id,
                key,
                data,
                content_type,
                tuning,
                options,
            )
        if not isinstance(data, AsyncIterable):
            raise TypeError(
                f"data must be bytes, str or an iterable of bytes, not {type(data).__name__}"
            )
        return await put_stream(
            self._transport, self.multipart, url, disk_id, key, data, content_type, tuning, options
        )

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
        return await put_file(
            self._transport,
            self.multipart,
            url,
            disk_id,
            key,
            path,
            content_type,
            chunk_size,
            tuning,
            options,
        )

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
                return await download_ranges(
                    self._transport, url, key, path, chunk_size, tuning, options
                )
            except APIStatusError as exc:
                if exc.status_code != 416:  # an empty object has no first byte
                    raise
        async with self._transport.stream("GET", url, **options) as response:
            return await save_whole(response, key, path, chunk_size)

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
