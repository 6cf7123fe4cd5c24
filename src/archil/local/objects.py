"""The S3-compatible object API of the local control plane, served under ``/s3``.

Path style: ``/s3/{diskId}/{key}`` with GET, HEAD, PUT and DELETE, and
ListObjectsV2 at ``GET /s3/{diskId}?list-type=2``. Errors are S3 XML
documents (``<Error><Code>NoSuchKey</Code>...``).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os
import re
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from email.utils import formatdate
from typing import TYPE_CHECKING
from urllib.parse import quote
from xml.sax.saxutils import escape as _xml_escape

import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .disks import NoSuchKey, ObjectStat, PathEscapeError, split_key

if TYPE_CHECKING:
    from .server import ControlPlane

__all__ = ["S3Error", "object_routes", "s3_error_response"]

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_CHUNK = 1024 * 1024
_MAX_KEYS = 1000


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    """XML-escape ``text``, replacing characters XML 1.0 cannot carry with U+FFFD."""
    return _xml_escape(_XML_INVALID.sub("\ufffd", text))


class S3Error(Exception):
    """An error answered as an S3 XML ``<Error>`` document."""

    def __init__(self, status: int, code: str, message: str, resource: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.resource = resource


def s3_error_response(
    status: int, code: str, message: str, resource: str | None = None, request_id: str | None = None
) -> Response:
    """An S3 XML error response."""
    parts = [f"<Code>{escape(code)}</Code>", f"<Message>{escape(message)}</Message>"]
    if resource:
        parts.append(f"<Resource>{escape(resource)}</Resource>")
    if request_id:
        parts.append(f"<RequestId>{escape(request_id)}</RequestId>")
    body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error>' + "".join(parts) + "</Error>"
    return Response(body, status_code=status, media_type="application/xml")


def _plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


def _iso(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _check_key(key: str) -> None:
    try:
        split_key(key)
    except PathEscapeError as exc:
        raise S3Error(400, "InvalidArgument", str(exc), key) from None


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


async def get_object(request: Request) -> Response:
    """``GET``/``HEAD /s3/{diskId}/{key}`` (an empty key lists the disk)."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    key = request.path_params["key"]
    if key == "":
        if request.method == "HEAD":
            return await head_bucket(request)
        return await list_objects(request)
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


async def put_object(request: Request) -> Response:
    """``PUT /s3/{diskId}/{key}``: stream the body to a temporary file, then rename it into place."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    key = request.path_params["key"]
    if key == "":
        raise S3Error(400, "InvalidArgument", "an object key is required")
    _check_key(key)
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
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) >= _CHUNK:
                data, buf = buf, bytearray()
                await anyio.to_thread.run_sync(upload.write, data)
        if buf:
            await anyio.to_thread.run_sync(upload.write, buf)
        expected = request.headers.get("content-length")
        if expected is not None and expected.isdigit() and int(expected) != upload.size:
            raise S3Error(400, "IncompleteBody", "the body is shorter than Content-Length", key)
        md5_header = request.headers.get("content-md5")
        if md5_header is not None:
            try:
                want = base64.b64decode(md5_header, validate=True).hex()
            except (binascii.Error, ValueError):
                raise S3Error(
                    400, "InvalidDigest", "Content-MD5 is not valid base64", key
                ) from None
            if want != upload.md5_hex():
                raise S3Error(400, "BadDigest", "the Content-MD5 does not match the body", key)
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


async def delete_object(request: Request) -> Response:
    """``DELETE /s3/{diskId}/{key}``: 204, also when there was nothing there."""
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


async def head_bucket(request: Request) -> Response:
    """``HEAD /s3/{diskId}``: 200 when the disk exists."""
    _plane(request).object_disk(request.path_params["disk_id"])
    return Response(status_code=200)


def _int_arg(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise S3Error(400, "InvalidArgument", f"{name} must be an integer") from None
    if value < 0:
        raise S3Error(400, "InvalidArgument", f"{name} must not be negative")
    return value


def _encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(("v1:" + marker).encode("utf-8")).decode("ascii")


def _decode_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4)).decode(
            "utf-8"
        )
    except (binascii.Error, ValueError, UnicodeError):
        raise S3Error(
            400, "InvalidArgument", "The continuation token provided is incorrect"
        ) from None
    if not raw.startswith("v1:"):
        raise S3Error(400, "InvalidArgument", "The continuation token provided is incorrect")
    return raw[3:]


async def list_objects(request: Request) -> Response:
    """ListObjectsV2: ``GET /s3/{diskId}?list-type=2&prefix=&delimiter=&continuation-token=&max-keys=``."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    q = request.query_params
    list_type = q.get("list-type")
    if list_type not in (None, "2"):
        raise S3Error(400, "InvalidArgument", "only ListObjectsV2 (list-type=2) is supported")
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter", "")
    encoding = q.get("encoding-type")
    if encoding not in (None, "", "url"):
        raise S3Error(400, "InvalidArgument", "encoding-type must be 'url'")
    if "\x00" in prefix or "\x00" in delimiter:
        raise S3Error(400, "InvalidArgument", "prefix and delimiter must not contain NUL")
    max_keys = min(_int_arg(request, "max-keys", _MAX_KEYS), _MAX_KEYS)
    token = q.get("continuation-token")
    start_after = q.get("start-after", "")
    marker = _decode_token(token) if token else start_after
    plane.object_disk(disk_id)

    def build() -> str:
        page = plane.disks.list_objects(
            disk_id, prefix=prefix, delimiter=delimiter, marker=marker, max_keys=max_keys
        )

        def enc(s: str) -> str:
            return escape(quote(s, safe="/") if encoding == "url" else s)

        out = [
            '<?xml version="1.0" encoding="UTF-8"?>\n',
            f'<ListBucketResult xmlns="{_NS}">',
            f"<Name>{escape(disk_id)}</Name>",
            f"<Prefix>{enc(prefix)}</Prefix>",
            f"<KeyCount>{len(page.contents) + len(page.common_prefixes)}</KeyCount>",
            f"<MaxKeys>{max_keys}</MaxKeys>",
        ]
        if delimiter:
            out.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        out.append(f"<IsTruncated>{'true' if page.is_truncated else 'false'}</IsTruncated>")
        if token:
            out.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if start_after:
            out.append(f"<StartAfter>{enc(start_after)}</StartAfter>")
        if encoding == "url":
            out.append("<EncodingType>url</EncodingType>")
        for st in page.contents:
            try:
                etag, _ = _etag_for(plane, disk_id, st)
            except (NoSuchKey, PathEscapeError, OSError):
                continue
            out.append(
                "<Contents>"
                f"<Key>{enc(st.key)}</Key>"
                f"<LastModified>{_iso(st.mtime)}</LastModified>"
                f"<ETag>&quot;{etag}&quot;</ETag>"
                f"<Size>{st.size}</Size>"
                "<StorageClass>STANDARD</StorageClass>"
                "</Contents>"
            )
        for cp in page.common_prefixes:
            out.append(f"<CommonPrefixes><Prefix>{enc(cp)}</Prefix></CommonPrefixes>")
        if page.is_truncated and page.next_marker is not None:
            out.append(
                f"<NextContinuationToken>{_encode_token(page.next_marker)}</NextContinuationToken>"
            )
        out.append("</ListBucketResult>")
        return "".join(out)

    body = await anyio.to_thread.run_sync(build)
    return Response(body, media_type="application/xml")


async def bucket(request: Request) -> Response:
    """``GET``/``HEAD /s3/{diskId}``."""
    if request.method == "HEAD":
        return await head_bucket(request)
    return await list_objects(request)


async def no_bucket(request: Request) -> Response:
    """``/s3`` alone: there is no ListBuckets."""
    raise S3Error(400, "InvalidArgument", "a disk id is required: /s3/{diskId}/{key}")


def object_routes() -> list[Route]:
    """The ``/s3`` routes."""
    return [
        Route("/s3", no_bucket, methods=["GET", "HEAD", "PUT", "DELETE", "POST"]),
        Route("/s3/{disk_id}", bucket, methods=["GET", "HEAD"]),
        Route("/s3/{disk_id}/{key:path}", get_object, methods=["GET", "HEAD"]),
        Route("/s3/{disk_id}/{key:path}", put_object, methods=["PUT"]),
        Route("/s3/{disk_id}/{key:path}", delete_object, methods=["DELETE"]),
    ]
