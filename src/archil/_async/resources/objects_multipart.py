"""``client.objects.multipart``: the multipart-upload lifecycle, driven by hand.

:class:`AsyncMultipart` creates an upload, uploads its parts, lists them and
the uploads in progress, and completes or aborts it. ``objects.put`` and
``objects.upload_file`` run this lifecycle for you above their
``multipart_threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence

from typing_extensions import Unpack

from ..._errors import APIError, NotFoundError
from ..._models import (
    MultipartUpload,
    MultipartUploadListing,
    ObjectInfo,
    PartListing,
    UploadedPart,
)
from ..._wire import (
    MAX_PART_SIZE,
    MAX_PARTS,
    RequestOptions,
    check_count,
    check_limit,
    complete_multipart_body,
    multipart_etag,
    object_info_from_headers,
    object_url,
    parse_complete_multipart,
    parse_initiate_multipart,
    parse_list_multipart_uploads,
    parse_list_parts,
    query,
)
from .._transport import AsyncTransport
from .objects_parts import (
    _OCTET_STREAM,
    DEFAULT_CHUNK_SIZE,
    _check_file_key,
    _check_prefix,
    _check_upload_id,
    _PartBody,
    _view_body,
)

__all__ = ["AsyncMultipart"]

_COMPLETE_READ_TIMEOUT = 600.0


class AsyncMultipart:
    """The multipart-upload lifecycle, for callers who drive the parts themselves.

    ``create`` -> ``upload_part`` (any order, in parallel if you like; every part
    but the last at least 5 MiB) -> ``complete`` (or ``abort``), with
    ``list_parts`` and ``list_uploads`` to resume. Nothing is visible under the
    key until ``complete`` succeeds. ``objects.put`` and ``objects.upload_file``
    run this lifecycle for you above their ``multipart_threshold``.
    """

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _url(self, disk_id: str, key: str | None = None) -> str:
        return object_url(self._transport.config.object_base_url, disk_id, key)

    async def create(
        self,
        disk_id: str,
        key: str,
        *,
        content_type: str | None = None,
        part_size: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> MultipartUpload:
        """Start a multipart upload of ``key`` (CreateMultipartUpload); the object gets ``content_type``.

        ``part_size``, when every part but the last will have that size, is
        sent as a hint (``x-archil-part-size``) that lets the local gateway
        write the parts in place and complete without copying; other gateways
        ignore it.
        """
        url = self._url(disk_id, _check_file_key(key))
        headers = {"Content-Type": content_type or _OCTET_STREAM}
        if part_size is not None:
            headers["x-archil-part-size"] = str(
                check_count(part_size, "part_size", 1, MAX_PART_SIZE)
            )
        response = await self._transport.send(
            "POST", url, params={"uploads": ""}, headers=headers, **options
        )
        return parse_initiate_multipart(response.content, disk_id, key)

    async def upload_part(
        self,
        disk_id: str,
        key: str,
        upload_id: str,
        part_number: int,
        data: bytes,
        **options: Unpack[RequestOptions],
    ) -> UploadedPart:
        """Upload part ``part_number`` (1 to 10,000) of an upload; retried on transient failures.

        Uploading a part number again replaces that part. Keep the returned
        parts (or call :meth:`list_parts`) for :meth:`complete`.
        """
        url = self._url(disk_id, _check_file_key(key))
        _check_upload_id(upload_id)
        check_count(part_number, "part_number", 1, MAX_PARTS)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        view = memoryview(data).cast("B")
        part = _PartBody(part_number, len(view), _view_body(view, DEFAULT_CHUNK_SIZE))
        return await self._send_part(url, upload_id, part, options)

    async def _send_part(
        self, url: str, upload_id: str, part: _PartBody, options: RequestOptions
    ) -> UploadedPart:
        response = await self._transport.send(
            "PUT",
            url,
            params={"partNumber": part.number, "uploadId": upload_id},
            stream_body=part.body,
            headers={"Content-Length": str(part.length), "Content-Type": _OCTET_STREAM},
            **options,
        )
        etag = object_info_from_headers("", response.headers).etag
        if not etag:
            raise APIError(f"the object gateway sent no ETag for part {part.number}")
        return UploadedPart(part_number=part.number, etag=etag, size=part.length)

    async def list_parts(
        self,
        disk_id: str,
        key: str,
        upload_id: str,
        *,
        max_parts: int | None = None,
        part_number_marker: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> PartListing:
        """One page of the parts uploaded so far (ListParts); follow ``next_part_number_marker``."""
        url = self._url(disk_id, _check_file_key(key))
        params = query(
            **{
                "uploadId": _check_upload_id(upload_id),
                "max-parts": check_limit(max_parts, "max_parts", 1000),
                "part-number-marker": None
                if part_number_marker is None
                else check_count(part_number_marker, "part_number_marker", 0, MAX_PARTS),
            }
        )
        response = await self._transport.send("GET", url, params=params, **options)
        return parse_list_parts(response.content)

    async def list_uploads(
        self,
        disk_id: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        key_marker: str | None = None,
        upload_id_marker: str | None = None,
        max_uploads: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> MultipartUploadListing:
        """One page of the uploads in progress on a disk (ListMultipartUploads)."""
        url = self._url(disk_id)
        params = query(
            **{
                "uploads": "",
                "prefix": _check_prefix(prefix) or None,
                "delimiter": delimiter or None,
                "key-marker": key_marker,
                "upload-id-marker": None
                if upload_id_marker is None
                else _check_upload_id(upload_id_marker),
                "max-uploads": check_limit(max_uploads, "max_uploads", 1000),
            }
        )
        response = await self._transport.send("GET", url, params=params, **options)
        return parse_list_multipart_uploads(response.content, disk_id)

    async def complete(
        self,
        disk_id: str,
        key: str,
        upload_id: str,
        parts: Sequence[UploadedPart | tuple[int, str]],
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Assemble ``parts`` into the object (CompleteMultipartUpload); it appears all at once.

        Retried on transient failures: when a retry finds the upload gone
        (``NoSuchUpload``, its first answer was lost), the object is checked
        by its ETag and, if it is the one these parts make, that is success.
        """
        url = self._url(disk_id, _check_file_key(key))
        _check_upload_id(upload_id)
        chosen = _check_parts(parts)
        try:
            response = await self._transport.send(
                "POST",
                url,
                params={"uploadId": upload_id},
                content=complete_multipart_body(chosen),
                headers={"Content-Type": "application/xml"},
                # Assembling a big object takes a while: allow a long wait for the answer.
                timeout=self._transport.timeout(
                    options.get("timeout"), read=_COMPLETE_READ_TIMEOUT
                ),
                max_retries=options.get("max_retries"),
            )
        except NotFoundError as exc:
            if exc.code != "NoSuchUpload":
                raise
            done = await self._already_completed(url, key, chosen, options)
            if done is None:
                raise
            return done
        etag = parse_complete_multipart(response.content)
        sizes = [p.size for p in chosen]
        if any(s is None for s in sizes):
            head = await self._transport.send("HEAD", url, **options)
            return object_info_from_headers(key, head.headers)
        return ObjectInfo(key=key, size=sum(s or 0 for s in sizes), etag=etag)

    async def _already_completed(
        self, url: str, key: str, parts: list[UploadedPart], options: RequestOptions
    ) -> ObjectInfo | None:
        expected = multipart_etag([p.etag for p in parts])
        try:
            head = await self._transport.send("HEAD", url, **options)
        except NotFoundError:
            return None
        info = object_info_from_headers(key, head.headers)
        return info if expected and info.etag == expected else None

    async def abort(
        self, disk_id: str, key: str, upload_id: str, **options: Unpack[RequestOptions]
    ) -> None:
        """Discard an upload and its parts (AbortMultipartUpload); an upload already gone is fine."""
        url = self._url(disk_id, _check_file_key(key))
        try:
            await self._transport.send(
                "DELETE", url, params={"uploadId": _check_upload_id(upload_id)}, **options
            )
        except NotFoundError as exc:
            if exc.code not in (None, "NoSuchUpload"):
                raise


def _check_parts(parts: Sequence[UploadedPart | tuple[int, str]]) -> list[UploadedPart]:
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) or not parts:
        raise ValueError("parts must be a non-empty list of UploadedPart or (part_number, etag)")
    out: list[UploadedPart] = []
    for i, part in enumerate(parts):
        if isinstance(part, tuple):
            if len(part) != 2:
                raise ValueError(f"parts[{i}] must be (part_number, etag), got {part!r}")
            check_count(part[0], f"parts[{i}].part_number", 1, MAX_PARTS)
            part = UploadedPart(part_number=part[0], etag=str(part[1]))
        elif not isinstance(part, UploadedPart):
            raise ValueError(f"parts[{i}] must be an UploadedPart, got {type(part).__name__}")
        if not part.etag:
            raise ValueError(f"parts[{i}].etag must not be empty")
        out.append(part)
    out.sort(key=lambda p: p.part_number)
    for i in range(1, len(out)):
        if out[i].part_number == out[i - 1].part_number:
            raise ValueError(f"parts: part number {out[i].part_number} is listed twice")
    return out
