"""Disks: the storage mount that backs one, its users, the disk record and directory listings."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_serializer, model_validator

from .base import _Request, _Response, _reveal

MountProvider = Literal["s3", "gcs", "r2", "s3-compatible", "azure-blob"]


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
