"""``POST /api/disks/{id}/exec`` and ``POST /api/exec``: one command with disks mounted."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..._models import ExecDiskRequest, ExecMount, ExecRequest
from ..disks import DirectoryNotFound, PathEscapeError
from ..errors import ApiError
from ..plane import ControlPlane
from ..runtime import BootError, SpawnError
from ..sandboxes import ExecOutcome
from ..spec import GUEST_DISK_PATH, MountSpec
from .common import ok, plane, read_json, validated

__all__ = ["routes"]


def _exec_result(outcome: ExecOutcome, started: float) -> dict[str, Any]:
    total = int((time.monotonic() - started) * 1000)
    return {
        "exitCode": outcome.exit_code,
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
        "timing": {
            "totalMs": max(total, outcome.queue_ms + outcome.execute_ms),
            "queueMs": outcome.queue_ms,
            "executeMs": outcome.execute_ms,
        },
    }


async def _run_exec(p: ControlPlane, command: str, mounts: list[MountSpec]) -> Response:
    started = time.monotonic()
    timeout = p.settings.exec_timeout
    try:
        outcome = await p.sandboxes.run_once(command, mounts, timeout)
    except (BootError, SpawnError) as exc:
        raise ApiError(
            500, f"the command could not be started: {exc}", "exec_start_failed"
        ) from None
    except TimeoutError:
        raise ApiError(
            504, f"the command did not finish within {timeout:g} s", "exec_timeout"
        ) from None
    return ok(_exec_result(outcome, started))


async def exec_disk(request: Request) -> Response:
    """``POST /api/disks/{id}/exec``: the disk at ``/mnt/archil``."""
    p = plane(request)
    disk = p.disk(request.path_params["disk_id"])
    req = validated(ExecDiskRequest, await read_json(request))
    mount = MountSpec(p.disks.path(disk["id"]), GUEST_DISK_PATH, False)
    return await _run_exec(p, req.command, [mount])


async def exec_multi(request: Request) -> Response:
    """``POST /api/exec``: several disks under ``/mnt/archil/<relpath>``."""
    p = plane(request)
    req = validated(ExecRequest, await read_json(request))
    mounts: list[MountSpec] = []
    for rel, target in req.disks.items():
        where = f"disks[{rel!r}]"
        spec = target if isinstance(target, ExecMount) else ExecMount(disk=target)
        disk = p.disk(spec.disk, where)
        host = p.disks.path(disk["id"])
        if spec.subdirectory:
            try:
                host = p.disks.resolve_subdirectory(disk["id"], spec.subdirectory)
            except (PathEscapeError, DirectoryNotFound) as exc:
                raise ApiError(400, f"{where}.subdirectory: {exc}", "validation_error") from None
        mounts.append(MountSpec(host, f"{GUEST_DISK_PATH}/{rel}", spec.read_only))
    return await _run_exec(p, req.command, mounts)


def routes() -> list[Route]:
    """The exec routes."""
    return [
        Route("/api/disks/{disk_id}/exec", exec_disk, methods=["POST"]),
        Route("/api/exec", exec_multi, methods=["POST"]),
    ]
