"""Wire policy shared by the async and blocking clients: URLs, bodies, envelopes, errors.

Nothing here does I/O; the transports call these helpers on responses whose
body has already been read.

Every helper and constant is importable from here; they live by concern in
:mod:`.request` (options, argument checks, paths), :mod:`.response` (envelopes,
errors), :mod:`.disks`, :mod:`.containers` and :mod:`.objects` (the S3 API).
"""

from __future__ import annotations

from .containers import _IDLE as _IDLE
from .containers import (
    CONTAINER_NAME_PREFIX,
    CONTAINERS_PREFIX,
    check_container_status,
    container_from,
    container_keys,
    container_script,
    parse_exit_code,
)
from .containers import _port_mappings as _port_mappings
from .disks import _same_user as _same_user
from .disks import check_user_type, disk_create_request, with_created_users
from .objects import _CONTENT_RANGE as _CONTENT_RANGE
from .objects import _XML_DECL as _XML_DECL
from .objects import _XML_UNSAFE as _XML_UNSAFE
from .objects import (
    MAX_APPEND_SIZE,
    MAX_CONCURRENCY,
    MAX_DELETE_KEYS,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    check_part_size,
    complete_multipart_body,
    delete_objects_body,
    effective_part_size,
    multipart_etag,
    object_info_from_headers,
    parse_complete_multipart,
    parse_content_range,
    parse_delete_result,
    parse_initiate_multipart,
    parse_list_multipart_uploads,
    parse_list_objects,
    parse_list_parts,
    part_ranges,
)
from .objects import _children as _children
from .objects import _etag as _etag
from .objects import _http_date as _http_date
from .objects import _int_field as _int_field
from .objects import _xml_root as _xml_root
from .objects import _xml_text as _xml_text
from .request import (
    MAX_PAGE_SIZE,
    RequestOptions,
    check_count,
    check_limit,
    check_name,
    check_seconds,
    disk_path,
    object_url,
    query,
    user_agent,
)
from .response import _MAX_ERROR_TEXT as _MAX_ERROR_TEXT
from .response import (
    Envelope,
    decode_envelope,
    error_from_response,
    items_decoder,
    map_transport_error,
    parse_model,
)
from .response import M as M
from .response import _body_of as _body_of
from .response import _local as _local
from .response import _request_info as _request_info
from .response import _text as _text
from .response import _xml_fields as _xml_fields

__all__ = [
    "CONTAINERS_PREFIX",
    "CONTAINER_NAME_PREFIX",
    "MAX_APPEND_SIZE",
    "MAX_CONCURRENCY",
    "MAX_DELETE_KEYS",
    "MAX_PAGE_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIB",
    "MIN_PART_SIZE",
    "Envelope",
    "RequestOptions",
    "check_container_status",
    "check_count",
    "check_limit",
    "check_name",
    "check_part_size",
    "check_seconds",
    "check_user_type",
    "complete_multipart_body",
    "container_from",
    "container_keys",
    "container_script",
    "decode_envelope",
    "delete_objects_body",
    "disk_create_request",
    "disk_path",
    "effective_part_size",
    "error_from_response",
    "items_decoder",
    "map_transport_error",
    "multipart_etag",
    "object_info_from_headers",
    "object_url",
    "parse_complete_multipart",
    "parse_content_range",
    "parse_delete_result",
    "parse_exit_code",
    "parse_initiate_multipart",
    "parse_list_multipart_uploads",
    "parse_list_objects",
    "parse_list_parts",
    "parse_model",
    "part_ranges",
    "query",
    "user_agent",
    "with_created_users",
]
