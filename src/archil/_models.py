"""Pydantic v2 wire models shared by the client and the local control plane.

Python attributes are snake_case; on the wire every field is camelCase (the
aliases). Request models reject unknown fields and validate ranges so bad input
fails before anything is sent; response models keep unknown fields (``extra``)
so a newer server never breaks an older client. Secrets are ``SecretStr``: they
never show in a ``repr`` and are only revealed when a request body is encoded.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from archil._constants import SANDBOX_DISK_PATH as SANDBOX_DISK_PATH

__all__ = [
    "TERMINAL_STATES",
    "AdditionalMount",
    "ApiToken",
    "ArchilMount",
    "AuthorizedUser",
    "Container",
    "ContainerStatus",
    "CreateContainerRequest",
    "CreateDiskRequest",
    "CreateDiskResult",
    "CreateTokenRequest",
    "CreatedApiToken",
    "DirectoryEntry",
    "DirectoryListing",
    "Disk",
    "DiskUserRequest",
    "ExecDiskRequest",
    "ExecMount",
    "ExecRequest",
    "ExecResult",
    "ExecTiming",
    "KernelVariant",
    "LogEntry",
    "Mount",
    "MountResponse",
    "ObjectInfo",
    "ObjectListing",
    "PortMapping",
    "validate_container_id",
    "validate_disk_id",
    "validate_mount_path",
    "validate_object_key",
    "validate_relative_path",
]

KernelVariant = Literal["base", "extended"]
ContainerStatus = Literal["pending", "running", "paused", "exited", "failed", "stopped"]
TERMINAL_STATES: frozenset[str] = frozenset({"exited", "failed", "stopped"})
MountProvider = Literal["s3", "gcs", "r2", "s3-compatible", "azure-blob"]

VCPU_MIN, VCPU_MAX = 1, 64
MEM_MIN_MIB, MEM_MAX_MIB = 128, 262_144

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORBIDDEN_MOUNT_ROOTS = ("/proc", "/sys", "/dev", SANDBOX_DISK_PATH)


# ---------------------------------------------------------------------------
# Validators usable on their own (the client checks arguments before sending)
# ---------------------------------------------------------------------------


def validate_disk_id(value: str, field: str = "disk_id") -> str:
    """Return ``value`` if it is a well-formed disk id, else raise ``ValueError`` naming ``field``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    if not _ID_RE.match(value):
        raise ValueError(
            f"{field} {value!r} is not a valid disk id "
            "(letters, digits, '-', '_' and '.', at most 128 characters, e.g. 'dsk-0123456789abcdef')"
        )
    return value


def validate_container_id(value: str, field: str = "container_id") -> str:
    """Return ``value`` if it is a well-formed container id, else raise ``ValueError``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    if not _CONTAINER_ID_RE.match(value):
        raise ValueError(
            f"{field} {value!r} is not a valid container id (e.g. 'cntr-0123456789abcdef')"
        )
    return value


def validate_mount_path(value: str, field: str = "path") -> str:
    """An absolute container path for an additional mount: no ``..``, not a system directory."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty absolute path")
    if not value.startswith("/"):
        raise ValueError(f"{field} {value!r} must be an absolute path (start with '/')")
    if "\x00" in value:
        raise ValueError(f"{field} {value!r} contains a NUL byte")
    parts = value.split("/")
    if any(p in ("..", ".") for p in parts):
        raise ValueError(f"{field} {value!r} must not contain '.' or '..' segments")
    norm = posixpath.normpath(value)
    if norm == "/":
        raise ValueError(f"{field} must not be '/'")
    for root in _FORBIDDEN_MOUNT_ROOTS:
        if norm == root or norm.startswith(root + "/"):
            raise ValueError(
                f"{field} {value!r} is reserved ({root} cannot be used as a mount path)"
            )
    return norm


def validate_relative_path(value: str, field: str = "path", *, allow_empty: bool = False) -> str:
    """A relative path with no ``.``/``..`` segments and no leading ``/`` (exec mounts, subdirectories)."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    if value == "":
        if allow_empty:
            return value
        raise ValueError(f"{field} must not be empty")
    if value.startswith("/"):
        raise ValueError(f"{field} {value!r} must be relative (no leading '/')")
    if "\x00" in value or "\\" in value:
        raise ValueError(f"{field} {value!r} contains a forbidden character")
    parts = [p for p in value.split("/") if p != ""]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"{field} {value!r} must not contain '.' or '..' segments")
    return "/".join(parts)


def as_list(value: Any, field: str) -> list[Any] | None:
    """``value`` (any iterable but a string or a mapping) as a list; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"{field} must be a list, got {type(value).__name__}")
    return list(value)


def as_dict(value: Any, field: str) -> dict[Any, Any] | None:
    """``value`` (a mapping) as a dict; ``None`` stays ``None``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{field} must be a mapping of names to values, got {type(value).__name__}"
        )
    return dict(value)


def validate_object_key(value: str, field: str = "key") -> str:
    """An object key inside a disk: relative, no ``.``/``..`` or empty segments, no control
    characters (NUL, newlines...), at most 1024 bytes."""
    if not isinstance(value, str) or value == "":
        raise ValueError(f"{field} must be a non-empty string")
    if len(value.encode("utf-8")) > 1024:
        raise ValueError(f"{field} is longer than 1024 bytes")
    if value.startswith("/"):
        raise ValueError(f"{field} {value!r} must not start with '/'")
    if "\\" in value:
        raise ValueError(f"{field} {value!r} contains a forbidden character")
    if any(c < " " or c == "\x7f" for c in value):
        # XML 1.0 (the object API's listings) cannot carry them, nor can a URL path safely.
        raise ValueError(f"{field} {value!r} contains a control character")
    if any(p in (".", "..") for p in value.split("/")):
        raise ValueError(f"{field} {value!r} must not contain '.' or '..' segments")
    if "//" in value:
        # A disk is a file system: 'a//b' names no file (the gateway refuses it too).
        raise ValueError(f"{field} {value!r} must not contain empty segments ('//')")
    return value


# ---------------------------------------------------------------------------
# Base classes
# ---------------------------------------------------------------------------


class _Request(BaseModel):
    """A request body: snake_case in Python, camelCase on the wire, unknown fields rejected.

    Errors name a field as the caller spells it (``disk_id``), not as the wire does.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        loc_by_alias=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON body to send, secrets revealed, unset optional fields omitted."""
        return self.model_dump(
            mode="json", by_alias=True, exclude_none=True, context={"reveal": True}
        )


class _Response(BaseModel):
    """A response body: unknown fields are kept, not fatal."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        hide_input_in_errors=True,
    )


def _reveal(value: SecretStr | None, info: Any) -> str | SecretStr | None:
    if value is None:
        return None
    ctx = getattr(info, "context", None) or {}
    if ctx.get("reveal"):
        return value.get_secret_value()
    return value


# ---------------------------------------------------------------------------
# Disks
# ---------------------------------------------------------------------------


class Mount(_Request):
    """A storage bucket backing a disk (the seed's ``archil.Mount``).

    ``provider`` is one of ``s3``, ``gcs``, ``r2``, ``s3-compatible`` and
    ``azure-blob``; it is sent as the mount's ``type``. ``bucket`` is sent as
    ``bucketName`` (``containerName`` for Azure). ``region`` is kept on the
    client for reference; the control plane infers it from the bucket.
    """

    provider: MountProvider = Field(
        validation_alias=AliasChoices("provider", "type"), serialization_alias="type"
    )
    bucket: str | None = Field(
        default=None,
        validation_alias=AliasChoices("bucket", "bucketName"),
        serialization_alias="bucketName",
    )
    region: str | None = Field(default=None, exclude=True)
    bucket_endpoint: str | None = None
    bucket_prefix: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    # Azure Blob
    container_name: str | None = None
    endpoint: str | None = None
    storage_account_name: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None

    @field_serializer("secret_access_key", "session_token", "client_secret")
    def _ser_secret(self, value: SecretStr | None, info: Any) -> str | SecretStr | None:
        return _reveal(value, info)

    @model_validator(mode="after")
    def _check_provider_fields(self) -> Mount:
        p = self.provider
        if p == "azure-blob":
            missing = [
                f
                for f in ("container_name", "tenant_id", "client_id", "client_secret")
                if getattr(self, f) is None
            ]
            if self.container_name is None and self.bucket is not None:
                object.__setattr__(self, "container_name", self.bucket)
                object.__setattr__(self, "bucket", None)
                missing.remove("container_name")
            if missing:
                raise ValueError(f"an azure-blob mount needs {', '.join(missing)}")
            return self
        if not self.bucket:
            raise ValueError(f"a {p} mount needs bucket (the bucket name)")
        need: list[str] = []
        if p in ("gcs", "r2", "s3-compatible"):
            need += ["access_key_id", "secret_access_key"]
        if p in ("r2", "s3-compatible"):
            need.append("bucket_endpoint")
        missing = [f for f in need if getattr(self, f) in (None, "")]
        if missing:
            raise ValueError(f"a {p} mount needs {', '.join(missing)}")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together")
        return self


class CreateDiskRequest(_Request):
    """``POST /api/disks``."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-zA-Z0-9_-]+$")
    mounts: list[Mount] | None = Field(default=None, max_length=1)


class DiskUserRequest(_Request):
    """``POST /api/disks/{id}/users``: a token user or an AWS STS principal."""

    type: Literal["token", "awssts"]
    nickname: str | None = Field(default=None, max_length=255)
    principal: str | None = Field(default=None, max_length=2048)
    token_suffix: str | None = Field(default=None, min_length=4, max_length=4)

    @model_validator(mode="after")
    def _check(self) -> DiskUserRequest:
        if self.type == "token" and not self.nickname:
            raise ValueError("nickname is required for a token user")
        if self.type == "awssts" and not self.principal:
            raise ValueError("principal (an IAM principal ARN) is required for an awssts user")
        if self.type == "token" and self.principal and not self.token_suffix:
            raise ValueError("token_suffix is required when principal is given")
        return self


class AuthorizedUser(_Response):
    """A user allowed to mount a disk. ``token`` is present only once, at creation."""

    type: str | None = None
    principal: str | None = None
    nickname: str | None = None
    token_suffix: str | None = None
    token: SecretStr | None = None
    identifier: str | None = None
    created_at: datetime | None = None


class MountResponse(_Response):
    """A disk's storage mount as the control plane reports it (secrets omitted)."""

    id: str | None = None
    type: str | None = None
    path: str | None = None
    name: str | None = None
    access_mode: str | None = None
    config: dict[str, Any] | None = None
    connection_status: str | None = None
    auth_error: str | None = None
    authorization_type: str | None = None


class DiskMetrics(_Response):
    """Usage metrics of a disk, formatted by the control plane."""

    data_transfer: str | None = None
    requests: str | None = None
    avg_response_time: str | None = None


class ConnectedClient(_Response):
    """A client that has the disk mounted."""

    id: str | None = None
    ip_address: str | None = None
    connected_at: datetime | None = None


class RootAttrs(_Response):
    """POSIX attributes of a disk's root directory."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None


class Disk(_Response):
    """A disk (the control plane's ``DiskResponse``)."""

    id: str
    name: str
    organization: str | None = None
    status: str
    provider: str | None = None
    region: str | None = None
    created_at: datetime | None = None
    sandbox_disk: bool = False
    fs_handler_status: str | None = None
    last_accessed: datetime | None = None
    active_data_bytes: int | None = None
    total_data_bytes: int | None = None
    monthly_usage: str | None = None
    mounts: list[MountResponse] = Field(default_factory=list)
    metrics: DiskMetrics | None = None
    connected_clients: list[ConnectedClient] = Field(default_factory=list)
    authorized_users: list[AuthorizedUser] = Field(default_factory=list)
    allowed_ips: list[str] | None = None
    capabilities: list[str] | None = None
    root_attrs: RootAttrs | None = None

    @property
    def disk_id(self) -> str:
        """The disk's id (alias of ``id``)."""
        return self.id


class CreateDiskResult(_Response):
    """The answer to ``POST /api/disks``: the new disk's id and its one-time token user."""

    disk_id: str
    authorized_users: list[AuthorizedUser] = Field(default_factory=list)


class DirectoryEntry(_Response):
    """One entry of a disk directory."""

    name: str
    inode_id: int
    type: Literal["file", "directory", "symlink", "other"]
    size: int = 0
    modified_at: datetime | None = None


class DirectoryListing(_Response):
    """``GET /api/disks/{id}/directory?inode=N``."""

    inode_id: int
    path: str
    entries: list[DirectoryEntry] = Field(default_factory=list)


# ---------------------------------------------------------------------------
# Exec
# ---------------------------------------------------------------------------


class ExecDiskRequest(_Request):
    """``POST /api/disks/{id}/exec``: a shell command run with the disk at ``/mnt/archil``."""

    command: str = Field(min_length=1)


class ExecMount(_Request):
    """A disk mounted at a relative path under ``/mnt/archil`` for ``POST /api/exec``."""

    disk: str
    subdirectory: str | None = None
    read_only: bool = False

    @field_validator("disk")
    @classmethod
    def _disk(cls, v: str) -> str:
        return validate_disk_id(v, "disk")

    @field_validator("subdirectory")
    @classmethod
    def _sub(cls, v: str | None) -> str | None:
        return None if v is None else validate_relative_path(v, "subdirectory")


class ExecRequest(_Request):
    """``POST /api/exec`` (``disks`` maps relative paths to disk ids or :class:`ExecMount`)."""

    disks: dict[str, Union[str, ExecMount]] = Field(min_length=1)  # noqa: UP007
    command: str = Field(min_length=1)

    @field_validator("disks")
    @classmethod
    def _disks(cls, v: dict[str, str | ExecMount]) -> dict[str, str | ExecMount]:
        out: dict[str, str | ExecMount] = {}
        for path, target in v.items():
            rel = validate_relative_path(path, "disks key")
            if rel in out:
                raise ValueError(f"disks: two disks are mounted at {rel!r}")
            if isinstance(target, str):
                validate_disk_id(target, f"disks[{path!r}]")
            out[rel] = target
        return out


class ExecTiming(_Response):
    """Server-measured timings of an exec request, in milliseconds."""

    total_ms: int
    queue_ms: int
    execute_ms: int


class ExecResult(_Response):
    """The result of an exec request."""

    exit_code: int
    stdout: str
    stderr: str
    timing: ExecTiming


# ---------------------------------------------------------------------------
# API tokens
# ---------------------------------------------------------------------------


class CreateTokenRequest(_Request):
    """``POST /api/tokens``."""

    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)


class ApiToken(_Response):
    """An API key's public record (never the key itself)."""

    id: str
    name: str | None = None
    description: str | None = None
    token_suffix: str | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None


class CreatedApiToken(ApiToken):
    """A newly created API key: ``token`` holds the full key, shown only this once."""

    token: SecretStr | None = None


# ---------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------


class ArchilMount(_Request):
    """The disk a container lives on, mounted at ``/mnt/archil`` (the seed's ``archil.ArchilMount``)."""

    disk_id: str
    env: str = Field(default="production", min_length=1, max_length=64)

    @field_validator("disk_id")
    @classmethod
    def _disk(cls, v: str) -> str:
        return validate_disk_id(v)


class AdditionalMount(_Request):
    """Another disk mounted at ``path`` inside the container, read-only when ``read_only``."""

    path: str
    disk_id: str
    env: str = Field(default="production", min_length=1, max_length=64)
    read_only: bool = False

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return validate_mount_path(v)

    @field_validator("disk_id")
    @classmethod
    def _disk(cls, v: str) -> str:
        return validate_disk_id(v)


class CreateContainerRequest(_Request):
    """The arguments of ``client.containers.create``, validated before anything is sent.

    A container is a sandbox with ``archil_mount``'s disk at ``/mnt/archil`` and one
    process running ``initialization_script`` then ``command`` (see
    :meth:`to_sandbox_request`).
    """

    archil_mount: ArchilMount
    additional_mounts: list[AdditionalMount] = Field(default_factory=list, max_length=16)
    vcpu_count: int = Field(default=1, ge=VCPU_MIN, le=VCPU_MAX)
    mem_size_mib: int = Field(default=512, ge=MEM_MIN_MIB, le=MEM_MAX_MIB)
    kernel_variant: KernelVariant = "base"
    image_id: str | None = Field(default=None, min_length=1, max_length=128)
    base_image: str | None = Field(default=None, min_length=1, max_length=512)
    initialization_script: str | None = None
    command: str | None = None
    env: dict[str, str] | None = None
    ports: list[int] = Field(default_factory=list, max_length=32)
    metadata: dict[str, str] | None = None
    timeout_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if isinstance(p, bool) or not 1 <= p <= 65535:
                raise ValueError(f"port {p!r} is out of range (1-65535)")
        if len(set(v)) != len(v):
            raise ValueError("ports must not repeat")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            for k in v:
                if not _ENV_KEY_RE.match(k):
                    raise ValueError(f"env name {k!r} is not a valid environment variable name")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            if len(v) > 64:
                raise ValueError("metadata has more than 64 keys")
            for k, val in v.items():
                if not k or len(k) > 128 or len(val) > 1024:
                    raise ValueError(
                        f"metadata key {k!r}: keys are 1-128 chars, values at most 1024"
                    )
        return v

    @model_validator(mode="after")
    def _unique_paths(self) -> CreateContainerRequest:
        seen: set[str] = set()
        for m in self.additional_mounts:
            if m.path in seen:
                raise ValueError(f"additional_mounts: two mounts at {m.path!r}")
            seen.add(m.path)
        if self.image_id is not None and self.base_image is not None:
            raise ValueError("image_id and base_image are mutually exclusive: give one")
        return self

    def to_sandbox_request(self, name: str) -> CreateSandboxRequest:
        """The sandbox this container is: its disk shared at ``/mnt/archil``, never idled out."""
        mounts = [
            SandboxMount(
                disk_id=self.archil_mount.disk_id, path=SANDBOX_DISK_PATH, conditional=True
            )
        ]
        for extra in self.additional_mounts:
            mounts.append(
                SandboxMount(
                    disk_id=extra.disk_id,
                    path=extra.path,
                    read_only=extra.read_only,
                    conditional=not extra.read_only,
                )
            )
        return CreateSandboxRequest(
            name=name,
            vcpu_count=self.vcpu_count,
            mem_size_mib=self.mem_size_mib,
            base_image=self.base_image,
            image_id=self.image_id,
            ports=list(self.ports) or None,
            mounts=mounts,
            idle_ttl_seconds=0,
            kernel_variant=None if self.kernel_variant == "base" else self.kernel_variant,
        )


class PortMapping(_Response):
    """A container port and where it is reachable."""

    container_port: int
    host_port: int | None = None
    url: str | None = None


class Container(_Response):
    """A container: a sandbox with a disk at ``/mnt/archil`` and one command.

    ``status`` is ``pending`` while the sandbox starts, ``running`` while the
    command runs, ``exited`` (with ``exit_code``) once it has ended, ``paused``,
    ``stopped`` when the sandbox was stopped first, and ``failed`` when the
    sandbox could not start (``failure_reason``). ``sandbox`` is the sandbox record.
    """

    container_id: str
    status: ContainerStatus
    exit_code: int | None = None
    failure_reason: str | None = None
    process_id: str | None = None
    archil_mount: dict[str, Any] | None = None
    additional_mounts: list[dict[str, Any]] = Field(default_factory=list)
    vcpu_count: int | None = None
    mem_size_mib: int | None = None
    kernel_variant: str | None = None
    command: str | None = None
    ports: list[PortMapping] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    sandbox: SandboxData | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the command has ended, or the sandbox stopped or failed."""
        return self.status in TERMINAL_STATES


class LogEntry(_Response):
    """A piece of a container's output: its stream, its byte offset in the whole output, its text."""

    stream: Literal["stdout", "stderr"]
    offset: int
    data: str


# ---------------------------------------------------------------------------
# Object API
# ---------------------------------------------------------------------------


class ObjectInfo(_Response):
    """An object's metadata (from HEAD or a listing)."""

    key: str
    size: int
    etag: str | None = None
    last_modified: datetime | None = None


class ObjectListing(_Response):
    """One page of ListObjectsV2."""

    objects: list[ObjectInfo] = Field(default_factory=list)
    common_prefixes: list[str] = Field(default_factory=list)
    is_truncated: bool = False
    next_continuation_token: str | None = None


class DeleteError(_Response):
    """A key that DeleteObjects could not delete, with S3's error code."""

    key: str
    code: str | None = None
    message: str | None = None


class DeleteResult(_Response):
    """What ``objects.delete_many`` did: the keys deleted (a missing key counts) and the failures."""

    deleted: list[str] = Field(default_factory=list)
    errors: list[DeleteError] = Field(default_factory=list)


class MultipartUpload(_Response):
    """A multipart upload in progress: its parts are invisible until it is completed."""

    upload_id: str
    key: str
    disk_id: str | None = None
    initiated: datetime | None = None


class UploadedPart(_Response):
    """One part of a multipart upload: pass the parts to ``multipart.complete``."""

    part_number: int = Field(ge=1, le=10_000)
    etag: str
    size: int | None = None
    last_modified: datetime | None = None


class PartListing(_Response):
    """One page of ListParts."""

    parts: list[UploadedPart] = Field(default_factory=list)
    is_truncated: bool = False
    next_part_number_marker: int | None = None


class MultipartUploadListing(_Response):
    """One page of ListMultipartUploads."""

    uploads: list[MultipartUpload] = Field(default_factory=list)
    common_prefixes: list[str] = Field(default_factory=list)
    is_truncated: bool = False
    next_key_marker: str | None = None
    next_upload_id_marker: str | None = None


# ---------------------------------------------------------------------------
# Sandboxes (the live API's compute half: snake_case on the wire)
# ---------------------------------------------------------------------------

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

SandboxImageStatus = Literal["building", "ready", "failed"]
SandboxImageFailure = Literal["invalid_source", "interrupted"]

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


class _SnakeRequest(BaseModel):
    """A sandbox-API request body: snake_case on the wire, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body to send, secrets revealed, unset optional fields omitted."""
        return self.model_dump(mode="json", exclude_none=True, context={"reveal": True})


class _SnakeResponse(BaseModel):
    """A sandbox-API response body: unknown fields are kept, not fatal."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)


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


class RegistryAuth(_SnakeRequest):
    """Credentials for a private registry; sent with a build and never stored."""

    username: str = Field(min_length=1, max_length=256)
    password: SecretStr

    @field_serializer("password")
    def _ser_password(self, value: SecretStr, info: Any) -> str | SecretStr | None:
        return _reveal(value, info)


class BuildImageRequest(_SnakeRequest):
    """``POST /api/images``: build a sandbox image from an OCI reference."""

    source: str = Field(min_length=1, max_length=512)
    registry_auth: RegistryAuth | None = None

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v != v.strip() or any(c.isspace() for c in v) or "\x00" in v:
            raise ValueError(f"source {v!r} is not an image reference (no spaces allowed)")
        return v


class SandboxImage(_SnakeResponse):
    """A sandbox image built from an OCI reference: ``status`` is building, ready or failed.

    ``failure_message`` is an archil extension: a sentence saying why a build failed.
    """

    image_id: str
    source: str
    private: bool = False
    status: SandboxImageStatus
    created_at: datetime
    updated_at: datetime
    digest: str | None = None
    canonical_source: str | None = None
    # The known reasons are SandboxImageFailure; a newer one must not make a failed image unreadable.
    failure_reason: SandboxImageFailure | str | None = None
    failure_message: str | None = None
