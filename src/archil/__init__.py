"""archil: the disk-centric Python SDK for the Archil control plane.

Apps live on disks::

    import archil

    app = archil.App(name="hello", disk_id="disk_abc123", disk_env="production")

    @app.function()
    def say_hello():
        print("Hello from Archil!")

    say_hello.remote()

Names are imported lazily, so ``import archil`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # clients
    "Archil": "._client",
    "AsyncArchil": "._async.client",
    "aio": ".aio",
    # declarative layer
    "App": ".decl.app",
    "Function": ".decl.app",
    "FunctionCall": ".decl.functioncall",
    "Cls": ".decl.cls",
    "enter": ".decl.cls",
    "method": ".decl.cls",
    "Retries": "._callproto",
    "Secret": "._secrets",
    "is_local": "._constants",
    "Job": ".decl.app",
    "Image": ".decl.image",
    "Volume": ".decl.volume",
    # models
    "ArchilMount": "._models",
    "AdditionalMount": "._models",
    "Mount": "._models",
    "Disk": "._models",
    "Container": "._models",
    "AuthorizedUser": "._models",
    "ApiToken": "._models",
    "CreatedApiToken": "._models",
    "DirectoryListing": "._models",
    "DirectoryEntry": "._models",
    "ExecMount": "._models",
    "ExecResult": "._models",
    "LogEntry": "._models",
    "ObjectInfo": "._models",
    "PortMapping": "._models",
    "ExecTiming": "._models",
    "ObjectListing": "._models",
    "DeleteError": "._models",
    "DeleteResult": "._models",
    "MultipartUpload": "._models",
    "MultipartUploadListing": "._models",
    "PartListing": "._models",
    "UploadedPart": "._models",
    "MountResponse": "._models",
    # sandboxes
    "Sandbox": "._sync.resources.sandboxes",
    "SandboxData": "._models",
    "SandboxMount": "._models",
    "SandboxPort": "._models",
    "SandboxImage": "._models",
    "CreateSandboxRequest": "._models",
    "ProcessOutput": "._process",
    "ProcessResult": "._process",
    # configuration
    "ClientConfig": "._config",
    # errors
    "ArchilError": "._errors",
    "APIError": "._errors",
    "APIStatusError": "._errors",
    "APIConnectionError": "._errors",
    "APITimeoutError": "._errors",
    "AuthenticationError": "._errors",
    "BadRequestError": "._errors",
    "ConfigurationError": "._errors",
    "InsecureTransportWarning": "._errors",
    "ConflictError": "._errors",
    "ContainerError": "._errors",
    "FunctionCallCancelledError": "._errors",
    "FunctionTimeoutError": "._errors",
    "ImageBuildError": "._errors",
    "InternalServerError": "._errors",
    "NotFoundError": "._errors",
    "PermissionDeniedError": "._errors",
    "RateLimitError": "._errors",
    "RemoteError": "._errors",
    "UnprocessableEntityError": "._errors",
    "SandboxError": "._errors",
    "ProcessError": "._errors",
}

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AdditionalMount",
    "ApiToken",
    "App",
    "Archil",
    "ArchilError",
    "ArchilMount",
    "AsyncArchil",
    "AuthenticationError",
    "AuthorizedUser",
    "BadRequestError",
    "ClientConfig",
    "Cls",
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
    "Function",
    "FunctionCall",
    "FunctionCallCancelledError",
    "FunctionTimeoutError",
    "Image",
    "ImageBuildError",
    "InsecureTransportWarning",
    "InternalServerError",
    "Job",
    "LogEntry",
    "Mount",
    "MountResponse",
    "MultipartUpload",
    "MultipartUploadListing",
    "NotFoundError",
    "ObjectInfo",
    "ObjectListing",
    "PartListing",
    "PermissionDeniedError",
    "PortMapping",
    "ProcessError",
    "ProcessOutput",
    "ProcessResult",
    "RateLimitError",
    "RemoteError",
    "Retries",
    "Sandbox",
    "SandboxData",
    "SandboxError",
    "SandboxImage",
    "SandboxMount",
    "SandboxPort",
    "Secret",
    "UnprocessableEntityError",
    "UploadedPart",
    "Volume",
    "__version__",
    "aio",
    "enter",
    "is_local",
    "method",
]

if TYPE_CHECKING:
    from . import aio
    from ._async.client import AsyncArchil
    from ._callproto import Retries
    from ._client import Archil
    from ._config import ClientConfig
    from ._constants import is_local
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
        InsecureTransportWarning,
        InternalServerError,
        NotFoundError,
        PermissionDeniedError,
        ProcessError,
        RateLimitError,
        RemoteError,
        SandboxError,
        UnprocessableEntityError,
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
    from ._process import ProcessOutput, ProcessResult
    from ._secrets import Secret
    from ._sync.resources.sandboxes import Sandbox
    from .decl.app import App, Function, Job
    from .decl.cls import Cls, enter, method
    from .decl.functioncall import FunctionCall
    from .decl.image import Image
    from .decl.volume import Volume


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'archil' has no attribute {name!r}")
    mod = importlib.import_module(module, __name__)
    value = mod if name == "aio" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
