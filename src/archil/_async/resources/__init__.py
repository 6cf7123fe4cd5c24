"""The client's resources: containers, disks, tokens, images and objects."""

from .containers import AsyncContainers
from .disks import AsyncDisks
from .images import AsyncImages
from .objects import AsyncObjectPager, AsyncObjects
from .tokens import AsyncTokens

__all__ = [
    "AsyncContainers",
    "AsyncDisks",
    "AsyncImages",
    "AsyncObjectPager",
    "AsyncObjects",
    "AsyncTokens",
]
