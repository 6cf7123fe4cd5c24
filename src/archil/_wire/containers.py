"""Containers, a facade over sandboxes (see :mod:`archil._async.resources.containers`).

A container's record and its command's exit code are objects on its disk;
its process is a script that runs the initialization, then the command, then
writes the exit code there.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, get_args

from .._constants import SANDBOX_DISK_PATH
from .._models.containers import Container, ContainerStatus, PortMapping
from .._models.sandboxes import SandboxData, SandboxEndpoint
from .._models.validators import validate_container_id

CONTAINERS_PREFIX = ".archil/containers"
CONTAINER_NAME_PREFIX = "cntr-"
_IDLE = "exec sleep 2147483647"


def check_container_status(status: str | None) -> str | None:
    """``None`` or one of the container states."""
    if status is not None and status not in get_args(ContainerStatus):
        raise ValueError(
            f"status must be one of {', '.join(get_args(ContainerStatus))}, got {status!r}"
        )
    return status


def container_keys(container_id: str) -> tuple[str, str]:
    """The object keys of a container's record and of its command's exit code, on its disk."""
    validate_container_id(container_id)
    return (
        f"{CONTAINERS_PREFIX}/{container_id}.json",
        f"{CONTAINERS_PREFIX}/{container_id}.exit",
    )


def container_script(init: str | None, command: str | None, container_id: str) -> str:
    """The container's process: the initialization script, then the command, then its exit code
    written to the disk (so ``get`` knows it ended even with nobody attached)."""
    exit_path = f"{SANDBOX_DISK_PATH}/{container_keys(container_id)[1]}"
    parts: list[str] = []
    if init and init.strip():
        parts.append(init.rstrip("\n"))
        parts.append(
            'archil_rc=$?; if [ "$archil_rc" -ne 0 ]; then '
            'echo "archil: the initialization script failed with exit code $archil_rc" >&2; '
            'exit "$archil_rc"; fi'
        )
    parts.append(command if command and command.strip() else _IDLE)
    body = "\n".join(parts)
    quoted = shlex.quote(exit_path)
    return (
        f"( {body}\n)\narchil_rc=$?\n"
        f"mkdir -p {shlex.quote(posixpath.dirname(exit_path))} && "
        f'printf "%s" "$archil_rc" > {quoted}.tmp && mv -f {quoted}.tmp {quoted}\n'
        'exit "$archil_rc"\n'
    )


def _port_mappings(endpoints: Sequence[SandboxEndpoint]) -> list[PortMapping]:
    out: list[PortMapping] = []
    for endpoint in endpoints:
        local = ":" in endpoint.hostname
        host_port = int(endpoint.hostname.rsplit(":", 1)[1]) if local else None
        scheme = "http" if local else "https"
        out.append(
            PortMapping(
                container_port=endpoint.port,
                host_port=host_port,
                url=f"{scheme}://{endpoint.hostname}",
            )
        )
    return out


def container_from(
    data: SandboxData,
    record: Mapping[str, Any] | None,
    exit_code: int | None,
    ports: Sequence[SandboxEndpoint] = (),
) -> Container:
    """A :class:`Container` from its sandbox, its record on the disk and its exit code, if any."""
    status: ContainerStatus
    if data.status == "pending":
        status = "pending"
    elif data.status == "failed":
        status = "failed"
    elif exit_code is not None:
        status = "exited"
    elif data.status in ("running", "stopping"):
        status = "running"
    elif data.status in ("paused", "pausing"):
        status = "paused"
    else:
        status = "stopped"
    rec = record or {}
    mounts = [m.model_dump(exclude_none=True) for m in data.mounts]
    main = next((m for m in mounts if m.get("path") == SANDBOX_DISK_PATH), None)
    metadata = rec.get("metadata")
    return Container(
        container_id=data.sandbox_id,
        status=status,
        exit_code=exit_code,
        failure_reason=data.exit_reason if status == "failed" else None,
        process_id=rec.get("process_id"),
        archil_mount=main,
        additional_mounts=[m for m in mounts if m is not main],
        vcpu_count=data.vcpu_count,
        mem_size_mib=data.mem_size_mib,
        kernel_variant=rec.get("kernel_variant") or data.kernel_variant or "base",
        command=rec.get("command"),
        ports=_port_mappings([*data.endpoints, *ports]),
        metadata=dict(metadata) if isinstance(metadata, dict) else {},
        created_at=data.created_at,
        started_at=data.running_at,
        finished_at=data.finished_at,
        sandbox=data,
    )


def parse_exit_code(data: bytes) -> int | None:
    """The exit code a container's command left on its disk (``None`` if unreadable)."""
    try:
        return int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None
