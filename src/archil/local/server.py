"""The local control plane's HTTP API: a Starlette ASGI application.

:func:`create_app` builds the application for a data directory. It serves the
Archil control-plane contract (``docs/control-plane.openapi.yaml``): the real
endpoints (disks, disk users, exec, API tokens) in the cloud's exact shape, and
the extensions the SDK needs (containers, images, directory listing, the
``/s3`` object API, ``Idempotency-Key``), all behind the same API key.

Middleware, outermost first: request id, chaos, then inside Starlette the
error handlers, authentication and idempotency.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import _models as models
from .._models import (
    AuthorizedUser,
    CreateContainerRequest,
    CreatedApiToken,
    CreateDiskRequest,
    CreateImageRequest,
    CreateTokenRequest,
    DiskUserRequest,
    ExecDiskRequest,
    ExecMount,
    ExecRequest,
)
from .chaos import Chaos, ChaosMiddleware, ConnectionDropper
from .containers import ContainerManager, disk_mount, notice
from .disks import DirectoryNotFound, DiskStore, NotADirectory, PathEscapeError
from .images import ImageBuilder
from .logs import LogStore
from .objects import S3Error, object_routes, s3_error_response
from .runtime import ContainerStartError, MountSpec, Runtime
from .state import IdempotentResult, State, utcnow

__all__ = [
    "ApiError",
    "ControlPlane",
    "LocalApp",
    "ServerSettings",
    "create_app",
    "describe_validation_error",
    "load_api_key",
]

logger = logging.getLogger("archil.local")

_ID_RE_CHARS = set(string.ascii_letters + string.digits + "_.-")
_MAX_JSON_BODY = 16 * 1024 * 1024
_MAX_WAIT = 60.0
_CONTAINER_STATES = ("pending", "building", "starting", "running", "exited", "failed", "stopped")
_MODEL_NAMES = {name for name in dir(models) if name[:1].isupper()}
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


# ---------------------------------------------------------------------------
# Settings, keys, errors
# ---------------------------------------------------------------------------


@dataclass
class ServerSettings:
    """How a local control plane behaves.

    Attributes:
        data_dir: where the state, disks, logs and images live.
        auto_create_disks: create a disk that does not exist on first use (embedded mode).
        exec_timeout: seconds before an exec request answers 504.
        stop_grace: seconds between SIGTERM and SIGKILL when stopping a container.
        chaos_rate: fraction of ``/api`` and ``/s3`` requests made to fail.
        chaos_seed: seed of the chaos random number generator.
        min_part_size: the least size in bytes of every multipart part but the last (S3: 5 MiB).
    """

    data_dir: Path
    auto_create_disks: bool = False
    exec_timeout: float = 30.0
    stop_grace: float = 10.0
    chaos_rate: float = 0.0
    chaos_seed: int | None = None
    min_part_size: int = 5 * 1024 * 1024


def load_api_key(data_dir: Path) -> str:
    """The data directory's API key, generated (``key-`` and 32 hex digits, mode 0600) on first use."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / "api_key"
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = "key-" + secrets.token_hex(16)
    tmp = data_dir / f".api_key.{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return key


class ApiError(Exception):
    """An error answered with the JSON error envelope."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if part in _MODEL_NAMES or part in _TYPE_TAGS or "[" in part or "(" in part:
            continue
        if out and not part.replace("_", "").isalnum():
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """``"<field path>: <message>"`` for each error of a pydantic ``ValidationError``."""
    parts: list[str] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = _format_loc(tuple(err.get("loc", ())))
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        msg = str(err.get("msg", "invalid value"))
        for lead in ("Value error, ", "Assertion failed, "):
            if msg.startswith(lead):
                msg = msg[len(lead) :]
        text = f"{loc or 'body'}: {msg}"
        if text not in seen:
            seen.add(text)
            parts.append(text)
    return "; ".join(parts) or "invalid request"


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def ok(data: Any, status: int = 200, **top: Any) -> Response:
    """The success envelope; ``top`` adds keys beside ``data`` (``nextCursor``)."""
    payload: dict[str, Any] = {"success": True, "data": data}
    payload.update({k: v for k, v in top.items() if v is not None})
    return _json(payload, status)


def error_response(status: int, message: str, code: str) -> Response:
    """The error envelope."""
    return _json({"success": False, "error": message, "code": code}, status)


def _shape(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = model.model_validate(data).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return out


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= 128 and value[0].isalnum() and set(value) <= _ID_RE_CHARS


# ---------------------------------------------------------------------------
# The control plane object
# ---------------------------------------------------------------------------


class ControlPlane:
    """Everything the routes share: settings, state, disks, containers, chaos."""

    def __init__(self, settings: ServerSettings, *, api_key: str) -> None:
        self.settings = settings
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.api_key = api_key
        self.state = State(data / "state.db")
        self.secret = self.state.set_meta_default("secret", secrets.token_hex(32))
        self.organization = self.state.set_meta_default(
            "organization", "org-local-" + secrets.token_hex(4)
        )
        self.disks = DiskStore(data / "disks")
        self.logs = LogStore(data / "logs")
        self.images = ImageBuilder(data / "images")
        # Containers reach disks only through their mounts: the rest of the data
        # directory (other disks, logs, state, the API key) is masked inside them.
        hidden = [data / "disks", data / "logs", data / "state.db", data / "api_key"]
        self.runtime = Runtime(data / "runtime", self.logs, hidden_paths=hidden)
        self.containers = ContainerManager(
            state=self.state,
            logs=self.logs,
            images=self.images,
            runtime=self.runtime,
            stop_grace=settings.stop_grace,
        )
        self.chaos = Chaos(settings.chaos_rate, settings.chaos_seed)
        self.dropper: ConnectionDropper | None = None
        self._idem_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._token_touched: dict[str, float] = {}
        self._purge_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- lifespan ------------------------------------------------------------------

    async def startup(self) -> None:
        """Bind to the running loop, recover from a previous run, start housekeeping."""
        self._loop = asyncio.get_running_loop()
        self.containers.bind_loop(self._loop)
        self.containers.recover()
        self.state.purge_idempotent()
        self._purge_task = asyncio.create_task(self._housekeeping())

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(3600)
            with contextlib.suppress(Exception):
                self.state.purge_idempotent()
                await anyio.to_thread.run_sync(self.disks.multipart.sweep)

    def begin_shutdown(self) -> None:
        """Release long-polls and log followers (call on the loop before stopping the server)."""
        self.containers.begin_shutdown()

    def begin_shutdown_threadsafe(self) -> None:
        """:meth:`begin_shutdown` from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.begin_shutdown)

    async def shutdown(self) -> None:
        """Stop every container and close the database."""
        if self._closed:
            return
        self._closed = True
        if self._purge_task is not None:
            self._purge_task.cancel()
        try:
            await self.containers.shutdown()
        finally:
            with contextlib.suppress(Exception):
                self.logs.close()
            self.state.close()

    # -- auth --------------------------------------------------------------------

    def authenticate(self, header: str | None) -> bool:
        """Whether an ``Authorization`` value is the server's key or a live API token."""
        if not header:
            return False
        value = header.strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if hmac.compare_digest(value.encode("utf-8"), self.api_key.encode("utf-8")):
            return True
        row = self.state.token_by_digest(_digest(value))
        if row is None:
            return False
        now = time.monotonic()
        if now - self._token_touched.get(row["id"], -1e9) > 30.0:
            self._token_touched[row["id"]] = now
            self.state.touch_token(row["id"], utcnow())
        return True

    # -- idempotency locks -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def idempotency_lock(self, key: str) -> AsyncIterator[None]:
        """Serialize requests that carry the same ``Idempotency-Key``."""
        lock, users = self._idem_locks.get(key, (asyncio.Lock(), 0))
        self._idem_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._idem_locks[key]
            if users <= 1:
                del self._idem_locks[key]
            else:
                self._idem_locks[key] = (lock, users - 1)

    # -- disks -------------------------------------------------------------------

    def config_digest(self, req: CreateDiskRequest) -> str:
        """A keyed digest of a disk's configuration (secrets included, never stored in clear)."""
        wire = req.to_wire()
        wire.pop("name", None)
        canonical = json.dumps(wire.get("mounts") or [], sort_keys=True, separators=(",", ":"))
        return hmac.new(self.secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()

    def disk(self, disk_id: str, field: str | None = None) -> dict[str, Any]:
        """A disk row; created on first use in auto-create mode, else 404 naming ``field``."""
        row = self.state.get_disk(disk_id)
        if row is not None:
            return row
        if self.settings.auto_create_disks and _valid_id(disk_id):
            return self._auto_create(disk_id)
        where = f"{field}: " if field else ""
        raise ApiError(404, f"{where}disk {disk_id!r} not found", "disk_not_found")

    def object_disk(self, disk_id: str) -> dict[str, Any]:
        """A disk row for the object API (``NoSuchBucket`` when missing)."""
        try:
            return self.disk(disk_id)
        except ApiError:
            raise S3Error(
                404, "NoSuchBucket", "The specified disk does not exist.", disk_id
            ) from None

    def _auto_create(self, disk_id: str) -> dict[str, Any]:
        name = disk_id
        valid_name = len(name) <= 100 and all(c.isalnum() or c in "_-" for c in name)
        if not valid_name or self.state.get_disk_by_name(name) is not None:
            name = "local-" + hashlib.sha256(disk_id.encode()).hexdigest()[:12]
        empty = CreateDiskRequest(name="x")
        try:
            row = self.state.insert_disk(
                disk_id=disk_id,
                name=name,
                provider="archil",
                mounts=[],
                config_digest=self.config_digest(empty),
                auto_created=True,
            )
        except sqlite3.IntegrityError:
            existing = self.state.get_disk(disk_id)
            if existing is None:
                raise
            return existing
        self.disks.create(disk_id)
        notice(f"created local disk {disk_id!r} on first use")
        logger.info("created local disk %r on first use", disk_id)
        return row

    def user_wire(self, row: dict[str, Any]) -> dict[str, Any]:
        """An authorized user as the API shows it (never its token)."""
        data = {
            "type": row["type"],
            "nickname": row["nickname"],
            "tokenSuffix": row["token_suffix"],
            "identifier": row["identifier"],
            "createdAt": row["created_at"],
        }
        if row["type"] == "awssts":
            data["principal"] = row["principal"]
        return _shape(AuthorizedUser, data)

    def disk_wire(self, row: dict[str, Any], data_size: int | None) -> dict[str, Any]:
        """A ``DiskResponse``."""
        data: dict[str, Any] = {
            "id": row["id"],
            "name": row["name"],
            "organization": self.organization,
            "status": row["status"],
            "provider": row["provider"],
            "region": "local",
            "createdAt": row["created_at"],
            "lastAccessed": row["last_accessed"],
            "dataSize": data_size,
            "mounts": json.loads(row["mounts"]),
            "authorizedUsers": [self.user_wire(u) for u in self.state.list_users(row["id"])],
        }
        return _shape(models.Disk, data)


# ---------------------------------------------------------------------------
# Request helpers
# ---------------------------------------------------------------------------


def _plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > _MAX_JSON_BODY:
        raise ApiError(413, "body: the request body is too large", "body_too_large")
    if not raw.strip():
        raise ApiError(400, "body: a JSON object is required", "invalid_body")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(
            400, f"body: invalid JSON ({exc.__class__.__name__})", "invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "body: must be a JSON object", "invalid_body")
    return data


def _validate(model: type[Any], data: dict[str, Any], prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, describe_validation_error(exc, prefix), "validation_error") from None


def _int_query(
    request: Request, name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, f"{name}: must be an integer, got {raw[:40]!r}", "validation_error"
        ) from None
    if value < minimum:
        raise ApiError(400, f"{name}: must be at least {minimum}", "validation_error")
    if maximum is not None:
        value = min(value, maximum)
    return value


def _float_query(request: Request, name: str, default: float, *, maximum: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name}: must be a number of seconds", "validation_error") from None
    if value != value or value < 0:
        raise ApiError(400, f"{name}: must be a non-negative number of seconds", "validation_error")
    return min(value, maximum)


def _bool_query(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    low = raw.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name}: must be true or false", "validation_error")


def _encode_cursor(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(request: Request, kind: str) -> int:
    raw = request.query_params.get("cursor")
    if not raw:
        return 0
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        got_kind, _, seq = text.partition(":")
        if got_kind != kind:
            raise ValueError(kind)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            400, "cursor: not a cursor from a previous page", "validation_error"
        ) from None


def _page(
    rows: list[dict[str, Any]], limit: int, kind: str
) -> tuple[list[dict[str, Any]], str | None]:
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, _encode_cursor(kind, int(rows[-1]["seq"]))
    return rows, None


# ---------------------------------------------------------------------------
# Disks
# ---------------------------------------------------------------------------


async def list_disks(request: Request) -> Response:
    """``GET /api/disks``."""
    plane = _plane(request)
    limit = _int_query(request, "limit", 50, minimum=1, maximum=100)
    after = _decode_cursor(request, "disk")
    name = request.query_params.get("name") or None
    rows, cursor = _page(
        plane.state.list_disks(after=after, limit=limit + 1, name=name), limit, "disk"
    )
    sizes = await anyio.to_thread.run_sync(lambda: [plane.disks.data_size(r["id"]) for r in rows])
    return ok([plane.disk_wire(r, s) for r, s in zip(rows, sizes, strict=True)], nextCursor=cursor)


def _new_token_user(plane: ControlPlane, disk_id: str, nickname: str) -> dict[str, Any]:
    token = "dtk-" + secrets.token_hex(20)
    digest = _digest(token)
    row = plane.state.insert_user(
        disk_id=disk_id,
        type="token",
        identifier="tok-" + digest[:16],
        nickname=nickname,
        principal=None,
        token_suffix=token[-4:],
        token_digest=digest,
    )
    user = plane.user_wire(row)
    user["token"] = token
    return user


async def create_disk(request: Request) -> Response:
    """``POST /api/disks``: idempotent by name."""
    plane = _plane(request)
    req: CreateDiskRequest = _validate(CreateDiskRequest, await _body(request))
    digest = plane.config_digest(req)
    existing = plane.state.get_disk_by_name(req.name)
    if existing is not None:
        if existing["config_digest"] != digest:
            raise ApiError(
                409,
                f"name: a disk named {req.name!r} already exists with a different configuration",
                "disk_exists",
            )
        users = [plane.user_wire(u) for u in plane.state.list_users(existing["id"])]
        return ok({"diskId": existing["id"], "authorizedUsers": users}, 200)
    mounts: list[dict[str, Any]] = []
    provider = "archil"
    for m in req.mounts or []:
        provider = m.provider
        config = {
            "bucketName": m.bucket or m.container_name,
            "bucketEndpoint": m.bucket_endpoint or m.endpoint,
            "bucketPrefix": m.bucket_prefix,
        }
        mounts.append(
            {
                "type": m.provider,
                "name": m.bucket or m.container_name,
                "accessMode": "rw",
                "config": {k: v for k, v in config.items() if v is not None},
                "authorizationType": "accessKeys" if (m.access_key_id or m.client_id) else "iam",
            }
        )
    disk_id = "dsk-" + secrets.token_hex(8)
    try:
        plane.state.insert_disk(
            disk_id=disk_id,
            name=req.name,
            provider=provider,
            mounts=mounts,
            config_digest=digest,
        )
    except sqlite3.IntegrityError:
        raise ApiError(
            409, f"name: a disk named {req.name!r} already exists", "disk_exists"
        ) from None
    await anyio.to_thread.run_sync(plane.disks.create, disk_id)
    user = _new_token_user(plane, disk_id, "default")
    return ok({"diskId": disk_id, "authorizedUsers": [user]}, 201)


async def get_disk(request: Request) -> Response:
    """``GET /api/disks/{id}``."""
    plane = _plane(request)
    row = plane.disk(request.path_params["disk_id"])
    size = await anyio.to_thread.run_sync(plane.disks.data_size, row["id"])
    return ok(plane.disk_wire(row, size))


async def delete_disk(request: Request) -> Response:
    """``DELETE /api/disks/{id}``: the disk's files go with it."""
    plane = _plane(request)
    disk_id = request.path_params["disk_id"]
    if plane.state.get_disk(disk_id) is None:
        raise ApiError(404, f"disk {disk_id!r} not found", "disk_not_found")
    busy = plane.state.containers_on_disk(disk_id, active_only=True)
    if busy:
        raise ApiError(
            409,
            f"disk {disk_id!r} is in use by {len(busy)} running container(s); stop them first",
            "disk_in_use",
        )
    plane.state.delete_disk(disk_id)
    await anyio.to_thread.run_sync(plane.disks.delete, disk_id)
    return ok({"message": f"Disk {disk_id} deleted"})


async def add_disk_user(request: Request) -> Response:
    """``POST /api/disks/{id}/users``."""
    plane = _plane(request)
    disk = plane.disk(request.path_params["disk_id"])
    req: DiskUserRequest = _validate(DiskUserRequest, await _body(request))
    if req.type == "awssts":
        assert req.principal is not None
        try:
            row = plane.state.insert_user(
                disk_id=disk["id"],
                type="awssts",
                identifier=req.principal,
                nickname=req.nickname,
                principal=req.principal,
                token_suffix=None,
                token_digest=None,
            )
        except sqlite3.IntegrityError:
            raise ApiError(
                409, "principal: this principal is already authorized", "user_exists"
            ) from None
        return ok(plane.user_wire(row), 201)
    assert req.nickname is not None
    if req.principal is None:
        return ok(_new_token_user(plane, disk["id"], req.nickname), 201)
    digest = _digest(req.principal)
    try:
        row = plane.state.insert_user(
            disk_id=disk["id"],
            type="token",
            identifier="tok-" + digest[:16],
            nickname=req.nickname,
            principal=None,
            token_suffix=req.token_suffix,
            token_digest=digest,
        )
    except sqlite3.IntegrityError:
        raise ApiError(409, "principal: this token is already authorized", "user_exists") from None
    return ok(plane.user_wire(row), 201)


async def remove_disk_user(request: Request) -> Response:
    """``DELETE /api/disks/{id}/users/{userType}?identifier=``."""
    plane = _plane(request)
    disk = plane.disk(request.path_params["disk_id"])
    user_type = request.path_params["user_type"]
    if user_type not in ("token", "awssts"):
        raise ApiError(400, "userType: must be 'token' or 'awssts'", "validation_error")
    identifier = request.query_params.get("identifier") or request.query_params.get("principal")
    if not identifier:
        raise ApiError(
            400, "identifier: required (as returned when the user was added)", "validation_error"
        )
    if not plane.state.delete_user(disk["id"], user_type, identifier):
        raise ApiError(
            404, f"identifier: no {user_type} user {identifier!r} on this disk", "user_not_found"
        )
    return ok({"message": "User removed"})


async def read_directory(request: Request) -> Response:
    """``GET /api/disks/{id}/directory?inode=N`` (inode 1 is the root)."""
    plane = _plane(request)
    disk = plane.disk(request.path_params["disk_id"])
    inode = _int_query(request, "inode", 1, minimum=1)
    try:
        listing = await anyio.to_thread.run_sync(plane.disks.list_directory, disk["id"], inode)
    except DirectoryNotFound as exc:
        raise ApiError(404, f"inode: {exc}", "inode_not_found") from None
    except NotADirectory as exc:
        raise ApiError(400, f"inode: {exc}", "not_a_directory") from None
    return ok(_shape(models.DirectoryListing, listing))


async def grep_disk(request: Request) -> Response:
    """``POST /api/disks/{id}/grep`` is a cloud feature the local control plane lacks."""
    _plane(request).disk(request.path_params["disk_id"])
    raise ApiError(501, "grep is not implemented by the local control plane", "not_implemented")


# ---------------------------------------------------------------------------
# Exec
# ---------------------------------------------------------------------------


def _exec_result(outcome: Any, started: float) -> dict[str, Any]:
    total = int((time.monotonic() - started) * 1000)
    return {
        "exitCode": outcome.exit_code,
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
        "timing": {
            "totalMs": max(total, outcome.queue_ms + outcome.execute_ms),
            "queueMs": outcome.queue_ms,
            "executeMs": outcome.execute_ms,
        },
    }


async def _run_exec(plane: ControlPlane, command: str, mounts: list[MountSpec]) -> Response:
    started = time.monotonic()
    timeout = plane.settings.exec_timeout
    try:
        outcome = await plane.containers.exec(command, mounts, timeout)
    except ContainerStartError as exc:
        raise ApiError(
            500, f"the command could not be started: {exc}", "exec_start_failed"
        ) from None
    except TimeoutError:
        raise ApiError(
            504, f"the command did not finish within {timeout:g} s", "exec_timeout"
        ) from None
    return ok(_exec_result(outcome, started))


async def exec_disk(request: Request) -> Response:
    """``POST /api/disks/{id}/exec``."""
    plane = _plane(request)
    disk = plane.disk(request.path_params["disk_id"])
    req: ExecDiskRequest = _validate(ExecDiskRequest, await _body(request))
    mount = disk_mount(plane.disks.path(disk["id"]), "/mnt/archil", False)
    return await _run_exec(plane, req.command, [mount])


async def exec_multi(request: Request) -> Response:
    """``POST /api/exec``: several disks under ``/mnt/archil/<relpath>``."""
    plane = _plane(request)
    req: ExecRequest = _validate(ExecRequest, await _body(request))
    mounts: list[MountSpec] = []
    for rel, target in req.disks.items():
        where = f"disks[{rel!r}]"
        spec = target if isinstance(target, ExecMount) else ExecMount(disk=target)
        disk = plane.disk(spec.disk, where)
        host = plane.disks.path(disk["id"])
        if spec.subdirectory:
            try:
                host = plane.disks.resolve_subdirectory(disk["id"], spec.subdirectory)
            except (PathEscapeError, DirectoryNotFound) as exc:
                raise ApiError(400, f"{where}.subdirectory: {exc}", "validation_error") from None
        mounts.append(disk_mount(host, f"/mnt/archil/{rel}", spec.read_only))
    return await _run_exec(plane, req.command, mounts)


# ---------------------------------------------------------------------------
# API tokens
# ---------------------------------------------------------------------------


def _token_wire(row: dict[str, Any]) -> dict[str, Any]:
    return _shape(
        models.ApiToken,
        {
            "id": row["id"],
            "name": row["name"],
            "description": row["description"],
            "tokenSuffix": row["token_suffix"],
            "createdAt": row["created_at"],
            "lastUsedAt": row["last_used_at"],
        },
    )


async def list_tokens(request: Request) -> Response:
    """``GET /api/tokens``."""
    plane = _plane(request)
    limit = _int_query(request, "limit", 50, minimum=1, maximum=100)
    after = _decode_cursor(request, "token")
    rows, cursor = _page(plane.state.list_tokens(after=after, limit=limit + 1), limit, "token")
    return ok({"tokens": [_token_wire(r) for r in rows]}, nextCursor=cursor)


async def create_token(request: Request) -> Response:
    """``POST /api/tokens``: the full key is in the answer, and only there."""
    plane = _plane(request)
    req: CreateTokenRequest = _validate(CreateTokenRequest, await _body(request))
    token = "key-" + secrets.token_hex(16)
    row = plane.state.insert_token(
        token_id="tok-" + secrets.token_hex(8),
        name=req.name,
        description=req.description,
        token_digest=_digest(token),
        token_suffix=token[-4:],
    )
    data = _shape(CreatedApiToken, _token_wire(row))
    data["token"] = token
    return ok(data, 201)


async def delete_token(request: Request) -> Response:
    """``DELETE /api/tokens/{id}``."""
    plane = _plane(request)
    token_id = request.path_params["token_id"]
    if not plane.state.delete_token(token_id):
        raise ApiError(404, f"token {token_id!r} not found", "token_not_found")
    return ok({"message": "Token deleted"})


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


async def _image_wire(plane: ControlPlane, image_id: str) -> dict[str, Any] | None:
    row = plane.state.get_image(image_id)
    if row is None:
        return None
    status, reason = plane.images.status(image_id)
    if status is None:
        await anyio.to_thread.run_sync(plane.images.ensure, row["dockerfile"])
        status, reason = plane.images.status(image_id)
    status = status or row["status"]
    if status != row["status"] or reason != row["failure_reason"]:
        plane.state.set_image_status(image_id, status, reason)
    data: dict[str, Any] = {"imageId": image_id, "status": status}
    if status == "failed":
        data["failureReason"] = reason or "the build failed"
    return _shape(models.Image, data)


async def create_image(request: Request) -> Response:
    """``POST /api/images``: idempotent by Dockerfile content."""
    plane = _plane(request)
    req: CreateImageRequest = _validate(CreateImageRequest, await _body(request))
    image_id = plane.images.image_id_for(req.dockerfile)
    created = plane.state.insert_image(image_id, req.dockerfile)
    await anyio.to_thread.run_sync(plane.images.ensure, req.dockerfile)
    data = await _image_wire(plane, image_id)
    return ok(data, 201 if created else 200)


async def get_image(request: Request) -> Response:
    """``GET /api/images/{id}``."""
    plane = _plane(request)
    image_id = request.path_params["image_id"]
    data = await _image_wire(plane, image_id)
    if data is None:
        raise ApiError(404, f"image {image_id!r} not found", "image_not_found")
    return ok(data)


# ---------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------


def _container_wire(row: dict[str, Any]) -> dict[str, Any]:
    return _shape(models.Container, ContainerManager.to_wire(row))


def _container_or_404(plane: ControlPlane, cid: str) -> dict[str, Any]:
    row = plane.containers.get(cid)
    if row is None:
        raise ApiError(404, f"container {cid!r} not found", "container_not_found")
    return row


async def create_container(request: Request) -> Response:
    """``POST /api/containers``."""
    plane = _plane(request)
    req: CreateContainerRequest = _validate(CreateContainerRequest, await _body(request))
    main = plane.disk(req.archil_mount.disk_id, "archilMount.diskId")
    mounts = [disk_mount(plane.disks.path(main["id"]), "/mnt/archil", False)]
    for i, m in enumerate(req.additional_mounts):
        extra = plane.disk(m.disk_id, f"additionalMounts[{i}].diskId")
        mounts.append(disk_mount(plane.disks.path(extra["id"]), m.path, m.read_only))
    dockerfile: str | None = None
    if req.image_id is not None:
        image = plane.state.get_image(req.image_id)
        if image is None:
            raise ApiError(404, f"imageId: image {req.image_id!r} not found", "image_not_found")
        dockerfile = image["dockerfile"]
    row = await plane.containers.create(req, mounts=mounts, dockerfile=dockerfile)
    return ok(_container_wire(row), 201)


async def list_containers(request: Request) -> Response:
    """``GET /api/containers?limit=&cursor=&status=&diskId=``."""
    plane = _plane(request)
    limit = _int_query(request, "limit", 50, minimum=1, maximum=100)
    after = _decode_cursor(request, "container")
    status = request.query_params.get("status") or None
    if status is not None and status not in _CONTAINER_STATES:
        raise ApiError(
            400, f"status: must be one of {', '.join(_CONTAINER_STATES)}", "validation_error"
        )
    disk_id = request.query_params.get("diskId") or None
    rows = plane.state.list_containers(after=after, limit=limit + 1, status=status, disk_id=disk_id)
    rows, cursor = _page(rows, limit, "container")
    return ok([_container_wire(r) for r in rows], nextCursor=cursor)


async def get_container(request: Request) -> Response:
    """``GET /api/containers/{id}?wait=SECONDS``: long-polls until terminal or the wait runs out."""
    plane = _plane(request)
    cid = request.path_params["container_id"]
    wait = _float_query(request, "wait", 0.0, maximum=_MAX_WAIT)
    _container_or_404(plane, cid)
    row = await plane.containers.wait(cid, wait)
    if row is None:
        raise ApiError(404, f"container {cid!r} not found", "container_not_found")
    return ok(_container_wire(row))


async def stop_container(request: Request) -> Response:
    """``POST /api/containers/{id}/stop``."""
    plane = _plane(request)
    cid = request.path_params["container_id"]
    _container_or_404(plane, cid)
    row = await plane.containers.stop(cid)
    if row is None:
        raise ApiError(404, f"container {cid!r} not found", "container_not_found")
    return ok(_container_wire(row))


async def delete_container(request: Request) -> Response:
    """``DELETE /api/containers/{id}``: stops it first, removes its record and logs."""
    plane = _plane(request)
    cid = request.path_params["container_id"]
    _container_or_404(plane, cid)
    row = await plane.containers.delete(cid)
    if row is None:
        raise ApiError(404, f"container {cid!r} not found", "container_not_found")
    return ok(_container_wire(row))


async def container_logs(request: Request) -> Response:
    """``GET /api/containers/{id}/logs?offset=N&follow=``: NDJSON ``{stream, offset, data}``."""
    plane = _plane(request)
    cid = request.path_params["container_id"]
    offset = _int_query(request, "offset", 0, minimum=0)
    follow = _bool_query(request, "follow", False)
    _container_or_404(plane, cid)
    return StreamingResponse(
        plane.containers.stream_logs(cid, offset, follow),
        media_type="application/x-ndjson",
        headers={"cache-control": "no-store"},
    )


# ---------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """``GET /healthz``: readiness; says whether the ``Authorization`` header is valid."""
    plane = _plane(request)
    data: dict[str, Any] = {"status": "ok"}
    header = request.headers.get("authorization")
    if header is not None:
        authed = plane.authenticate(header)
        data["authenticated"] = authed
        if authed:
            data["dataDir"] = str(plane.settings.data_dir)
            data["pid"] = os.getpid()
    return ok(data)


# ---------------------------------------------------------------------------
# Middleware
# ---------------------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return str(v.decode("latin-1"))
    return None


class RequestIdMiddleware:
    """Gives every request an id, returned in the ``x-request-id`` response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = "req_" + secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _send_response(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    await response(scope, receive, send)


class AuthMiddleware:
    """Rejects ``/api`` and ``/s3`` requests without a valid ``Authorization`` header (401)."""

    def __init__(self, app: ASGIApp, plane: ControlPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"authorization")
        if self.plane.authenticate(header):
            await self.app(scope, receive, send)
            return
        missing = not header
        message = (
            "missing API key: send it in the Authorization header" if missing else "invalid API key"
        )
        if scope["path"] == "/s3" or scope["path"].startswith("/s3/"):
            response = s3_error_response(
                401, "AccessDenied" if missing else "InvalidAccessKeyId", message
            )
        else:
            response = error_response(401, message, "unauthorized")
        await _send_response(response, scope, receive, send)


class IdempotencyMiddleware:
    """Answers a repeated ``Idempotency-Key`` on a POST with the first answer, never a second effect."""

    def __init__(self, app: ASGIApp, plane: ControlPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        key = _header(scope, b"idempotency-key")
        if key is None:
            await self.app(scope, receive, send)
            return
        if not 1 <= len(key) <= 255 or not all(32 < ord(c) < 127 for c in key):
            await _send_response(
                error_response(
                    400,
                    "Idempotency-Key: must be 1-255 printable ASCII characters without spaces",
                    "validation_error",
                ),
                scope,
                receive,
                send,
            )
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > _MAX_JSON_BODY:
                await _send_response(
                    error_response(413, "body: the request body is too large", "body_too_large"),
                    scope,
                    receive,
                    send,
                )
                return
            chunks.append(body)
            more = bool(message.get("more_body", False))
        raw = b"".join(chunks)
        fingerprint = hashlib.sha256(
            b"\0".join(
                [
                    scope["method"].encode(),
                    scope["path"].encode(),
                    scope.get("query_string", b""),
                    raw,
                ]
            )
        ).hexdigest()
        state = self.plane.state
        async with self.plane.idempotency_lock(key):
            stored = state.get_idempotent(key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    response = error_response(
                        409,
                        "Idempotency-Key: this key was already used for a different request",
                        "idempotency_key_reused",
                    )
                    await _send_response(response, scope, receive, send)
                    return
                headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers]
                headers.append((b"idempotent-replayed", b"true"))
                await send(
                    {"type": "http.response.start", "status": stored.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": stored.body, "more_body": False})
                return

            sent_body = False

            async def replay() -> Message:
                nonlocal sent_body
                if not sent_body:
                    sent_body = True
                    return {"type": "http.request", "body": raw, "more_body": False}
                return await receive()

            status = 500
            resp_headers: list[tuple[bytes, bytes]] = []
            body_parts: list[bytes] = []

            async def capture(message: Message) -> None:
                nonlocal status, resp_headers
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    resp_headers = list(message.get("headers", []))
                elif message["type"] == "http.response.body":
                    body_parts.append(message.get("body", b""))

            await self.app(scope, replay, capture)
            body = b"".join(body_parts)
            if status < 500 and status != 429:
                keep = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in resp_headers
                    if k.lower() not in (b"x-request-id", b"date", b"server")
                ]
                state.put_idempotent(key, IdempotentResult(fingerprint, status, keep, body))
        await send({"type": "http.response.start", "status": status, "headers": resp_headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


# ---------------------------------------------------------------------------
# Error handlers
# ---------------------------------------------------------------------------


def _is_s3(request: Request) -> bool:
    path = request.url.path
    return path == "/s3" or path.startswith("/s3/")


def _request_id(request: Request) -> str | None:
    rid = request.scope.get("state", {}).get("request_id")
    return None if rid is None else str(rid)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if _is_s3(request):
        code = {404: "NoSuchBucket", 400: "InvalidArgument"}.get(exc.status, "InternalError")
        return s3_error_response(exc.status, code, exc.message, request_id=_request_id(request))
    return error_response(exc.status, exc.message, exc.code)


async def _on_s3_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, S3Error)
    return s3_error_response(exc.status, exc.code, exc.message, exc.resource, _request_id(request))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return error_response(400, describe_validation_error(exc), "validation_error")


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _is_s3(request):
        code = "MethodNotAllowed" if exc.status_code == 405 else "InvalidRequest"
        return s3_error_response(
            exc.status_code, code, str(exc.detail), request_id=_request_id(request)
        )
    if exc.status_code == 404:
        return error_response(
            404, f"no such endpoint: {request.method} {request.url.path}", "not_found"
        )
    if exc.status_code == 405:
        return error_response(
            405, f"method {request.method} not allowed here", "method_not_allowed"
        )
    return error_response(exc.status_code, str(exc.detail), "http_error")


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    rid = _request_id(request)
    logger.error(
        "internal error on %s %s (request %s): %s",
        request.method,
        request.url.path,
        rid,
        exc.__class__.__name__,
        exc_info=exc,
    )
    if _is_s3(request):
        return s3_error_response(500, "InternalError", "internal error", request_id=rid)
    return error_response(500, f"internal error (request {rid})", "internal_error")


# ---------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------


def _routes() -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/disks", list_disks, methods=["GET"]),
        Route("/api/disks", create_disk, methods=["POST"]),
        Route("/api/disks/{disk_id}", get_disk, methods=["GET"]),
        Route("/api/disks/{disk_id}", delete_disk, methods=["DELETE"]),
        Route("/api/disks/{disk_id}/users", add_disk_user, methods=["POST"]),
        Route("/api/disks/{disk_id}/users/{user_type}", remove_disk_user, methods=["DELETE"]),
        Route("/api/disks/{disk_id}/exec", exec_disk, methods=["POST"]),
        Route("/api/disks/{disk_id}/grep", grep_disk, methods=["POST"]),
        Route("/api/disks/{disk_id}/directory", read_directory, methods=["GET"]),
        Route("/api/exec", exec_multi, methods=["POST"]),
        Route("/api/tokens", list_tokens, methods=["GET"]),
        Route("/api/tokens", create_token, methods=["POST"]),
        Route("/api/tokens/{token_id}", delete_token, methods=["DELETE"]),
        Route("/api/images", create_image, methods=["POST"]),
        Route("/api/images/{image_id}", get_image, methods=["GET"]),
        Route("/api/containers", list_containers, methods=["GET"]),
        Route("/api/containers", create_container, methods=["POST"]),
        Route("/api/containers/{container_id}", get_container, methods=["GET"]),
        Route("/api/containers/{container_id}", delete_container, methods=["DELETE"]),
        Route("/api/containers/{container_id}/stop", stop_container, methods=["POST"]),
        Route("/api/containers/{container_id}/logs", container_logs, methods=["GET"]),
        *object_routes(),
    ]


class LocalApp:
    """The ASGI application of a local control plane; ``plane`` holds its state."""

    def __init__(self, plane: ControlPlane, app: ASGIApp) -> None:
        self.plane = plane
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def create_app(settings: ServerSettings, *, api_key: str | None = None) -> LocalApp:
    """Build the ASGI application for ``settings.data_dir`` (the API key is loaded or generated)."""
    key = api_key if api_key is not None else load_api_key(settings.data_dir)
    plane = ControlPlane(settings, api_key=key)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await plane.startup()
        try:
            yield
        finally:
            await plane.shutdown()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: _on_api_error,
        S3Error: _on_s3_error,
        ValidationError: _on_validation_error,
        HTTPException: _on_http_exception,
        Exception: _on_unexpected,
    }
    starlette = Starlette(
        routes=_routes(),
        middleware=[
            Middleware(AuthMiddleware, plane=plane),
            Middleware(IdempotencyMiddleware, plane=plane),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    starlette.state.plane = plane
    chaos = ChaosMiddleware(starlette, plane.chaos, dropper=lambda: plane.dropper)
    return LocalApp(plane, RequestIdMiddleware(chaos))
