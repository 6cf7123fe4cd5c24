"""Wire policy shared by the async and blocking clients: URLs, bodies, envelopes, errors.

Nothing here does I/O; the transports call these helpers on responses whose
body has already been read.
"""

from __future__ import annotations

import email.utils
import functools
import json
import math
import posixpath
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, get_args
from urllib.parse import quote

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
    Disk,
    Mount,
    MountProvider,
    ObjectInfo,
    ObjectListing,
    PortMapping,
    SandboxData,
    SandboxEndpoint,
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
