"""The operations on a whole disk (an S3 bucket) of the local object gateway.

HeadBucket, ListObjectsV2 (``GET /s3/{diskId}?list-type=2``, paginated by
continuation tokens) and DeleteObjects (``POST /s3/{diskId}?delete``, up to
1000 keys).
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from urllib.parse import quote

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from .disks import NoSuchKey, PathEscapeError, split_key
from .objects_io import _etag_for
from .objects_request import _int_arg, _plane, _read_xml
from .objects_xml import _NS, S3Error, _el, _iso, _local, _malformed, _xml_doc, escape

__all__ = ["delete_objects", "head_bucket", "list_objects"]

_MAX_KEYS = 1000
_MAX_DELETE_KEYS = 1000


async def head_bucket(request: Request) -> Response:
    """``HEAD /s3/{diskId}``: 200 when the disk exists."""
    _plane(request).object_disk(request.path_params["disk_id"])
    return Response(status_code=200)


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
