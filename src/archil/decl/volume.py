"""Volumes: further disks mounted into a function's container."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._models import SandboxMount, validate_disk_id

if TYPE_CHECKING:
    from .._models import Disk

__all__ = ["Volume"]


@dataclass(frozen=True)
class Volume:
    """A disk to mount at an extra path in a function's container.

    ``shared=True`` mounts it read-only, so many containers can read it at once.
    The app's own disk is always at ``/mnt/archil``; volumes go elsewhere::

        datasets = archil.Volume.from_disk_id("disk_shared_datasets", shared=True)

        @app.function(additional_volumes={"/datasets": datasets})
        def train(): ...
    """

    disk_id: str
    env: str = "production"
    shared: bool = False

    def __post_init__(self) -> None:
        validate_disk_id(self.disk_id)
        if not isinstance(self.env, str) or not self.env:
            raise ValueError(f"env must be a non-empty string, got {self.env!r}")
        if not isinstance(self.shared, bool):
            raise ValueError(f"shared must be True or False, got {self.shared!r}")

    @classmethod
    def from_disk_id(cls, disk_id: str, env: str = "production", shared: bool = False) -> Volume:
        """A volume for the disk ``disk_id``; ``shared=True`` mounts it read-only."""
        return cls(disk_id=disk_id, env=env, shared=shared)

    @classmethod
    def from_disk(cls, disk: Disk, shared: bool = False, env: str = "production") -> Volume:
        """A volume for a :class:`~archil.Disk` returned by ``client.disks.get(...)``."""
        disk_id = getattr(disk, "id", None)
        if not isinstance(disk_id, str):
            raise ValueError(f"disk must be an archil Disk, got {type(disk).__name__}")
        return cls(disk_id=disk_id, env=env, shared=shared)

    def mount_at(self, path: str) -> SandboxMount:
        """The wire form of this volume mounted at ``path`` (validated).

        A shared volume is mounted read-only; a writable one is mounted
        ``conditional``, so that many sandboxes (``fn.map``) can write it at once.
        """
        return SandboxMount(
            disk_id=self.disk_id, path=path, read_only=self.shared, conditional=not self.shared
        )
