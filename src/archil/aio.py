"""``archil.aio``: the async client.

``archil.aio.Archil`` is the async twin of ``archil.Archil``: the same
methods, each awaited::

    async with archil.aio.Archil() as client:
        disk = await client.disks.get("dsk-0123456789abcdef")
        disks = await client.disks.list()
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
    ImageBuildError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RemoteError,
)
from ._models import (
    AdditionalMount,
    ApiToken,
    ArchilMount,
    AuthorizedUser,
    Container,
    CreatedApiToken,
    DirectoryEntry,
    DirectoryListing,
    Disk,
    ExecMount,
    ExecResult,
    ExecTiming,
    LogEntry,
    Mount,
    MountResponse,
    ObjectInfo,
    ObjectListing,
    PortMapping,
)
from ._pagination import Page
from ._wire import RequestOptions

Archil = AsyncArchil
"""The async client (``archil.aio.Archil`` is :class:`AsyncArchil`)."""

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
    "AsyncTokens",
    "AuthenticationError",
    "AuthorizedUser",
    "BadRequestError",
    "ClientConfig",
    "ConfigurationError",
    "ConflictError",
    "Container",
    "ContainerError",
    "CreatedApiToken",
    "DirectoryEntry",
    "DirectoryListing",
    "Disk",
    "ExecMount",
    "ExecResult",
    "ExecTiming",
    "ImageBuildError",
    "InternalServerError",
    "LogEntry",
    "Mount",
    "MountResponse",
    "NotFoundError",
    "ObjectInfo",
    "ObjectListing",
    "Page",
    "PermissionDeniedError",
    "PortMapping",
    "RateLimitError",
    "RemoteError",
    "RequestOptions",
]
