"""The client's resources: containers, disks, tokens, images, objects and sandboxes."""

from .containers import AsyncContainers
from .disks import AsyncDisks
from .images import AsyncImages
from .objects import AsyncObjectPager, AsyncObjects
from .sandboxes import AsyncProcess, AsyncSandbox, AsyncSandboxes
from .tokens import AsyncTokens

__all__ = [
    "AsyncContainers",
    "AsyncDisks",
    "AsyncImages",
    "AsyncObjectPager",
    "AsyncObjects",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncSandboxes",
    "AsyncTokens",
]
