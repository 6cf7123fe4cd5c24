"""Plain data handed between the sandbox manager, the runtime and the image builder.

Nothing here does I/O. :mod:`archil.local.sandboxes` turns API requests into a
:class:`SandboxSpec` (with the image's :class:`ImageEnv` from
:mod:`archil.local.images` and the layers from :mod:`archil.local.layers`),
boots it with :mod:`archil.local.runtime`, and starts :class:`ProcessSpec`
processes in it; the runtime reports each process's end as an :class:`ExitInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from archil._constants import SANDBOX_DISK_PATH

__all__ = [
    "GUEST_DISK_PATH",
    "ExitInfo",
    "ImageEnv",
    "MountSpec",
    "ProcessSpec",
    "RootSpec",
    "SandboxSpec",
]

GUEST_DISK_PATH = SANDBOX_DISK_PATH
"""Where a sandbox's sole disk is mounted."""


@dataclass(frozen=True)
class MountSpec:
    """A host directory mounted at ``target`` inside a sandbox (``read_only`` enforced)."""

    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ImageEnv:
    """What a sandbox gets from its image.

    ``layer`` is a directory laid out like ``/`` whose files appear in the sandbox
    beneath its own layers (for a ``python:X.Y`` image: a Python environment at
    ``usr/local``); ``None`` for an image that is the host's userland as it is.
    ``binds`` are host directories that must be visible read-only at the same path
    inside the sandbox (the installation of the interpreter a venv points at).
    ``env`` holds the image's default environment (``PATH`` and the like).
    ``host_path`` is the ``PATH`` to use where a sandbox runs without namespaces
    (host paths of the image's ``bin`` directories first).
    """

    image_id: str
    source: str
    layer: Path | None = None
    binds: tuple[Path, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    host_path: tuple[str, ...] = ()
    python_version: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class RootSpec:
    """A sandbox's writable root: this session's ``upper`` over committed layers.

    ``lowers`` are committed layers (checkpoints), newest first; the image's layer
    and the host's directories lie below them. ``upper`` and ``work`` are empty
    directories on one filesystem, owned by this session.
    """

    upper: Path
    work: Path
    lowers: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SandboxSpec:
    """Everything the runtime needs to boot one sandbox."""

    sandbox_id: str
    hostname: str
    root: RootSpec
    image: ImageEnv
    mounts: tuple[MountSpec, ...] = ()
    vcpu_count: int = 1
    mem_size_mib: int = 2048
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessSpec:
    """A process to start in a booted sandbox: ``command`` runs with ``/bin/sh -c``.

    ``terminal`` is ``(cols, rows)`` for a pseudo-terminal (all output then comes
    on stream 1), ``None`` for pipes. ``cwd`` ``None`` means the sandbox's disk,
    else ``/``. ``timeout_seconds`` kills it when it runs out.
    """

    command: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    terminal: tuple[int, int] | None = None
    timeout_seconds: int | None = None


@dataclass(frozen=True)
class ExitInfo:
    """How a process ended, in the process protocol's terms (``docs/process-protocol.md``)."""

    status: Literal["completed", "failed", "cancelled", "timed_out"]
    exit_code: int | None = None
    exit_reason: str | None = None
