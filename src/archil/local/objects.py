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

This module is the route table: it tells the operations apart by method and
query string and hands each to its module: :mod:`.objects_io` (one object),
:mod:`.objects_bucket` (a whole disk) and :mod:`.objects_multipart` (multipart
uploads), which share :mod:`.objects_request` (reading requests) and
:mod:`.objects_xml` (:class:`S3Error` and the XML documents).
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .objects_bucket import (
    _MAX_DELETE_KEYS,
    _MAX_KEYS,
    _decode_token,
    _encode_token,
    _parse_delete,
    delete_objects,
    head_bucket,
    list_objects,
)
from .objects_io import (
    _MAX_APPEND,
    _etag_for,
    _etag_matches,
    _object_headers,
    _parse_range,
    _read_fd,
    append_object,
    read_object,
    remove_object,
    write_object,
)
from .objects_multipart import (
    T,
    _after_marker,
    _declared_part_size,
    _object_target,
    _parse_complete,
    _part_number,
    _staging,
    abort_multipart_upload,
    complete_multipart_upload,
    create_multipart_upload,
    list_multipart_uploads,
    list_parts,
    upload_part,
)
from .objects_request import (
    _CHUNK,
    _MAX_XML_BODY,
    _BodyWriter,
    _check_key,
    _check_md5,
    _content_length,
    _int_arg,
    _plane,
    _read_small,
    _read_xml,
    _receive,
    _refuse_copy,
    _too_large,
)
from .objects_xml import (
    _MALFORMED_XML,
    _NS,
    _XML_INVALID,
    S3Error,
    _el,
    _iso,
    _local,
    _malformed,
    _owner,
    _xml_doc,
    escape,
    s3_error_response,
)

__all__ = [
    "_CHUNK",
    "_MALFORMED_XML",
    "_MAX_APPEND",
    "_MAX_DELETE_KEYS",
    "_MAX_KEYS",
    "_MAX_XML_BODY",
    "_NS",
    "_XML_INVALID",
    "S3Error",
    "T",
    "_BodyWriter",
    "_after_marker",
    "_check_key",
    "_check_md5",
    "_content_length",
    "_declared_part_size",
    "_decode_token",
    "_el",
    "_encode_token",
    "_etag_for",
    "_etag_matches",
    "_int_arg",
    "_iso",
    "_local",
    "_malformed",
    "_object_headers",
    "_object_target",
    "_owner",
    "_parse_complete",
    "_parse_delete",
    "_parse_range",
    "_part_number",
    "_plane",
    "_read_fd",
    "_read_small",
    "_read_xml",
    "_receive",
    "_refuse_copy",
    "_staging",
    "_too_large",
    "_xml_doc",
    "abort_multipart_upload",
    "append_object",
    "bucket",
    "complete_multipart_upload",
    "create_multipart_upload",
    "delete_object",
    "delete_objects",
    "escape",
    "get_object",
    "head_bucket",
    "list_multipart_uploads",
    "list_objects",
    "list_parts",
    "no_bucket",
    "object_routes",
    "post_object",
    "put_object",
    "s3_error_response",
    "upload_part",
]


async def get_object(request: Request) -> Response:
    """``GET``/``HEAD /s3/{diskId}/{key}`` (an empty key is the disk; ``?uploadId=`` is ListParts).

    ``If-Match`` is honoured (412 when the object's ETag differs), so the
    ranges of one download all come from the same object.
    """
    if request.path_params["key"] == "":
        return await bucket(request)
    if request.method == "GET" and "uploadId" in request.query_params:
        return await list_parts(request)
    return await read_object(request)


async def put_object(request: Request) -> Response:
    """``PUT /s3/{diskId}/{key}``: PutObject, UploadPart (``?partNumber=&uploadId=``) or append."""
    q = request.query_params
    if "uploadId" in q or "partNumber" in q:
        return await upload_part(request)
    if "append" in q:
        return await append_object(request)
    return await write_object(request)


async def delete_object(request: Request) -> Response:
    """``DELETE /s3/{diskId}/{key}``: 204, also when there was nothing there.

    With ``?uploadId=`` it is AbortMultipartUpload.
    """
    if "uploadId" in request.query_params:
        return await abort_multipart_upload(request)
    return await remove_object(request)


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
