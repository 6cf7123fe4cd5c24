"""``archil.aio``: the async client.

``archil.aio.Archil`` is the async twin of ``archil.Archil``: the same
methods, each awaited::

    async with archil.aio.Archil() as client:
        disk = await client.disks.get("dsk-0123456789abcdef")
        disks = await client.disks.list()
        sandbox = await client.sandboxes.create(mounts=[{"disk_id": disk.id}])
        result = await sandbox.exec("ls /mnt/archil")
"""

from __future__ import annotations

from ._async.client import AsyncArchil
from ._async.pagers import AsyncCursorPager, AsyncPager
from ._async.resources import (
    AsyncContainers,
    AsyncDisks,
    AsyncImages,
    AsyncObjectPager,
    AsyncObjects,
    AsyncProcess,
    AsyncSandbox,
    AsyncSandboxes,
    AsyncTokens,
)
from ._config import ClientConfig
from ._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ArchilError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    ContainerError,
    FunctionCallCancelledError,
    FunctionTimeoutError,
    ImageBuildError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    ProcessError,
    RateLimitError,
    RemoteError,
    SandboxError,
)
from ._models import (
    AdditionalMount,
    ApiToken,
    ArchilMount,
    AuthorizedUser,
    Container,
    CreatedApiToken,
    CreateSandboxRequest,
    DeleteError,
    DeleteResult,
    DirectoryEntry,
    DirectoryListing,
    Disk,
    ExecMount,
    ExecResult,
    ExecTiming,
    LogEntry,
    Mount,
    MountResponse,
    MultipartUpload,
    MultipartUploadListing,
    ObjectInfo,
    ObjectListing,
    PartListing,
    PortMapping,
    SandboxData,
    SandboxImage,
    SandboxMount,
    SandboxPort,
    UploadedPart,
)
from ._pagination import Page
from ._process import ProcessOutput, ProcessResult
from ._wire import RequestOptions

Archil = AsyncArchil
"""The async client (``archil.aio.Archil`` is :class:`AsyncArchil`)."""
Sandbox = AsyncSandbox
"""The async sandbox handle (``archil.aio.Sandbox`` is :class:`AsyncSandbox`)."""

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AdditionalMount",
    "ApiToken",
    "Archil",
    "ArchilError",
    "ArchilMount",
    "AsyncArchil",
    "AsyncContainers",
    "AsyncCursorPager",
    "AsyncDisks",
    "AsyncImages",
    "AsyncObjectPager",
    "AsyncObjects",
    "AsyncPager",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncSandboxes",
    "AsyncTokens",
    "AuthenticationError",
    "AuthorizedUser",
    "BadRequestError",
    "ClientConfig",
    "ConfigurationError",
    "ConflictError",
    "Container",
    "ContainerError",
    "CreateSandboxRequest",
    "CreatedApiToken",
    "DeleteError",
    "DeleteResult",
    "DirectoryEntry",
    "DirectoryListing",
    "Disk",
    "ExecMount",
    "ExecResult",
    "ExecTiming",
    "FunctionCallCancelledError",
    "FunctionTimeoutError",
    "ImageBuildError",
    "InternalServerError",
    "LogEntry",
    "Mount",
    "MountResponse",
    "MultipartUpload",
    "MultipartUploadListing",
    "NotFoundError",
    "ObjectInfo",
    "ObjectListing",
    "Page",
    "PartListing",
    "PermissionDeniedError",
    "PortMapping",
    "ProcessError",
    "ProcessOutput",
    "ProcessResult",
    "RateLimitError",
    "RemoteError",
    "RequestOptions",
    "Sandbox",
    "SandboxData",
    "SandboxError",
    "SandboxImage",
    "SandboxMount",
    "SandboxPort",
    "UploadedPart",
]
