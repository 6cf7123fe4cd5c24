"""Pydantic v2 wire models shared by the client and the local control plane.

Python attributes are snake_case; on the wire every field is camelCase (the
aliases). Request models reject unknown fields and validate ranges so bad input
fails before anything is sent; response models keep unknown fields (``extra``)
so a newer server never breaks an older client. Secrets are ``SecretStr``: they
never show in a ``repr`` and are only revealed when a request body is encoded.

Every model, validator and constant is importable from here; they live by
concern in :mod:`.base` (the base classes), :mod:`.validators`, :mod:`.disks`,
:mod:`.exec`, :mod:`.tokens`, :mod:`.containers`, :mod:`.objects`,
:mod:`.sandboxes` and :mod:`.images`.
"""

from __future__ import annotations

from archil._constants import SANDBOX_DISK_PATH as SANDBOX_DISK_PATH

from .base import _Request as _Request
from .base import _Response as _Response
from .base import _reveal as _reveal
from .base import _SnakeRequest as _SnakeRequest
from .base import _SnakeResponse as _SnakeResponse
from .containers import (
    TERMINAL_STATES,
    AdditionalMount,
    ArchilMount,
    Container,
    ContainerStatus,
    CreateContainerRequest,
    LogEntry,
    PortMapping,
)
from .disks import (
    AuthorizedUser,
    ConnectedClient,
    CreateDiskRequest,
    CreateDiskResult,
    DirectoryEntry,
    DirectoryListing,
    Disk,
    DiskMetrics,
    DiskUserRequest,
    Mount,
    MountProvider,
    MountResponse,
    RootAttrs,
)
from .exec import ExecDiskRequest, ExecMount, ExecRequest, ExecResult, ExecTiming
from .images import (
    BuildImageRequest,
    RegistryAuth,
    SandboxImage,
    SandboxImageFailure,
    SandboxImageStatus,
)
from .objects import (
    DeleteError,
    DeleteResult,
    MultipartUpload,
    MultipartUploadListing,
    ObjectInfo,
    ObjectListing,
    PartListing,
    UploadedPart,
)
from .sandboxes import _RESERVED_GUEST_DIRS as _RESERVED_GUEST_DIRS
from .sandboxes import _SANDBOX_NAME_RE as _SANDBOX_NAME_RE
from .sandboxes import (
    DEFAULT_IDLE_TTL_SECONDS,
    DEFAULT_SANDBOX_MEM_MIB,
    MAX_TTL_SECONDS,
    MEM_MAX_MIB,
    MEM_MIN_MIB,
    SANDBOX_DELETABLE_STATES,
    SANDBOX_INACTIVE_STATES,
    VCPU_MAX,
    VCPU_MIN,
    CreateSandboxRequest,
    ForkSandboxRequest,
    KernelVariant,
    SandboxConnection,
    SandboxData,
    SandboxEndpoint,
    SandboxMount,
    SandboxPort,
    SandboxState,
    SandboxTimeoutRequest,
    StartSandboxRequest,
    check_sandbox_mounts,
    validate_guest_path,
    validate_sandbox_id,
)
from .sandboxes import _check_port as _check_port
from .sandboxes import _check_sandbox_name as _check_sandbox_name
from .tokens import ApiToken, CreatedApiToken, CreateTokenRequest
from .validators import _CONTAINER_ID_RE as _CONTAINER_ID_RE
from .validators import _ENV_KEY_RE as _ENV_KEY_RE
from .validators import _FORBIDDEN_MOUNT_ROOTS as _FORBIDDEN_MOUNT_ROOTS
from .validators import _ID_RE as _ID_RE
from .validators import (
    as_dict,
    as_list,
    validate_container_id,
    validate_disk_id,
    validate_mount_path,
    validate_object_key,
    validate_relative_path,
)

__all__ = [
    "DEFAULT_IDLE_TTL_SECONDS",
    "DEFAULT_SANDBOX_MEM_MIB",
    "MAX_TTL_SECONDS",
    "MEM_MAX_MIB",
    "MEM_MIN_MIB",
    "SANDBOX_DELETABLE_STATES",
    "SANDBOX_DISK_PATH",
    "SANDBOX_INACTIVE_STATES",
    "TERMINAL_STATES",
    "VCPU_MAX",
    "VCPU_MIN",
    "AdditionalMount",
    "ApiToken",
    "ArchilMount",
    "AuthorizedUser",
    "BuildImageRequest",
    "ConnectedClient",
    "Container",
    "ContainerStatus",
    "CreateContainerRequest",
    "CreateDiskRequest",
    "CreateDiskResult",
    "CreateSandboxRequest",
    "CreateTokenRequest",
    "CreatedApiToken",
    "DeleteError",
    "DeleteResult",
    "DirectoryEntry",
    "DirectoryListing",
    "Disk",
    "DiskMetrics",
    "DiskUserRequest",
    "ExecDiskRequest",
    "ExecMount",
    "ExecRequest",
    "ExecResult",
    "ExecTiming",
    "ForkSandboxRequest",
    "KernelVariant",
    "LogEntry",
    "Mount",
    "MountProvider",
    "MountResponse",
    "MultipartUpload",
    "MultipartUploadListing",
    "ObjectInfo",
    "ObjectListing",
    "PartListing",
    "PortMapping",
    "RegistryAuth",
    "RootAttrs",
    "SandboxConnection",
    "SandboxData",
    "SandboxEndpoint",
    "SandboxImage",
    "SandboxImageFailure",
    "SandboxImageStatus",
    "SandboxMount",
    "SandboxPort",
    "SandboxState",
    "SandboxTimeoutRequest",
    "StartSandboxRequest",
    "UploadedPart",
    "as_dict",
    "as_list",
    "check_sandbox_mounts",
    "validate_container_id",
    "validate_disk_id",
    "validate_guest_path",
    "validate_mount_path",
    "validate_object_key",
    "validate_relative_path",
    "validate_sandbox_id",
]
