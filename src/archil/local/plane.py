"""The services every request of the local control plane reaches.

:class:`ControlPlane` holds the settings, the API key, the SQLite state, the
disk store, the image store, the runtime and the sandbox manager, chaos
settings and the idempotency locks. One exists per served data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import string
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from .. import _models as models
from .._models import AuthorizedUser, CreateDiskRequest, SandboxMount
from .chaos import Chaos, ConnectionDropper
from .disks import DirectoryNotFound, DiskStore, PathEscapeError
from .errors import ApiError
from .images import ImageStore
from .layers import LayerStore
from .objects_xml import S3Error
from .routes.common import shape
from .runtime import Runtime
from .sandboxes import SandboxManager
from .spec import GUEST_DISK_PATH, MountSpec
from .state import State, utcnow

__all__ = [
    "ControlPlane",
    "ServerSettings",
    "digest",
    "load_api_key",
    "notice",
    "valid_id",
]

logger = logging.getLogger("archil.local")

_ID_RE_CHARS = set(string.ascii_letters + string.digits + "_.-")


@dataclass
class ServerSettings:
    """How a local control plane behaves.

    Attributes:
        data_dir: where the state, disks, logs and images live.
        auto_create_disks: create a disk that does not exist on first use (embedded mode).
        exec_timeout: seconds before an exec request answers 504.
        stop_grace: seconds between SIGTERM and SIGKILL when stopping a sandbox.
        chaos_rate: fraction of ``/api`` and ``/s3`` requests made to fail.
        chaos_seed: seed of the chaos random number generator.
        real_api_only: serve only what the live control plane has: every
            ``x-archil-extension`` route and field is off, and ``Idempotency-Key``
            is not honoured (the SDK must not depend on it).
        namespaces: force the runtime's Linux namespaces on or off (``None`` detects).
        min_part_size: the least size in bytes of every multipart part but the last (S3: 5 MiB).
        reap_idle: a sandbox whose idle TTL runs out is stopped (its processes end, its
            writes are kept as a checkpoint) instead of paused. A paused local sandbox keeps
            its processes, frozen; a live control plane's paused sandbox runs nothing.
    """

    data_dir: Path
    auto_create_disks: bool = False
    exec_timeout: float = 30.0
    stop_grace: float = 10.0
    chaos_rate: float = 0.0
    chaos_seed: int | None = None
    real_api_only: bool = False
    namespaces: bool | None = None
    min_part_size: int = 5 * 1024 * 1024
    reap_idle: bool = False


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


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def valid_id(value: str) -> bool:
    return 0 < len(value) <= 128 and value[0].isalnum() and set(value) <= _ID_RE_CHARS


class ControlPlane:
    """Everything the routes share: settings, state, disks, images, sandboxes, chaos."""

    def __init__(self, settings: ServerSettings, *, api_key: str) -> None:
        self.settings = settings
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.api_key = api_key
        self.extensions = not settings.real_api_only
        self.state = State(data / "state.db")
        self.secret = self.state.set_meta_default("secret", secrets.token_hex(32))
        self.organization = self.state.set_meta_default(
            "organization", "org-local-" + secrets.token_hex(4)
        )
        self.disks = DiskStore(data / "disks")
        self.images = ImageStore(data / "sandbox-images")
        self.layers = LayerStore(data / "layers")
        self.runtime = Runtime(
            data / "runtime", namespaces=settings.namespaces, stop_grace=settings.stop_grace
        )
        self.sandboxes = SandboxManager(
            state=self.state,
            runtime=self.runtime,
            layers=self.layers,
            images=self.images,
            process_root=data / "processes",
            resolve_mounts=self.resolve_mounts,
            stop_grace=settings.stop_grace,
            extensions=self.extensions,
            reap_idle=settings.reap_idle,
        )
        self.chaos = Chaos(settings.chaos_rate, settings.chaos_seed)
        self.dropper: ConnectionDropper | None = None
        self._idem_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._token_touched: dict[str, float] = {}
        self._disk_touched: dict[str, float] = {}
        self._purge_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- lifespan ------------------------------------------------------------------

    async def startup(self) -> None:
        """Bind to the running loop, recover from a previous run, start housekeeping."""
        self._loop = asyncio.get_running_loop()
        self.sandboxes.bind_loop(self._loop)
        self.sandboxes.recover()
        self.state.purge_idempotent()
        self._purge_task = asyncio.create_task(self._housekeeping())

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(3600)
            with contextlib.suppress(Exception):
                self.state.purge_idempotent()
                await anyio.to_thread.run_sync(self.disks.multipart.sweep)

    def begin_shutdown(self) -> None:
        """Release process connections (call on the loop before stopping the server)."""
        self.sandboxes.begin_shutdown()

    def begin_shutdown_threadsafe(self) -> None:
        """:meth:`begin_shutdown` from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.begin_shutdown)

    async def shutdown(self) -> None:
        """Stop every sandbox (their writes kept) and close the stores."""
        if self._closed:
            return
        self._closed = True
        if self._purge_task is not None:
            self._purge_task.cancel()
        try:
            await self.sandboxes.shutdown()
        finally:
            with contextlib.suppress(Exception):
                self.images.close(5.0)
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
        row = self.state.token_by_digest(digest(value))
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
        if self.settings.auto_create_disks and valid_id(disk_id):
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
        return shape(AuthorizedUser, data)

    def disk_wire(self, row: dict[str, Any], data_size: int | None) -> dict[str, Any]:
        """The live API's ``DiskResponse``."""
        data: dict[str, Any] = {
            "id": row["id"],
            "name": row["name"],
            "organization": self.organization,
            "status": row["status"],
            "provider": row["provider"],
            "region": "local",
            "createdAt": row["created_at"],
            "sandboxDisk": False,
            "lastAccessed": row["last_accessed"],
            "activeDataBytes": data_size,
            "totalDataBytes": data_size,
            "mounts": json.loads(row["mounts"]),
            "authorizedUsers": [self.user_wire(u) for u in self.state.list_users(row["id"])],
            "capabilities": ["checkpoints"] if not json.loads(row["mounts"]) else [],
        }
        return shape(models.Disk, data)

    def touch_disk(self, disk_id: str) -> None:
        """Record that the disk was used (at most every 30 s a disk)."""
        now = time.monotonic()
        if now - self._disk_touched.get(disk_id, -1e9) > 30.0:
            self._disk_touched[disk_id] = now
            self.state.touch_disk(disk_id)

    def resolve_mounts(self, mounts: list[SandboxMount]) -> list[MountSpec]:
        """Sandbox mounts as host directories (404/400 naming the mount that is wrong)."""
        out: list[MountSpec] = []
        for i, mount in enumerate(mounts):
            disk = self.disk(mount.disk_id, f"mounts[{i}].disk_id")
            host = self.disks.path(disk["id"])
            if mount.subdirectory:
                try:
                    host = self.disks.resolve_subdirectory(disk["id"], mount.subdirectory)
                except (PathEscapeError, DirectoryNotFound) as exc:
                    raise ApiError(
                        400, f"mounts[{i}].subdirectory: {exc}", "validation_error"
                    ) from None
            out.append(MountSpec(host, mount.path or GUEST_DISK_PATH, mount.read_only))
            self.touch_disk(disk["id"])
        return out


def notice(message: str) -> None:
    """A one-line notice for the person running the local control plane (stderr)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"archil: {message}\n")
        sys.stderr.flush()
