"""``/api/sandboxes``: the live API's sandboxes, served by :class:`archil.local.sandboxes.SandboxManager`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..._models import (
    CreateSandboxRequest,
    ForkSandboxRequest,
    SandboxTimeoutRequest,
    StartSandboxRequest,
    validate_sandbox_id,
)
from ..errors import ApiError
from .common import bool_query, ok, plane, read_json, validated
from .processes import connection_token

__all__ = ["CONNECTION_TTL", "routes"]

CONNECTION_TTL = 300
"""Seconds a process WebSocket URL stays good for new connections."""


def _sid(request: Request) -> str:
    sid = str(request.path_params["sid"])
    try:
        validate_sandbox_id(sid, "sid")
    except ValueError:
        raise ApiError(404, f"sandbox {sid!r} not found", "sandbox_not_found") from None
    return sid


def _port(request: Request) -> int:
    raw = str(request.path_params["port"])
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ApiError(400, f"port: {raw[:20]!r} is not a TCP port (1-65535)", "validation_error")
    return int(raw)


async def create_sandbox(request: Request) -> Response:
    """``POST /api/sandboxes?wait=``."""
    p = plane(request)
    req = validated(CreateSandboxRequest, await read_json(request))
    row = await p.sandboxes.create(req, wait=bool_query(request, "wait", False))
    return ok(p.sandboxes.wire(row), 202)


async def list_sandboxes(request: Request) -> Response:
    """``GET /api/sandboxes?filesystem=``: every sandbox, oldest first."""
    p = plane(request)
    filesystem = request.query_params.get("filesystem") or None
    rows = p.sandboxes.rows(filesystem)
    return ok({"sandboxes": [p.sandboxes.wire(r) for r in rows]})


async def get_sandbox(request: Request) -> Response:
    """``GET /api/sandboxes/{sid}``."""
    p = plane(request)
    return ok(p.sandboxes.wire(p.sandboxes.get(_sid(request))))


async def delete_sandbox(request: Request) -> Response:
    """``DELETE /api/sandboxes/{sid}``: a stopped, exited or failed sandbox without forks."""
    p = plane(request)
    await p.sandboxes.delete(_sid(request))
    return Response(status_code=204)


async def start_sandbox(request: Request) -> Response:
    """``POST /api/sandboxes/{sid}/start?wait=``: cold boot, optionally with new mounts."""
    p = plane(request)
    sid = _sid(request)
    body = await read_json(request, optional=True)
    req = validated(StartSandboxRequest, body)
    mounts = list(req.mounts) if req.mounts is not None else None
    row, status = await p.sandboxes.start(sid, mounts, wait=bool_query(request, "wait", False))
    if row["status"] == "running":
        status = 200
    return ok(p.sandboxes.wire(row), status)


async def stop_sandbox(request: Request) -> Response:
    """``POST /api/sandboxes/{sid}/stop``."""
    p = plane(request)
    row = await p.sandboxes.stop(_sid(request))
    return ok(p.sandboxes.wire(row), 200 if row["status"] != "stopping" else 202)


async def pause_sandbox(request: Request) -> Response:
    """``POST /api/sandboxes/{sid}/pause``."""
    p = plane(request)
    row = await p.sandboxes.pause(_sid(request))
    return ok(p.sandboxes.wire(row), 200 if row["status"] != "pausing" else 202)


async def resume_sandbox(request: Request) -> Response:
    """``POST /api/sandboxes/{sid}/resume?wait=``."""
    p = plane(request)
    row, status = await p.sandboxes.resume(_sid(request))
    return ok(p.sandboxes.wire(row), status)


async def fork_sandbox(request: Request) -> Response:
    """``POST /api/sandboxes/{sid}/fork?wait=``: a new sandbox from a checkpoint."""
    p = plane(request)
    sid = _sid(request)
    req = validated(ForkSandboxRequest, await read_json(request, optional=True))
    row = await p.sandboxes.fork(sid, req, wait=bool_query(request, "wait", False))
    return ok(p.sandboxes.wire(row), 202)


async def set_sandbox_timeout(request: Request) -> Response:
    """``POST /api/sandboxes/{sid}/timeout``."""
    p = plane(request)
    sid = _sid(request)
    req = validated(SandboxTimeoutRequest, await read_json(request))
    return ok(p.sandboxes.wire(await p.sandboxes.set_timeout(sid, req)))


async def expose_port(request: Request) -> Response:
    """``PUT /api/sandboxes/{sid}/ports/{port}``: 201 when newly exposed, 200 when it was."""
    p = plane(request)
    record, created = p.sandboxes.expose(_sid(request), _port(request))
    return ok(record, 201 if created else 200)


async def list_ports(request: Request) -> Response:
    """``GET /api/sandboxes/{sid}/ports``."""
    p = plane(request)
    return ok({"ports": p.sandboxes.ports(_sid(request))})


async def unexpose_port(request: Request) -> Response:
    """``DELETE /api/sandboxes/{sid}/ports/{port}``."""
    p = plane(request)
    p.sandboxes.unexpose(_sid(request), _port(request))
    return Response(status_code=204)


async def create_connection(request: Request) -> Response:
    """``POST /api/sandboxes/{sid}/connections``: a short-lived process WebSocket URL."""
    p = plane(request)
    sid = _sid(request)
    p.sandboxes.running_env(sid)
    expires = datetime.now(timezone.utc) + timedelta(seconds=CONNECTION_TTL)
    token = connection_token(p.secret, sid, int(expires.timestamp()))
    base = str(request.base_url).rstrip("/")
    scheme, _, rest = base.partition("://")
    ws_scheme = "wss" if scheme == "https" else "ws"
    url = f"{ws_scheme}://{rest}/ws/sandboxes/{sid}/processes?token={token}"
    data: dict[str, Any] = {
        "url": url,
        "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return ok(data)


def routes() -> list[Route]:
    """The sandbox routes."""
    base = "/api/sandboxes/{sid}"
    return [
        Route("/api/sandboxes", create_sandbox, methods=["POST"]),
        Route("/api/sandboxes", list_sandboxes, methods=["GET"]),
        Route(base, get_sandbox, methods=["GET"]),
        Route(base, delete_sandbox, methods=["DELETE"]),
        Route(base + "/start", start_sandbox, methods=["POST"]),
        Route(base + "/stop", stop_sandbox, methods=["POST"]),
        Route(base + "/pause", pause_sandbox, methods=["POST"]),
        Route(base + "/resume", resume_sandbox, methods=["POST"]),
        Route(base + "/fork", fork_sandbox, methods=["POST"]),
        Route(base + "/timeout", set_sandbox_timeout, methods=["POST"]),
        Route(base + "/ports", list_ports, methods=["GET"]),
        Route(base + "/ports/{port}", expose_port, methods=["PUT"]),
        Route(base + "/ports/{port}", unexpose_port, methods=["DELETE"]),
        Route(base + "/connections", create_connection, methods=["POST"]),
    ]
