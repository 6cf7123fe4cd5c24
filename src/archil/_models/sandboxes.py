"""Sandboxes (the live API's compute half, snake_case on the wire): sizes, states, mounts, records.

Also the sandbox limits that containers share: kernel variants, vCPU counts
and memory sizes.
"""

from __future__ import annotations

import posixpath
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from archil._constants import SANDBOX_DISK_PATH

from .base import _SnakeRequest, _SnakeResponse
from .validators import _CONTAINER_ID_RE, _ENV_KEY_RE, validate_disk_id, validate_relative_path

KernelVariant = Literal["base", "extended"]

VCPU_MIN, VCPU_MAX = 1, 64
MEM_MIN_MIB, MEM_MAX_MIB = 128, 262_144

SandboxState = Literal[
    "pending",
    "running",
    "pausing",
    "paused",
    "stopping",
    "stopped",
    "exited",
    "failed",
    "deleting",
    "deleted",
]
SANDBOX_INACTIVE_STATES: frozenset[str] = frozenset(
    {"paused", "stopped", "exited", "failed", "deleting", "deleted"}
)
"""States in which a sandbox runs nothing."""

SANDBOX_DELETABLE_STATES: frozenset[str] = frozenset({"stopped", "exited", "failed"})
"""States from which ``DELETE /api/sandboxes/{sid}`` is accepted."""

MAX_TTL_SECONDS = 86_400
DEFAULT_SANDBOX_MEM_MIB = 2048
DEFAULT_IDLE_TTL_SECONDS = 1800

_SANDBOX_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_RESERVED_GUEST_DIRS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
)


def validate_sandbox_id(value: str, field: str = "sandbox_id") -> str:
    """Return ``value`` if it can name a sandbox in a URL path, else raise ``ValueError``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    if not _CONTAINER_ID_RE.match(value):
        raise ValueError(f"{field} {value!r} is not a valid sandbox id (a UUID)")
    return value


def validate_guest_path(value: str, field: str = "path") -> str:
    """An absolute directory inside a sandbox for a disk mount: no ``..``, not a system directory."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty absolute path")
    if not value.startswith("/"):
        raise ValueError(f"{field} {value!r} must be an absolute path (start with '/')")
    if "\x00" in value or "\n" in value:
        raise ValueError(f"{field} {value!r} contains a forbidden character")
    if any(p in ("..", ".") for p in value.split("/")):
        raise ValueError(f"{field} {value!r} must not contain '.' or '..' segments")
    norm = posixpath.normpath(value)
    if norm == "/":
        raise ValueError(f"{field} must not be '/'")
    for root in _RESERVED_GUEST_DIRS:
        if norm == root or norm.startswith(root + "/"):
            raise ValueError(f"{field} {value!r} is reserved ({root} is a guest system directory)")
    return norm


def _check_sandbox_name(v: str | None) -> str | None:
    if v is not None and not _SANDBOX_NAME_RE.match(v):
        raise ValueError(
            f"name {v!r} is not a valid sandbox name "
            "(1-63 letters, digits, '-', '_' or '.', starting with a letter or digit)"
        )
    return v


def _check_port(port: int, field: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{field}: port {port!r} is out of range (1-65535)")
    return port


class SandboxMount(_SnakeRequest):
    """A disk mounted inside a sandbox on every boot.

    ``path`` is the absolute guest directory; omit it only for a sole mount,
    which lands at ``/mnt/archil``. ``subdirectory`` exposes a part of the disk
    instead of its root. A plain mount is exclusive (``queue_ms`` bounds the
    wait for it); ``read_only`` and ``conditional`` mounts allow other writers.
    """

    disk_id: str
    path: str | None = None
    subdirectory: str | None = None
    read_only: bool = False
    conditional: bool = False
    queue_ms: int | None = Field(default=None, ge=0, le=3_600_000)

    @field_validator("disk_id")
    @classmethod
    def _disk(cls, v: str) -> str:
        return validate_disk_id(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return None if v is None else validate_guest_path(v)

    @field_validator("subdirectory")
    @classmethod
    def _sub(cls, v: str | None) -> str | None:
        return None if v is None else validate_relative_path(v, "subdirectory")

    @model_validator(mode="after")
    def _queue(self) -> SandboxMount:
        if self.queue_ms is not None and (self.read_only or self.conditional):
            raise ValueError("queue_ms is not allowed with read_only or conditional")
        return self


def check_sandbox_mounts(mounts: list[SandboxMount]) -> list[SandboxMount]:
    """Mounts with their paths resolved: a sole mount defaults to ``/mnt/archil``; paths and disks unique."""
    if len(mounts) > 1:
        for i, m in enumerate(mounts):
            if m.path is None:
                raise ValueError(f"mounts[{i}].path is required when more than one disk is mounted")
    seen_paths: dict[str, int] = {}
    seen_disks: dict[str, int] = {}
    out: list[SandboxMount] = []
    for i, m in enumerate(mounts):
        path = m.path or SANDBOX_DISK_PATH
        if path in seen_paths:
            raise ValueError(f"mounts[{i}].path: mounts[{seen_paths[path]}] is already at {path}")
        for other, j in seen_paths.items():
            if path.startswith(other + "/") or other.startswith(path + "/"):
                raise ValueError(f"mounts[{i}].path: {path} overlaps mounts[{j}] at {other}")
        if m.disk_id in seen_disks:
            raise ValueError(
                f"mounts[{i}].disk_id: disk {m.disk_id!r} is already mounted "
                f"(mounts[{seen_disks[m.disk_id]}]); a disk can be mounted once per sandbox"
            )
        seen_paths[path] = i
        seen_disks[m.disk_id] = i
        out.append(m if m.path == path else m.model_copy(update={"path": path}))
    return out


class CreateSandboxRequest(_SnakeRequest):
    """``POST /api/sandboxes``.

    ``kernel_variant`` is an archil extension (the live API has no kernel
    variants): a control plane that does not offer it rejects the field.
    """

    name: str | None = None
    vcpu_count: int = Field(default=1, ge=VCPU_MIN, le=VCPU_MAX)
    mem_size_mib: int = Field(default=DEFAULT_SANDBOX_MEM_MIB, ge=MEM_MIN_MIB, le=MEM_MAX_MIB)
    base_image: str | None = Field(default=None, min_length=1, max_length=512)
    image_id: str | None = Field(default=None, min_length=1, max_length=128)
    ports: list[int] | None = Field(default=None, max_length=32)
    enable_service_ingress: bool = False
    env: dict[str, str] | None = None
    network: dict[str, Any] | None = None
    mounts: list[SandboxMount] | None = Field(default=None, max_length=16)
    max_ttl_seconds: int = Field(default=MAX_TTL_SECONDS, ge=1, le=MAX_TTL_SECONDS)
    idle_ttl_seconds: int = Field(default=DEFAULT_IDLE_TTL_SECONDS, ge=0, le=MAX_TTL_SECONDS)
    max_concurrent_execs: int | None = Field(default=None, ge=1, le=1024)
    kernel_variant: KernelVariant | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _check_sandbox_name(v)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            for p in v:
                _check_port(p, "ports")
            if len(set(v)) != len(v):
                raise ValueError("ports must not repeat")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            for k, val in v.items():
                if not _ENV_KEY_RE.match(k):
                    raise ValueError(f"env name {k!r} is not a valid environment variable name")
                if "\x00" in val:
                    raise ValueError(f"env {k}: the value contains a NUL byte")
        return v

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, v: list[SandboxMount] | None) -> list[SandboxMount] | None:
        return None if v is None else check_sandbox_mounts(v)

    @model_validator(mode="after")
    def _image(self) -> CreateSandboxRequest:
        if self.base_image is not None and self.image_id is not None:
            raise ValueError("base_image and image_id are mutually exclusive: give one")
        return self

    def __repr_args__(self) -> Any:
        # Environment values may hold secrets: show the names only.
        for name, value in super().__repr_args__():
            if name == "env" and isinstance(value, dict):
                yield name, sorted(value)
            else:
                yield name, value


class StartSandboxRequest(_SnakeRequest):
    """``POST /api/sandboxes/{sid}/start``: optionally replace the disk mounts."""

    mounts: list[SandboxMount] | None = Field(default=None, max_length=16)

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, v: list[SandboxMount] | None) -> list[SandboxMount] | None:
        return None if v is None else check_sandbox_mounts(v)


class ForkSandboxRequest(_SnakeRequest):
    """``POST /api/sandboxes/{sid}/fork``: a new sandbox from a checkpoint of this one."""

    name: str | None = None
    checkpoint: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _check_sandbox_name(v)


class SandboxTimeoutRequest(_SnakeRequest):
    """``POST /api/sandboxes/{sid}/timeout``: move the deadline and/or change the idle TTL."""

    timeout: int | None = Field(default=None, ge=1, le=MAX_TTL_SECONDS)
    idle_ttl_seconds: int | None = Field(default=None, ge=0, le=MAX_TTL_SECONDS)

    @model_validator(mode="after")
    def _some(self) -> SandboxTimeoutRequest:
        if self.timeout is None and self.idle_ttl_seconds is None:
            raise ValueError("give timeout, idle_ttl_seconds or both")
        return self


class SandboxEndpoint(_SnakeResponse):
    """A port of a sandbox and the hostname it is reachable at."""

    port: int
    hostname: str


class SandboxPort(SandboxEndpoint):
    """An explicitly exposed port of a sandbox."""


class SandboxData(_SnakeResponse):
    """A sandbox record, as the control plane reports it."""

    sandbox_id: str
    name: str
    status: SandboxState
    vcpu_count: int
    mem_size_mib: int
    max_ttl_seconds: int
    idle_ttl_seconds: int = 0
    max_concurrent_execs: int
    base_image: str = ""
    created_at: datetime
    last_active_at: datetime
    image_digest: str | None = None
    platform: Literal["amd64", "arm64"] | None = None
    endpoints: list[SandboxEndpoint] = Field(default_factory=list)
    enable_service_ingress: bool = False
    mounts: list[SandboxMount] = Field(default_factory=list)
    running_at: datetime | None = None
    finished_at: datetime | None = None
    exit_reason: str | None = None
    checkpoint: str | None = None
    kernel_variant: str | None = None

    @field_validator("mounts", mode="before")
    @classmethod
    def _known_mount_fields(cls, v: Any) -> Any:
        # SandboxMount is a request model (unknown fields rejected); a newer
        # server's extra mount fields must not make the whole record unreadable.
        if isinstance(v, list):
            known = SandboxMount.model_fields
            return [
                {k: val for k, val in m.items() if k in known} if isinstance(m, dict) else m
                for m in v
            ]
        return v

    @property
    def id(self) -> str:
        """The sandbox's id (alias of ``sandbox_id``)."""
        return self.sandbox_id


class SandboxConnection(_SnakeResponse):
    """A short-lived WebSocket URL for the process protocol of one sandbox."""

    url: str
    expires_at: datetime

    def __repr_args__(self) -> Any:
        # The URL's query carries a signed token for the sandbox: keep it out of reprs.
        for name, value in super().__repr_args__():
            if name == "url" and isinstance(value, str) and "?" in value:
                yield name, value.split("?", 1)[0] + "?<token>"
            else:
                yield name, value
