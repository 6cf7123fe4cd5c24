"""The multipart-upload routes of the local object gateway.

CreateMultipartUpload (``POST {key}?uploads``), UploadPart
(``PUT {key}?partNumber=&uploadId=``), ListParts (``GET {key}?uploadId=``),
CompleteMultipartUpload (``POST {key}?uploadId=``), AbortMultipartUpload
(``DELETE {key}?uploadId=``) and ListMultipartUploads
(``GET /s3/{diskId}?uploads``). The parts are staged outside the disk by
:mod:`.multipart`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .disks import PathEscapeError
from .multipart import MAX_PART_SIZE, MAX_PARTS, MultipartError, UploadRecord
from .objects_request import (
    _check_key,
    _content_length,
    _int_arg,
    _plane,
    _read_xml,
    _receive,
    _refuse_copy,
    _too_large,
)
from .objects_xml import S3Error, _el, _iso, _local, _malformed, _owner, _xml_doc

if TYPE_CHECKING:
    from .server import ControlPlane

__all__ = [
    "abort_multipart_upload",
    "complete_multipart_upload",
    "create_multipart_upload",
    "list_multipart_uploads",
    "list_parts",
    "upload_part",
]


T = TypeVar("T")


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
