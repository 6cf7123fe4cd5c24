"""Reading the requests of the local object gateway.

The request's plane and key checks, integer query arguments, and its body:
streamed into a writer in 1 MiB writes with its ``Content-Length`` and
``Content-MD5`` checked, read whole when small, or parsed as an XML document.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio.to_thread
from starlette.requests import Request

from .disks import PathEscapeError, split_key
from .objects_xml import S3Error, _local, _malformed

if TYPE_CHECKING:
    from .server import ControlPlane

_CHUNK = 1024 * 1024
_MAX_XML_BODY = 2 * 1024 * 1024


def _plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


def _check_key(key: str) -> None:
    try:
        split_key(key)
    except PathEscapeError as exc:
        raise S3Error(400, "InvalidArgument", str(exc), key) from None


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


def _refuse_copy(request: Request, key: str) -> None:
    if "x-amz-copy-source" in request.headers:
        raise S3Error(501, "NotImplemented", "copying objects is not supported", key)


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
