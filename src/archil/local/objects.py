"""The S3-compatible object API of the local control plane, served under ``/s3``.

Path style: ``/s3/{diskId}/{key}`` with GET, HEAD, PUT and DELETE, and
ListObjectsV2 at ``GET /s3/{diskId}?list-type=2``. Errors are S3 XML
documents (``<Error><Code>NoSuchKey</Code>...``).

The operations of the live gateway beyond those, told apart by their query
string as in S3:

- multipart uploads: ``POST {key}?uploads`` (create), ``PUT {key}?partNumber=&uploadId=``
  (a part), ``GET {key}?uploadId=`` (ListParts), ``POST {key}?uploadId=`` (complete),
  ``DELETE {key}?uploadId=`` (abort) and ``GET /s3/{diskId}?uploads`` (ListMultipartUploads);
  the parts are staged outside the disk (:mod:`.multipart`);
- ``POST /s3/{diskId}?delete``: DeleteObjects, up to 1000 keys;
- ``PUT {key}?append=true``: append at most 1 MiB to an object, creating it if needed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import mimetypes
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timezone
from email.utils import formatdate
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import quote
from xml.sax.saxutils import escape as _xml_escape

import anyio.to_thread
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .disks import NoSuchKey, ObjectStat, PathEscapeError, split_key
from .multipart import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MultipartError,
    UploadRecord,
    normalize_etag,
)

if TYPE_CHECKING:
    from .server import ControlPlane

__all__ = ["S3Error", "object_routes", "s3_error_response"]

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_CHUNK = 1024 * 1024
_MAX_KEYS = 1000
_MAX_APPEND = 1024 * 1024
"""The most one ``PUT ?append=true`` may add."""
_MAX_DELETE_KEYS = 1000
_MAX_XML_BODY = 2 * 1024 * 1024
_MALFORMED_XML = (
    "The XML you provided was not well-formed or did not validate against our published schema."
)

T = TypeVar("T")


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


async def get_object(request: Request) -> Response:
    """``GET``/``HEAD /s3/{diskId}/{key}`` (an empty key is the disk; ``?uploadId=`` is ListParts).

    ``If-Match`` is honoured (412 when the object's ETag differs), so the
    ranges of one download all come from the same object.
    """
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    key = request.path_params["key"]
    if key == "":
        return await bucket(request)
    if request.method == "GET" and "uploadId" in request.query_params:
        return await list_parts(request)
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


class _BodyWriter(Protocol):
    """Where a request body is streamed: a whole object or one part of a multipart upload."""

    size: int

    def write(self, data: bytes | bytearray) -> None: ...

    def md5_hex(self) -> str: ...


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


def _too_large(key: str, limit: int) -> S3Error:
    return S3Error(
        400,
        "EntityTooLarge",
        f"Your proposed upload exceeds the maximum allowed size ({limit} bytes).",
        key,
    )


def _check_md5(request: Request, md5_hex: str, key: str | None) -> None:
    md5_header = request.headers.get("content-md5")
    if md5_header is None:
        return
    try:
        want = base64.b64decode(md5_header, validate=True).hex()
    except (binascii.Error, ValueError):
        raise S3Error(400, "InvalidDigest", "Content-MD5 is not valid base64", key) from None
    if want != md5_hex:
        raise S3Error(400, "BadDigest", "the Content-MD5 does not match the body", key)


async def _receive(
    request: Request, writer: _BodyWriter, key: str, *, limit: int | None = None
) -> None:
    """Stream the body into ``writer`` in 1 MiB writes; check its length and ``Content-MD5``.

    One write (hashing and writing, in a worker thread) is in flight while the
    next MiB is received, so the two overlap; writes stay in order.
    """
    expected = _content_length(request)
    if limit is not None and expected is not None and expected > limit:
        raise _too_large(key, limit)
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    received = 0
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            received += len(chunk)
            if limit is not None and received > limit:
                raise _too_large(key, limit)
            if len(buf) >= _CHUNK:
                data, buf = buf, bytearray()
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, writer.write, data)
        if pending is not None:
            await pending
        pending = None
        if buf:
            await anyio.to_thread.run_sync(writer.write, buf)
    finally:
        if pending is not None:
            # The caller discards the file after a failure: let the write finish first.
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
    if expected is not None and expected != writer.size:
        raise S3Error(400, "IncompleteBody", "the body is shorter than Content-Length", key)
    _check_md5(request, writer.md5_hex(), key)


async def _read_small(request: Request, limit: int, on_excess: Callable[[], S3Error]) -> bytes:
    """The whole body, which must not exceed ``limit`` bytes."""
    expected = _content_length(request)
    if expected is not None and expected > limit:
        raise on_excess()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise on_excess()
    if expected is not None and expected != len(body):
        raise S3Error(400, "IncompleteBody", "the body is shorter than Content-Length")
    return bytes(body)


async def put_object(request: Request) -> Response:
    """``PUT /s3/{diskId}/{key}``: PutObject, UploadPart (``?partNumber=&uploadId=``) or append."""
    q = request.query_params
    if "uploadId" in q or "partNumber" in q:
        return await upload_part(request)
    if "append" in q:
        return await append_object(request)
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


def _refuse_copy(request: Request, key: str) -> None:
    if "x-amz-copy-source" in request.headers:
        raise S3Error(501, "NotImplemented", "copying objects is not supported", key)


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


async def delete_object(request: Request) -> Response:
    """``DELETE /s3/{diskId}/{key}``: 204, also when there was nothing there.

    With ``?uploadId=`` it is AbortMultipartUpload.
    """
    if "uploadId" in request.query_params:
        return await abort_multipart_upload(request)
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
    """``GET``/``HEAD``/``POST /s3/{diskId}``: ListObjectsV2, ListMultipartUploads or DeleteObjects."""
    if request.method == "HEAD":
        return await head_bucket(request)
    if request.method == "POST":
        if "delete" in request.query_params:
            return await delete_objects(request)
        raise S3Error(400, "InvalidRequest", "POST on a disk needs ?delete (DeleteObjects)")
    if "uploads" in request.query_params:
        return await list_multipart_uploads(request)
    return await list_objects(request)


async def post_object(request: Request) -> Response:
    """``POST /s3/{diskId}/{key}``: CreateMultipartUpload (``?uploads``) or complete (``?uploadId=``)."""
    if request.path_params["key"] == "":
        return await bucket(request)
    q = request.query_params
    if "uploads" in q:
        return await create_multipart_upload(request)
    if "uploadId" in q:
        return await complete_multipart_upload(request)
    raise S3Error(
        400,
        "InvalidRequest",
        "POST on an object needs ?uploads (CreateMultipartUpload) or ?uploadId= (complete)",
        request.path_params["key"],
    )


async def no_bucket(request: Request) -> Response:
    """``/s3`` alone: there is no ListBuckets."""
    raise S3Error(400, "InvalidArgument", "a disk id is required: /s3/{diskId}/{key}")


# ---------------------------------------------------------------------------
# XML documents
# ---------------------------------------------------------------------------


def _el(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def _xml_doc(root: str, inner: Sequence[str]) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{root} xmlns="{_NS}">' + "".join(inner) + f"</{root}>"
    )
    return Response(body, media_type="application/xml")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _malformed() -> S3Error:
    return S3Error(400, "MalformedXML", _MALFORMED_XML)


async def _read_xml(request: Request, root_name: str) -> ET.Element:
    """The request's XML document, whose root must be ``root_name`` (no DTDs or entities)."""
    body = await _read_small(
        request,
        _MAX_XML_BODY,
        lambda: S3Error(400, "MaxMessageLengthExceeded", "Your request was too big."),
    )
    _check_md5(request, hashlib.md5(body, usedforsecurity=False).hexdigest(), None)
    lowered = body.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise _malformed()
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise _malformed() from None
    if _local(root.tag) != root_name:
        raise _malformed()
    return root


def _owner(plane: ControlPlane) -> list[str]:
    who = f"<ID>{escape(plane.organization)}</ID><DisplayName>{escape(plane.organization)}</DisplayName>"
    return [f"<Initiator>{who}</Initiator>", f"<Owner>{who}</Owner>"]


# ---------------------------------------------------------------------------
# Multipart uploads
# ---------------------------------------------------------------------------


async def _staging(fn: Callable[..., T], *args: object, resource: str | None = None) -> T:
    """Run a staging-store call in a worker thread, its refusals as S3 errors."""
    try:
        return await anyio.to_thread.run_sync(lambda: fn(*args))
    except MultipartError as exc:
        status = 404 if exc.code == "NoSuchUpload" else 400
        raise S3Error(status, exc.code, exc.message, resource) from None
    except PathEscapeError as exc:
        raise S3Error(400, "InvalidArgument", str(exc), resource) from None


def _object_target(request: Request) -> tuple[ControlPlane, str, str]:
    """The plane, disk id and key of a request on one object (a file, not a folder)."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    key = request.path_params["key"]
    _check_key(key)
    if key.endswith("/"):
        raise S3Error(
            400, "InvalidArgument", "a key that ends with '/' names a folder, not an object", key
        )
    plane.object_disk(disk_id)
    return plane, disk_id, key


def _declared_part_size(request: Request, key: str) -> int | None:
    """``x-archil-part-size``: the size of every part but the last, if the client knows it."""
    raw = request.headers.get("x-archil-part-size")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PART_SIZE:
        raise S3Error(
            400, "InvalidArgument", f"x-archil-part-size must be from 1 to {MAX_PART_SIZE}", key
        )
    return int(raw)


async def create_multipart_upload(request: Request) -> Response:
    """``POST {key}?uploads``: start an upload (the same ``Idempotency-Key`` gives the same one).

    With ``x-archil-part-size`` (an archil extension), parts of that size are
    written in place, so completing them needs no copy.
    """
    plane, disk_id, key = _object_target(request)
    async for _ in request.stream():
        pass
    extensions = plane.extensions
    part_size = _declared_part_size(request, key) if extensions else None
    idempotency_key = request.headers.get("idempotency-key") if extensions else None
    record: UploadRecord = await _staging(
        lambda: plane.disks.multipart.create(
            disk_id,
            key,
            request.headers.get("content-type"),
            part_size=part_size,
            idempotency_key=idempotency_key,
        ),
        resource=key,
    )
    return _xml_doc(
        "InitiateMultipartUploadResult",
        [_el("Bucket", disk_id), _el("Key", key), _el("UploadId", record.upload_id)],
    )


def _part_number(request: Request, key: str) -> int:
    raw = request.query_params.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PARTS:
        raise S3Error(
            400,
            "InvalidArgument",
            f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive",
            key,
        )
    return int(raw)


async def upload_part(request: Request) -> Response:
    """``PUT {key}?partNumber=&uploadId=``: stream one part to the staging area."""
    upload_id = request.query_params.get("uploadId", "")
    key = request.path_params["key"]
    if not upload_id or "partNumber" not in request.query_params:
        raise S3Error(400, "InvalidArgument", "UploadPart needs both partNumber and uploadId", key)
    number = _part_number(request, key)
    _refuse_copy(request, key)
    plane, disk_id, key = _object_target(request)
    expected = _content_length(request)
    if expected is not None and expected > MAX_PART_SIZE:
        raise _too_large(key, MAX_PART_SIZE)
    store = plane.disks.multipart
    writer = await _staging(
        store.begin_part, upload_id, disk_id, key, number, expected, resource=key
    )
    try:
        await _receive(request, writer, key, limit=MAX_PART_SIZE)
        part = await _staging(writer.commit, resource=key)
    except ClientDisconnect:
        await anyio.to_thread.run_sync(writer.abort)
        raise S3Error(
            400, "IncompleteBody", "the client disconnected before the body was complete", key
        ) from None
    except MultipartError as exc:  # the upload was completed or aborted meanwhile
        await anyio.to_thread.run_sync(writer.abort)
        raise S3Error(
            404 if exc.code == "NoSuchUpload" else 400, exc.code, exc.message, key
        ) from None
    except BaseException:
        await anyio.to_thread.run_sync(writer.abort)
        raise
    return Response(status_code=200, headers={"etag": f'"{part.etag}"'})


async def list_parts(request: Request) -> Response:
    """``GET {key}?uploadId=``: ListParts (``max-parts``, ``part-number-marker``)."""
    plane, disk_id, key = _object_target(request)
    upload_id = request.query_params.get("uploadId", "")
    max_parts = min(_int_arg(request, "max-parts", 1000), 1000)
    marker = _int_arg(request, "part-number-marker", 0)
    store = plane.disks.multipart
    record = await _staging(store.get, upload_id, disk_id, key, resource=key)
    parts = await _staging(store.list_parts, record, resource=key)
    after = [p for p in parts if p.number > marker]
    page, truncated = after[:max_parts], len(after) > max_parts
    out = [
        _el("Bucket", disk_id),
        _el("Key", key),
        _el("UploadId", upload_id),
        *_owner(plane),
        _el("StorageClass", "STANDARD"),
        _el("PartNumberMarker", marker),
    ]
    if page:
        out.append(_el("NextPartNumberMarker", page[-1].number))
    out += [_el("MaxParts", max_parts), _el("IsTruncated", "true" if truncated else "false")]
    for part in page:
        out.append(
            "<Part>"
            f"{_el('PartNumber', part.number)}{_el('LastModified', _iso(part.mtime))}"
            f"<ETag>&quot;{part.etag}&quot;</ETag>{_el('Size', part.size)}"
            "</Part>"
        )
    return _xml_doc("ListPartsResult", out)


def _after_marker(
    records: list[UploadRecord], key_marker: str, upload_id_marker: str
) -> list[UploadRecord]:
    """The uploads after ``(key-marker, upload-id-marker)`` in listing order."""
    if not key_marker:
        return records
    out: list[UploadRecord] = []
    passed = False
    for record in records:
        if record.key < key_marker:
            continue
        if record.key == key_marker:
            if upload_id_marker and passed:
                out.append(record)
            elif upload_id_marker and record.upload_id == upload_id_marker:
                passed = True
            continue
        out.append(record)
    return out


async def list_multipart_uploads(request: Request) -> Response:
    """``GET /s3/{diskId}?uploads``: the uploads in progress, by key, then by start time."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    q = request.query_params
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    key_marker, upload_id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
    max_uploads = min(_int_arg(request, "max-uploads", 1000), 1000)
    plane.object_disk(disk_id)
    records = await _staging(plane.disks.multipart.list_uploads, disk_id)
    records = [r for r in records if r.key.startswith(prefix)]
    items: list[UploadRecord | str] = []
    truncated = False
    for record in _after_marker(records, key_marker, upload_id_marker):
        rest = record.key[len(prefix) :]
        idx = rest.find(delimiter) if delimiter else -1
        item: UploadRecord | str = record if idx == -1 else prefix + rest[: idx + len(delimiter)]
        if isinstance(item, str) and (item <= key_marker or (items and items[-1] == item)):
            continue
        if len(items) >= max_uploads:
            truncated = True
            break
        items.append(item)
    out = [
        _el("Bucket", disk_id),
        _el("KeyMarker", key_marker),
        _el("UploadIdMarker", upload_id_marker),
    ]
    if truncated and items:
        last = items[-1]
        out.append(_el("NextKeyMarker", last if isinstance(last, str) else last.key))
        if not isinstance(last, str):
            out.append(_el("NextUploadIdMarker", last.upload_id))
    out += [_el("Prefix", prefix)]
    if delimiter:
        out.append(_el("Delimiter", delimiter))
    out += [_el("MaxUploads", max_uploads), _el("IsTruncated", "true" if truncated else "false")]
    for item in items:
        if isinstance(item, str):
            out.append(f"<CommonPrefixes>{_el('Prefix', item)}</CommonPrefixes>")
            continue
        out.append(
            f"<Upload>{_el('Key', item.key)}{_el('UploadId', item.upload_id)}"
            + "".join(_owner(plane))
            + f"{_el('StorageClass', 'STANDARD')}{_el('Initiated', _iso(item.initiated))}</Upload>"
        )
    return _xml_doc("ListMultipartUploadsResult", out)


def _parse_complete(root: ET.Element) -> list[tuple[int, str]]:
    parts: list[tuple[int, str]] = []
    for child in root:
        if _local(child.tag) != "Part":
            continue
        fields = {_local(c.tag): (c.text or "").strip() for c in child}
        number, etag = fields.get("PartNumber", ""), fields.get("ETag", "")
        if not number.isdigit() or not etag:
            raise _malformed()
        parts.append((int(number), etag))
    if not parts or len(parts) > MAX_PARTS:
        raise _malformed()
    return parts


async def complete_multipart_upload(request: Request) -> Response:
    """``POST {key}?uploadId=``: assemble the listed parts into the object, atomically.

    A repeat with the same parts after success answers the same result (the
    first answer may have been lost on the way back).
    """
    plane, disk_id, key = _object_target(request)
    upload_id = request.query_params.get("uploadId", "")
    requested = _parse_complete(await _read_xml(request, "CompleteMultipartUpload"))
    result = await _staging(
        lambda: plane.disks.multipart.complete(
            upload_id,
            disk_id,
            key,
            requested,
            min_part_size=plane.settings.min_part_size,
            destination=plane.disks.destination(disk_id, key),
        ),
        resource=key,
    )
    if result.stat is not None:
        st = result.stat
        plane.state.put_object_meta(
            disk_id,
            key,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ino=st.st_ino,
            etag=result.etag,
            content_type=result.content_type,
        )
    location = f"{str(request.base_url).rstrip('/')}/s3/{quote(disk_id)}/{quote(key, safe='/')}"
    return _xml_doc(
        "CompleteMultipartUploadResult",
        [
            _el("Location", location),
            _el("Bucket", disk_id),
            _el("Key", key),
            f"<ETag>&quot;{result.etag}&quot;</ETag>",
        ],
    )


async def abort_multipart_upload(request: Request) -> Response:
    """``DELETE {key}?uploadId=``: discard an upload and its parts (204)."""
    plane, disk_id, key = _object_target(request)
    upload_id = request.query_params.get("uploadId", "")
    await _staging(plane.disks.multipart.abort, upload_id, disk_id, key, resource=key)
    return Response(status_code=204)


# ---------------------------------------------------------------------------
# DeleteObjects
# ---------------------------------------------------------------------------


def _parse_delete(root: ET.Element) -> tuple[list[str], bool]:
    keys: list[str] = []
    quiet = False
    for child in root:
        name = _local(child.tag)
        if name == "Quiet":
            quiet = (child.text or "").strip().lower() == "true"
        elif name == "Object":
            key = next((c.text for c in child if _local(c.tag) == "Key"), None)
            if key is None:
                raise _malformed()
            keys.append(key)
    if not keys or len(keys) > _MAX_DELETE_KEYS:
        raise _malformed()
    return keys, quiet


async def delete_objects(request: Request) -> Response:
    """``POST /s3/{diskId}?delete``: delete up to 1000 keys; a missing key counts as deleted."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    plane.object_disk(disk_id)
    keys, quiet = _parse_delete(await _read_xml(request, "Delete"))

    def run() -> list[str]:
        out: list[str] = []
        for key in keys:
            try:
                split_key(key)
            except PathEscapeError as exc:
                out.append(
                    f"<Error>{_el('Key', key)}{_el('Code', 'InvalidArgument')}"
                    f"{_el('Message', str(exc))}</Error>"
                )
                continue
            try:
                plane.disks.delete_object(disk_id, key)
                plane.state.delete_object_meta(disk_id, key)
            except OSError:
                out.append(
                    f"<Error>{_el('Key', key)}{_el('Code', 'InternalError')}"
                    f"{_el('Message', 'the object could not be deleted')}</Error>"
                )
                continue
            if not quiet:
                out.append(f"<Deleted>{_el('Key', key)}</Deleted>")
        return out

    return _xml_doc("DeleteResult", await anyio.to_thread.run_sync(run))


class _KeyConvertor(Convertor[str]):
    """An object key: the rest of the path, newlines included.

    Starlette's ``path`` convertor is ``.*``, which stops at a newline (and ``$`` matches
    before a final one), so ``/s3/d/a%0Ab`` would reach no object route or the disk's;
    this one takes every character, and the key's own checks refuse what is not allowed.
    """

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("objectkey", _KeyConvertor())


def object_routes() -> list[Route]:
    """The ``/s3`` routes."""
    return [
        Route("/s3", no_bucket, methods=["GET", "HEAD", "PUT", "DELETE", "POST"]),
        Route("/s3/{disk_id}", bucket, methods=["GET", "HEAD", "POST"]),
        Route("/s3/{disk_id}/{key:objectkey}", get_object, methods=["GET", "HEAD"]),
        Route("/s3/{disk_id}/{key:objectkey}", put_object, methods=["PUT"]),
        Route("/s3/{disk_id}/{key:objectkey}", delete_object, methods=["DELETE"]),
        Route("/s3/{disk_id}/{key:objectkey}", post_object, methods=["POST"]),
    ]
