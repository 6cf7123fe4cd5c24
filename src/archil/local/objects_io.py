"""The operations on one object of the local object gateway.

GetObject and HeadObject (with ``Range`` and ``If-Match``), PutObject (a key
that ends with ``/`` makes a folder), append (``PUT ?append=true``) and
DeleteObject, with the object's ETag and content type, cached by size,
modification time and inode in the plane's state.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import TYPE_CHECKING

import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from .disks import NoSuchKey, ObjectStat, PathEscapeError
from .multipart import normalize_etag
from .objects_request import (
    _CHUNK,
    _check_key,
    _check_md5,
    _plane,
    _read_small,
    _receive,
    _refuse_copy,
    _too_large,
)
from .objects_xml import S3Error

if TYPE_CHECKING:
    from .server import ControlPlane

__all__ = ["append_object", "read_object", "remove_object", "write_object"]

_MAX_APPEND = 1024 * 1024
"""The most one ``PUT ?append=true`` may add."""


def _etag_for(plane: ControlPlane, disk_id: str, st: ObjectStat) -> tuple[str, str | None]:
    """The MD5 ETag of an object (cached by size, mtime and inode) and its stored content type."""
    meta = plane.state.get_object_meta(disk_id, st.key)
    if (
        meta is not None
        and meta["size"] == st.size
        and meta["mtime_ns"] == st.mtime_ns
        and meta["ino"] == st.ino
    ):
        return str(meta["etag"]), meta["content_type"]
    etag = plane.disks.md5_of(disk_id, st.key)
    plane.state.put_object_meta(
        disk_id,
        st.key,
        size=st.size,
        mtime_ns=st.mtime_ns,
        ino=st.ino,
        etag=etag,
        content_type=None,
    )
    return etag, None


def _object_headers(
    key: str, st: ObjectStat, etag: str, content_type: str | None
) -> dict[str, str]:
    ctype = content_type or mimetypes.guess_type(key)[0] or "application/octet-stream"
    return {
        "etag": f'"{etag}"',
        "last-modified": formatdate(st.mtime, usegmt=True),
        "content-type": ctype,
        "accept-ranges": "bytes",
    }


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as inclusive ``(start, end)``; ``None`` to ignore the header."""
    if not header.startswith("bytes=") or "," in header:
        return None
    spec = header[6:].strip()
    start_s, sep, end_s = spec.partition("-")
    if not sep:
        return None
    try:
        if start_s == "":
            n = int(end_s)
            if n <= 0:
                raise S3Error(416, "InvalidRange", "The requested range is not satisfiable")
            return max(0, size - n), size - 1
        start = int(start_s)
        end = int(end_s) if end_s else size - 1
    except ValueError:
        return None
    if start >= size or start > end:
        raise S3Error(416, "InvalidRange", "The requested range is not satisfiable")
    return start, min(end, size - 1)


def _etag_matches(header: str, etag: str) -> bool:
    wanted = [normalize_etag(v) for v in header.split(",")]
    return "*" in wanted or normalize_etag(etag) in wanted


async def _read_fd(fd: int, offset: int, length: int) -> AsyncIterator[bytes]:
    try:
        pos, left = offset, length
        while left > 0:
            chunk = await anyio.to_thread.run_sync(os.pread, fd, min(_CHUNK, left), pos)
            if not chunk:
                break
            pos += len(chunk)
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


async def read_object(request: Request) -> Response:
    """GetObject and HeadObject: one object's content (a single ``Range`` of it), or its headers.

    ``If-Match`` is honoured (412 when the object's ETag differs), so the
    ranges of one download all come from the same object.
    """
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    key = request.path_params["key"]
    _check_key(key)
    plane.object_disk(disk_id)

    def open_it() -> tuple[int, ObjectStat, str, str | None]:
        fd, st = plane.disks.open_object(disk_id, key)
        try:
            etag, ctype = _etag_for(plane, disk_id, st)
        except BaseException:
            os.close(fd)
            raise
        return fd, st, etag, ctype

    try:
        fd, st, etag, ctype = await anyio.to_thread.run_sync(open_it)
    except NoSuchKey:
        raise S3Error(404, "NoSuchKey", "The specified key does not exist.", key) from None
    except PathEscapeError as exc:
        raise S3Error(400, "InvalidArgument", str(exc), key) from None
    if_match = request.headers.get("if-match")
    if if_match is not None and not _etag_matches(if_match, etag):
        os.close(fd)
        raise S3Error(
            412,
            "PreconditionFailed",
            "At least one of the preconditions you specified did not hold",
            key,
        )
    headers = _object_headers(key, st, etag, ctype)
    status = 200
    start, length = 0, st.size
    rng = request.headers.get("range")
    if rng:
        try:
            parsed = _parse_range(rng, st.size)
        except S3Error:
            os.close(fd)
            raise
        if parsed is not None:
            start, end = parsed
            length = end - start + 1
            status = 206
            headers["content-range"] = f"bytes {start}-{end}/{st.size}"
    headers["content-length"] = str(length)
    if request.method == "HEAD":
        os.close(fd)
        return Response(status_code=status, headers=headers)
    return StreamingResponse(_read_fd(fd, start, length), status_code=status, headers=headers)


async def write_object(request: Request) -> Response:
    """PutObject: the body replaces the object; a key that ends with ``/`` makes a folder."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    key = request.path_params["key"]
    if key == "":
        raise S3Error(400, "InvalidArgument", "an object key is required")
    _check_key(key)
    _refuse_copy(request, key)
    plane.object_disk(disk_id)
    if key.endswith("/"):
        nonempty = False
        async for chunk in request.stream():
            nonempty = nonempty or bool(chunk)
        if nonempty:
            raise S3Error(
                400,
                "InvalidArgument",
                "a key that ends with '/' names a folder and takes no body",
                key,
            )
        try:
            await anyio.to_thread.run_sync(plane.disks.make_directory, disk_id, key)
        except PathEscapeError as exc:
            raise S3Error(400, "InvalidArgument", str(exc), key) from None
        return Response(status_code=200, headers={"etag": '"d41d8cd98f00b204e9800998ecf8427e"'})
    try:
        upload = await anyio.to_thread.run_sync(plane.disks.begin_upload, disk_id, key)
    except PathEscapeError as exc:
        raise S3Error(400, "InvalidArgument", str(exc), key) from None
    try:
        await _receive(request, upload, key)
        etag, st = await anyio.to_thread.run_sync(upload.commit)
    except ClientDisconnect:
        await anyio.to_thread.run_sync(upload.abort)
        raise S3Error(
            400, "IncompleteBody", "the client disconnected before the body was complete", key
        ) from None
    except PathEscapeError as exc:
        await anyio.to_thread.run_sync(upload.abort)
        raise S3Error(400, "InvalidArgument", str(exc), key) from None
    except BaseException:
        await anyio.to_thread.run_sync(upload.abort)
        raise
    plane.state.put_object_meta(
        disk_id,
        key,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ino=st.st_ino,
        etag=etag,
        content_type=request.headers.get("content-type"),
    )
    return Response(status_code=200, headers={"etag": f'"{etag}"'})


async def append_object(request: Request) -> Response:
    """``PUT /s3/{diskId}/{key}?append=true``: add at most 1 MiB to an object, creating it if needed."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    key = request.path_params["key"]
    if request.query_params.get("append", "").lower() != "true":
        raise S3Error(400, "InvalidArgument", "append must be 'true'", key or None)
    if key == "" or key.endswith("/"):
        raise S3Error(400, "InvalidArgument", "append needs the key of a file", key or None)
    _check_key(key)
    _refuse_copy(request, key)
    plane.object_disk(disk_id)
    try:
        body = await _read_small(request, _MAX_APPEND, lambda: _too_large(key, _MAX_APPEND))
    except ClientDisconnect:
        raise S3Error(
            400, "IncompleteBody", "the client disconnected before the body was complete", key
        ) from None
    _check_md5(request, hashlib.md5(body, usedforsecurity=False).hexdigest(), key)
    try:
        etag, st, created = await anyio.to_thread.run_sync(
            plane.disks.append_object, disk_id, key, body
        )
    except PathEscapeError as exc:
        raise S3Error(400, "InvalidArgument", str(exc), key) from None
    if created:
        content_type = request.headers.get("content-type")
    else:
        meta = plane.state.get_object_meta(disk_id, key)
        content_type = meta["content_type"] if meta is not None else None
    plane.state.put_object_meta(
        disk_id,
        key,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ino=st.st_ino,
        etag=etag,
        content_type=content_type,
    )
    return Response(
        status_code=200,
        headers={"etag": f'"{etag}"', "x-archil-object-size": str(st.st_size)},
    )


async def remove_object(request: Request) -> Response:
    """DeleteObject: 204, also when there was nothing there."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    key = request.path_params["key"]
    if key == "":
        raise S3Error(400, "InvalidArgument", "an object key is required")
    _check_key(key)
    plane.object_disk(disk_id)
    await anyio.to_thread.run_sync(plane.disks.delete_object, disk_id, key)
    plane.state.delete_object_meta(disk_id, key)
    return Response(status_code=204)
