"""Containers: a sandbox with a disk at ``/mnt/archil`` running one command.

:meth:`CreateContainerRequest.to_sandbox_request` turns a container's
arguments into the sandbox it is; :class:`Container` reports it back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from archil._constants import SANDBOX_DISK_PATH

from .base import _Request, _Response
from .sandboxes import (
    MEM_MAX_MIB,
    MEM_MIN_MIB,
    VCPU_MAX,
    VCPU_MIN,
    CreateSandboxRequest,
    KernelVariant,
    SandboxData,
    SandboxMount,
)
from .validators import _ENV_KEY_RE, validate_disk_id, validate_mount_path

ContainerStatus = Literal["pending", "running", "paused", "exited", "failed", "stopped"]
TERMINAL_STATES: frozenset[str] = frozenset({"exited", "failed", "stopped"})


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
