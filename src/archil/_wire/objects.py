"""The object API (S3-compatible): metadata, listings, multipart uploads, bulk deletes, ranges.

The bodies sent are S3's XML documents and the answers parsed are S3's XML
results; an ``<Error>`` inside a 200 answer raises.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import datetime
from xml.sax.saxutils import escape as _xml_escape

from .._errors import APIError
from .._models.objects import (
    DeleteError,
    DeleteResult,
    MultipartUpload,
    MultipartUploadListing,
    ObjectInfo,
    ObjectListing,
    PartListing,
    UploadedPart,
)
from .request import check_count
from .response import _local, _xml_fields


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def object_info_from_headers(
    key: str, headers: Mapping[str, str], *, size: int | None = None
) -> ObjectInfo:
    """An :class:`ObjectInfo` from HEAD/GET/PUT response headers (``size`` overrides Content-Length)."""
    if size is None:
        try:
            size = int(headers.get("content-length", "0"))
        except ValueError:
            size = 0
    return ObjectInfo(
        key=key,
        size=size,
        etag=_etag(headers.get("etag")),
        last_modified=_http_date(headers.get("last-modified")),
    )


def parse_list_objects(body: bytes) -> ObjectListing:
    """Parse a ListObjectsV2 ``<ListBucketResult>`` document."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise APIError("the object gateway sent a malformed listing") from None
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    truncated = False
    token: str | None = None
    for child in root:
        name = _local(child.tag)
        if name == "Contents":
            fields = _xml_fields(child)
            try:
                size = int(fields.get("Size") or 0)
            except ValueError:
                size = 0
            objects.append(
                ObjectInfo(
                    key=fields.get("Key", ""),
                    size=size,
                    etag=_etag(fields.get("ETag")),
                    last_modified=fields.get("LastModified") or None,
                )
            )
        elif name == "CommonPrefixes":
            prefix = _xml_fields(child).get("Prefix")
            if prefix:
                prefixes.append(prefix)
        elif name == "IsTruncated":
            truncated = (child.text or "").strip().lower() == "true"
        elif name == "NextContinuationToken":
            token = (child.text or "").strip() or None
    return ObjectListing(
        objects=objects,
        common_prefixes=prefixes,
        is_truncated=truncated,
        next_continuation_token=token if truncated else None,
    )


# -- multipart uploads, bulk delete, append, ranged downloads -----------------

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB
"""S3's least size of every part of a multipart upload but the last."""
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_DELETE_KEYS = 1000
"""The most keys one DeleteObjects request takes; ``delete_many`` sends batches."""
MAX_APPEND_SIZE = MIB
"""The most one append may add."""
MAX_CONCURRENCY = 64

_XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>'
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def check_part_size(value: int, field: str = "part_size") -> int:
    """A part size between S3's 5 MiB minimum and its 5 GiB maximum."""
    return check_count(value, field, MIN_PART_SIZE, MAX_PART_SIZE)


def effective_part_size(total: int, part_size: int) -> int:
    """``part_size``, grown (to whole MiB) when ``total`` would otherwise need more than 10,000 parts."""
    if -(-total // part_size) <= MAX_PARTS:
        return part_size
    needed = -(-total // MAX_PARTS)
    return -(-needed // MIB) * MIB


def part_ranges(total: int, part_size: int) -> list[tuple[int, int, int]]:
    """``(part number, offset, length)`` of each part of a ``total``-byte object (at least one part)."""
    size = effective_part_size(total, part_size)
    ranges = [(i // size + 1, i, min(size, total - i)) for i in range(0, total, size)]
    return ranges or [(1, 0, 0)]


def multipart_etag(part_etags: Sequence[str]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' binary MD5s, ``-``, the part count.

    ``None`` parts or ETags that are not MD5s make it unknowable: returns ``""``.
    """
    digest = hashlib.md5(usedforsecurity=False)
    for etag in part_etags:
        try:
            digest.update(bytes.fromhex(_etag(etag) or ""))
        except ValueError:
            return ""
    return f"{digest.hexdigest()}-{len(part_etags)}"


def _xml_text(value: str, field: str) -> str:
    if _XML_UNSAFE.search(value):
        raise ValueError(f"{field} {value!r} contains a character that XML cannot carry")
    return _xml_escape(value)


def delete_objects_body(keys: Sequence[str], quiet: bool, *, first_index: int = 0) -> bytes:
    """The ``<Delete>`` document of DeleteObjects; a key XML cannot carry is a ``ValueError``."""
    objects = "".join(
        f"<Object><Key>{_xml_text(k, f'keys[{first_index + i}]')}</Key></Object>"
        for i, k in enumerate(keys)
    )
    flag = "<Quiet>true</Quiet>" if quiet else ""
    return f"{_XML_DECL}<Delete>{objects}{flag}</Delete>".encode()


def complete_multipart_body(parts: Sequence[UploadedPart]) -> bytes:
    """The ``<CompleteMultipartUpload>`` document, parts in part-number order."""
    body = "".join(
        f"<Part><PartNumber>{p.part_number}</PartNumber>"
        f"<ETag>&quot;{_xml_text(_etag(p.etag) or '', 'etag')}&quot;</ETag></Part>"
        for p in sorted(parts, key=lambda p: p.part_number)
    )
    return f"{_XML_DECL}<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()


def _xml_root(body: bytes, what: str) -> ET.Element:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise APIError(f"the object gateway sent a malformed {what}") from None
    if _local(root.tag) == "Error":
        # S3 may answer 200 and then report the failure in the body (CompleteMultipartUpload).
        fields = _xml_fields(root)
        raise APIError(
            fields.get("Message") or f"the object gateway reported an error in its {what}",
            code=fields.get("Code") or None,
            request_id=fields.get("RequestId") or None,
        )
    return root


def _children(root: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in root if _local(child.tag) == name]


def _int_field(fields: Mapping[str, str], name: str) -> int | None:
    try:
        return int(fields[name])
    except (KeyError, ValueError):
        return None


def parse_initiate_multipart(body: bytes, disk_id: str, key: str) -> MultipartUpload:
    """Parse ``<InitiateMultipartUploadResult>``."""
    fields = _xml_fields(_xml_root(body, "CreateMultipartUpload answer"))
    upload_id = fields.get("UploadId")
    if not upload_id:
        raise APIError("the object gateway's CreateMultipartUpload answer has no UploadId")
    return MultipartUpload(upload_id=upload_id, key=fields.get("Key") or key, disk_id=disk_id)


def parse_complete_multipart(body: bytes) -> str | None:
    """The ETag in ``<CompleteMultipartUploadResult>`` (an ``<Error>`` in a 200 raises)."""
    return _etag(_xml_fields(_xml_root(body, "CompleteMultipartUpload answer")).get("ETag"))


def parse_delete_result(body: bytes) -> DeleteResult:
    """Parse ``<DeleteResult>``."""
    root = _xml_root(body, "DeleteObjects answer")
    deleted = [_xml_fields(d).get("Key", "") for d in _children(root, "Deleted")]
    errors = [
        DeleteError(
            key=f.get("Key", ""), code=f.get("Code") or None, message=f.get("Message") or None
        )
        for f in (_xml_fields(e) for e in _children(root, "Error"))
    ]
    return DeleteResult(deleted=deleted, errors=errors)


def parse_list_parts(body: bytes) -> PartListing:
    """Parse ``<ListPartsResult>``."""
    root = _xml_root(body, "ListParts answer")
    top = _xml_fields(root)
    parts = []
    for element in _children(root, "Part"):
        f = _xml_fields(element)
        parts.append(
            UploadedPart(
                part_number=_int_field(f, "PartNumber") or 1,
                etag=_etag(f.get("ETag")) or "",
                size=_int_field(f, "Size"),
                last_modified=f.get("LastModified") or None,
            )
        )
    truncated = top.get("IsTruncated", "").lower() == "true"
    return PartListing(
        parts=parts,
        is_truncated=truncated,
        next_part_number_marker=_int_field(top, "NextPartNumberMarker") if truncated else None,
    )


def parse_list_multipart_uploads(body: bytes, disk_id: str) -> MultipartUploadListing:
    """Parse ``<ListMultipartUploadsResult>``."""
    root = _xml_root(body, "ListMultipartUploads answer")
    top = _xml_fields(root)
    uploads = [
        MultipartUpload(
            upload_id=f.get("UploadId", ""),
            key=f.get("Key", ""),
            disk_id=disk_id,
            initiated=f.get("Initiated") or None,
        )
        for f in (_xml_fields(u) for u in _children(root, "Upload"))
    ]
    prefixes = [
        p for p in (_xml_fields(c).get("Prefix") for c in _children(root, "CommonPrefixes")) if p
    ]
    truncated = top.get("IsTruncated", "").lower() == "true"
    return MultipartUploadListing(
        uploads=uploads,
        common_prefixes=prefixes,
        is_truncated=truncated,
        next_key_marker=(top.get("NextKeyMarker") or None) if truncated else None,
        next_upload_id_marker=(top.get("NextUploadIdMarker") or None) if truncated else None,
    )


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total)`` of a ``Content-Range: bytes a-b/n`` header (total ``None`` for ``*``)."""
    m = _CONTENT_RANGE.match((value or "").strip())
    if m is None:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total
