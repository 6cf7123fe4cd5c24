"""Wire policy shared by the async and blocking clients: URLs, bodies, envelopes, errors.

Nothing here does I/O; the transports call these helpers on responses whose
body has already been read.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import json
import math
import posixpath
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, get_args
from urllib.parse import quote
from xml.sax.saxutils import escape as _xml_escape

import httpx
from pydantic import BaseModel, ValidationError
from typing_extensions import TypedDict

from ._errors import APIConnectionError, APIError, APIStatusError, APITimeoutError, error_for_status
from ._models import (
    SANDBOX_DISK_PATH,
    AuthorizedUser,
    Container,
    ContainerStatus,
    CreateDiskRequest,
    CreateDiskResult,
    DeleteError,
    DeleteResult,
    Disk,
    Mount,
    MountProvider,
    MultipartUpload,
    MultipartUploadListing,
    ObjectInfo,
    ObjectListing,
    PartListing,
    PortMapping,
    SandboxData,
    SandboxEndpoint,
    UploadedPart,
    validate_container_id,
    validate_disk_id,
    validate_object_key,
)

__all__ = [
    "CONTAINERS_PREFIX",
    "MAX_PAGE_SIZE",
    "Envelope",
    "RequestOptions",
    "check_container_status",
    "check_limit",
    "check_name",
    "check_seconds",
    "check_user_type",
    "container_from",
    "container_keys",
    "container_script",
    "decode_envelope",
    "disk_create_request",
    "disk_path",
    "error_from_response",
    "items_decoder",
    "map_transport_error",
    "object_info_from_headers",
    "object_url",
    "parse_exit_code",
    "parse_list_objects",
    "parse_model",
    "query",
    "user_agent",
    "with_created_users",
]

M = TypeVar("M", bound=BaseModel)

MAX_PAGE_SIZE = 100
_MAX_ERROR_TEXT = 1000


class RequestOptions(TypedDict, total=False):
    """Per-call overrides accepted by every client method.

    Attributes:
        timeout: seconds allowed for each HTTP request of the call.
        max_retries: how many times a transient failure is retried.
    """

    timeout: float
    max_retries: int


@functools.cache
def user_agent() -> str:
    """The ``User-Agent`` header: ``archil-python/<version>``."""
    try:
        from importlib.metadata import version

        ver = version("archil")
    except Exception:
        ver = "0+unknown"
    return f"archil-python/{ver}"


# ---------------------------------------------------------------------------
# Argument checks and paths
# ---------------------------------------------------------------------------


def check_limit(
    limit: int | None, field: str = "limit", maximum: int = MAX_PAGE_SIZE
) -> int | None:
    """A page size: ``None`` or an integer from 1 to ``maximum`` (100 by default)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise ValueError(f"{field} must be an integer from 1 to {maximum}, got {limit!r}")
    return limit


def check_name(value: str, field: str) -> str:
    """A non-empty identifier that is safe as a single URL path segment."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    if "/" in value or "\x00" in value or value in (".", ".."):
        raise ValueError(f"{field} {value!r} is not a valid identifier")
    return value


def check_seconds(value: float | None, field: str) -> float | None:
    """``None`` or a non-negative, finite number of seconds."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{field} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def check_container_status(status: str | None) -> str | None:
    """``None`` or one of the container states."""
    if status is not None and status not in get_args(ContainerStatus):
        raise ValueError(
            f"status must be one of {', '.join(get_args(ContainerStatus))}, got {status!r}"
        )
    return status


def check_user_type(user_type: str) -> str:
    """A disk user type: ``token`` or ``awssts``."""
    if user_type not in ("token", "awssts"):
        raise ValueError(f"user_type must be 'token' or 'awssts', got {user_type!r}")
    return user_type


def disk_path(disk_id: str, *rest: str) -> str:
    """``/api/disks/{id}[/rest...]`` for a validated disk id."""
    validate_disk_id(disk_id)
    return "/".join(("/api/disks", quote(disk_id, safe=""), *rest))


def object_url(base: str, disk_id: str, key: str | None = None) -> str:
    """Path-style object URL ``{base}/{diskId}[/{key}]``; the key is quoted with '/' kept."""
    validate_disk_id(disk_id)
    url = f"{base}/{quote(disk_id, safe='')}"
    if key is None:
        return url
    validate_object_key(key)
    return f"{url}/{quote(key, safe='/')}"


def query(**params: Any) -> dict[str, str | int]:
    """Query parameters with ``None`` dropped and booleans spelled ``true``/``false``."""
    out: dict[str, str | int] = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, int):
            out[name] = value
        else:
            out[name] = str(value)
    return out


# ---------------------------------------------------------------------------
# Envelopes and errors
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A decoded ``{"success": true, "data": ..., "nextCursor": ...}`` answer."""

    data: Any
    next_cursor: str | None
    status_code: int


def decode_envelope(response: httpx.Response) -> Envelope:
    """Unwrap a successful control-plane answer (its body already read)."""
    status = response.status_code
    if not response.content:
        return Envelope(None, None, status)
    try:
        body = json.loads(response.content)
    except ValueError:
        raise APIError(
            "the control plane sent a response that is not JSON",
            status_code=status,
            request_id=response.headers.get("x-request-id"),
        ) from None
    if isinstance(body, dict) and "success" in body:
        if body.get("success") is False:
            raise error_from_response(response)
        cursor = body.get("nextCursor")
        return Envelope(
            body.get("data"), cursor if isinstance(cursor, str) and cursor else None, status
        )
    return Envelope(body, None, status)


def parse_model(model: type[M], data: Any, status_code: int | None = None) -> M:
    """Validate response ``data`` as ``model``; a malformed answer is an :class:`APIError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise APIError(
            f"unexpected {model.__name__} in the control plane's response: "
            f"{exc.error_count()} invalid field(s)",
            status_code=status_code,
        ) from None


def items_decoder(model: type[M], key: str | None = None) -> Callable[[Any], list[M]]:
    """A decoder of list ``data``: ``null`` is empty, ``{key: [...]}`` is unwrapped."""

    def decode(data: Any) -> list[M]:
        if data is None:
            return []
        if isinstance(data, dict):
            if key is None:
                raise APIError("unexpected list in the control plane's response")
            data = data.get(key) or []
        if not isinstance(data, list):
            raise APIError("unexpected list in the control plane's response")
        return [parse_model(model, item) for item in data]

    return decode


def _request_info(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        request = response.request
    except RuntimeError:
        return None, None
    return request.method, str(request.url.copy_with(query=None))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_fields(element: ET.Element) -> dict[str, str]:
    return {_local(child.tag): (child.text or "").strip() for child in element}


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The exception for an error answer: JSON envelope, S3 XML ``<Error>``, or plain text."""
    status = response.status_code
    headers = response.headers
    request_id = headers.get("x-request-id") or headers.get("x-amz-request-id")
    message: str | None = None
    code: str | None = None
    body = response.content
    stripped = body.lstrip()
    ctype = headers.get("content-type", "")
    if stripped[:1] in (b"{", b"[") or "json" in ctype:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            err = payload.get("error")
            if isinstance(err, dict):
                message = _text(err.get("message"))
                code = _text(err.get("code"))
            else:
                message = _text(err) or _text(payload.get("message"))
            code = code or _text(payload.get("code"))
    elif stripped[:1] == b"<" or "xml" in ctype:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            root = None
        if root is not None and _local(root.tag) == "Error":
            fields = _xml_fields(root)
            message = fields.get("Message") or None
            code = fields.get("Code") or None
            request_id = request_id or fields.get("RequestId") or None
    elif stripped:
        message = body.decode("utf-8", "replace").strip()[:_MAX_ERROR_TEXT]
    if not message:
        message = response.reason_phrase or f"HTTP {status}"
    method, url = _request_info(response)
    return error_for_status(
        status,
        message,
        code=code,
        request_id=request_id,
        method=method,
        url=url,
        body=_body_of(body, ctype),
        headers={k.lower(): v for k, v in headers.items()},
    )


def _body_of(raw: bytes, ctype: str) -> Any:
    """An error answer's body for :attr:`APIError.body`: decoded JSON, else text (capped)."""
    if not raw:
        return None
    if "json" in ctype or raw.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw[: _MAX_ERROR_TEXT * 16].decode("utf-8", "replace")


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def map_transport_error(exc: Exception) -> APIConnectionError:
    """Turn an ``httpx`` transport failure into :class:`APIConnectionError` / :class:`APITimeoutError`."""
    method: str | None = None
    url: str | None = None
    if isinstance(exc, httpx.RequestError):
        try:
            method = exc.request.method
            url = str(exc.request.url.copy_with(query=None))
        except RuntimeError:
            pass
    where = f" ({method} {url})" if method and url else ""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out{where}: {detail}", method=method, url=url)
    return APIConnectionError(
        f"could not reach the Archil control plane{where}: {detail}", method=method, url=url
    )


# ---------------------------------------------------------------------------
# Disks
# ---------------------------------------------------------------------------


def disk_create_request(
    name: str,
    provider: str | None,
    region: str | None,
    mounts: Sequence[Mount | Mapping[str, Any]] | None,
) -> CreateDiskRequest:
    """The body of ``POST /api/disks``, with the client-side ``provider``/``region`` checks."""
    if provider is not None and provider not in get_args(MountProvider):
        raise ValueError(
            f"provider must be one of {', '.join(get_args(MountProvider))}, got {provider!r}"
        )
    if isinstance(mounts, (Mount, Mapping)):
        raise ValueError("mounts must be a list of archil.Mount")
    parsed: list[Mount] | None = None
    if mounts is not None:
        parsed = [m if isinstance(m, Mount) else Mount.model_validate(m) for m in mounts]
        for mount in parsed:
            if provider is not None and mount.provider != provider:
                raise ValueError(
                    f"provider {provider!r} does not match the mount's provider {mount.provider!r}"
                )
            if region is not None and mount.region is not None and mount.region != region:
                raise ValueError(
                    f"region {region!r} does not match the mount's region {mount.region!r}"
                )
    return CreateDiskRequest(name=name, mounts=parsed)


def _same_user(a: AuthorizedUser, b: AuthorizedUser) -> bool:
    if a.identifier and b.identifier:
        return a.identifier == b.identifier
    return (a.type, a.nickname, a.token_suffix, a.principal) == (
        b.type,
        b.nickname,
        b.token_suffix,
        b.principal,
    )


def with_created_users(disk: Disk, created: CreateDiskResult) -> Disk:
    """``disk`` with the users of the create answer (and their one-time tokens) merged in."""
    users = list(disk.authorized_users)
    for new in created.authorized_users:
        for i, old in enumerate(users):
            if _same_user(old, new):
                update = {k: v for k, v in new.__dict__.items() if v is not None}
                users[i] = old.model_copy(update=update)
                break
        else:
            users.append(new)
    return disk.model_copy(update={"authorized_users": users})


# ---------------------------------------------------------------------------
# Containers (a facade over sandboxes: see archil._async.resources.containers)
# ---------------------------------------------------------------------------

CONTAINERS_PREFIX = ".archil/containers"
CONTAINER_NAME_PREFIX = "cntr-"
_IDLE = "exec sleep 2147483647"


def container_keys(container_id: str) -> tuple[str, str]:
    """The object keys of a container's record and of its command's exit code, on its disk."""
    validate_container_id(container_id)
    return (
        f"{CONTAINERS_PREFIX}/{container_id}.json",
        f"{CONTAINERS_PREFIX}/{container_id}.exit",
    )


def container_script(init: str | None, command: str | None, container_id: str) -> str:
    """The container's process: the initialization script, then the command, then its exit code
    written to the disk (so ``get`` knows it ended even with nobody attached)."""
    exit_path = f"{SANDBOX_DISK_PATH}/{container_keys(container_id)[1]}"
    parts: list[str] = []
    if init and init.strip():
        parts.append(init.rstrip("\n"))
        parts.append(
            'archil_rc=$?; if [ "$archil_rc" -ne 0 ]; then '
            'echo "archil: the initialization script failed with exit code $archil_rc" >&2; '
            'exit "$archil_rc"; fi'
        )
    parts.append(command if command and command.strip() else _IDLE)
    body = "\n".join(parts)
    quoted = shlex.quote(exit_path)
    return (
        f"( {body}\n)\narchil_rc=$?\n"
        f"mkdir -p {shlex.quote(posixpath.dirname(exit_path))} && "
        f'printf "%s" "$archil_rc" > {quoted}.tmp && mv -f {quoted}.tmp {quoted}\n'
        'exit "$archil_rc"\n'
    )


def _port_mappings(endpoints: Sequence[SandboxEndpoint]) -> list[PortMapping]:
    out: list[PortMapping] = []
    for endpoint in endpoints:
        local = ":" in endpoint.hostname
        host_port = int(endpoint.hostname.rsplit(":", 1)[1]) if local else None
        scheme = "http" if local else "https"
        out.append(
            PortMapping(
                container_port=endpoint.port,
                host_port=host_port,
                url=f"{scheme}://{endpoint.hostname}",
            )
        )
    return out


def container_from(
    data: SandboxData,
    record: Mapping[str, Any] | None,
    exit_code: int | None,
    ports: Sequence[SandboxEndpoint] = (),
) -> Container:
    """A :class:`Container` from its sandbox, its record on the disk and its exit code, if any."""
    status: ContainerStatus
    if data.status == "pending":
        status = "pending"
    elif data.status == "failed":
        status = "failed"
    elif exit_code is not None:
        status = "exited"
    elif data.status in ("running", "stopping"):
        status = "running"
    elif data.status in ("paused", "pausing"):
        status = "paused"
    else:
        status = "stopped"
    rec = record or {}
    mounts = [m.model_dump(exclude_none=True) for m in data.mounts]
    main = next((m for m in mounts if m.get("path") == SANDBOX_DISK_PATH), None)
    metadata = rec.get("metadata")
    return Container(
        container_id=data.sandbox_id,
        status=status,
        exit_code=exit_code,
        failure_reason=data.exit_reason if status == "failed" else None,
        process_id=rec.get("process_id"),
        archil_mount=main,
        additional_mounts=[m for m in mounts if m is not main],
        vcpu_count=data.vcpu_count,
        mem_size_mib=data.mem_size_mib,
        kernel_variant=rec.get("kernel_variant") or data.kernel_variant or "base",
        command=rec.get("command"),
        ports=_port_mappings([*data.endpoints, *ports]),
        metadata=dict(metadata) if isinstance(metadata, dict) else {},
        created_at=data.created_at,
        started_at=data.running_at,
        finished_at=data.finished_at,
        sandbox=data,
    )


def parse_exit_code(data: bytes) -> int | None:
    """The exit code a container's command left on its disk (``None`` if unreadable)."""
    try:
        return int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None


# ---------------------------------------------------------------------------
# Object API (S3-compatible)
# ---------------------------------------------------------------------------


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


def check_count(value: int, field: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer of at least ``minimum`` (and at most ``maximum``), else a ``ValueError`` naming ``field``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise ValueError(f"{field} must be an integer {bound}, got {value!r}")
    return value


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
