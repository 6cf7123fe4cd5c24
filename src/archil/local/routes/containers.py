"""``/api/containers`` (to be replaced by the sandbox API)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ... import _models as models
from ..._models import CreateContainerRequest
from ..containers import ContainerManager, disk_mount
from ..errors import ApiError
from ..plane import ControlPlane
from .common import (
    bool_query,
    decode_cursor,
    float_query,
    int_query,
    ok,
    page,
    plane,
    read_json,
    shape,
    validated,
)

__all__ = ["routes"]

_CONTAINER_STATES = ("pending", "building", "starting", "running", "exited", "failed", "stopped")
_MAX_WAIT = 60.0


def _container_wire(row: dict[str, Any]) -> dict[str, Any]:
    return shape(models.Container, ContainerManager.to_wire(row))


def _container_or_404(p: ControlPlane, cid: str) -> dict[str, Any]:
    row = p.containers.get(cid)
    if row is None:
        raise ApiError(404, f"container {cid!r} not found", "container_not_found")
    return row


async def create_container(request: Request) -> Response:
    """``POST /api/containers``."""
    p = plane(request)
    req: CreateContainerRequest = validated(CreateContainerRequest, await read_json(request))
    main = p.disk(req.archil_mount.disk_id, "archilMount.diskId")
    mounts = [disk_mount(p.disks.path(main["id"]), "/mnt/archil", False)]
    for i, m in enumerate(req.additional_mounts):
        extra = p.disk(m.disk_id, f"additionalMounts[{i}].diskId")
        mounts.append(disk_mount(p.disks.path(extra["id"]), m.path, m.read_only))
    dockerfile: str | None = None
    if req.image_id is not None:
        image = p.state.get_image(req.image_id)
        if image is None:
            raise ApiError(404, f"imageId: image {req.image_id!r} not found", "image_not_found")
        dockerfile = image["dockerfile"]
    row = await p.containers.create(req, mounts=mounts, dockerfile=dockerfile)
    return ok(_container_wire(row), 201)


async def list_containers(request: Request) -> Response:
    """``GET /api/containers?limit=&cursor=&status=&diskId=``."""
    p = plane(request)
    limit = int_query(request, "limit", 50, minimum=1, maximum=100)
    after = decode_cursor(request, "container")
    status = request.query_params.get("status") or None
    if status is not None and status not in _CONTAINER_STATES:
        raise ApiError(
            400, f"status: must be one of {', '.join(_CONTAINER_STATES)}", "validation_error"
        )
    disk_id = request.query_params.get("diskId") or None
    rows = p.state.list_containers(after=after, limit=limit + 1, status=status, disk_id=disk_id)
    rows, cursor = page(rows, limit, "container")
    return ok([_container_wire(r) for r in rows], nextCursor=cursor)


async def get_container(request: Request) -> Response:
    """``GET /api/containers/{id}?wait=SECONDS``: long-polls until terminal or the wait runs out."""
    p = plane(request)
    cid = request.path_params["container_id"]
    wait = float_query(request, "wait", 0.0, maximum=_MAX_WAIT)
    _container_or_404(p, cid)
    row = await p.containers.wait(cid, wait)
    if row is None:
        raise ApiError(404, f"container {cid!r} not found", "container_not_found")
    return ok(_container_wire(row))


async def stop_container(request: Request) -> Response:
    """``POST /api/containers/{id}/stop``."""
    p = plane(request)
    cid = request.path_params["container_id"]
    _container_or_404(p, cid)
    row = await p.containers.stop(cid)
    if row is None:
        raise ApiError(404, f"container {cid!r} not found", "container_not_found")
    return ok(_container_wire(row))


async def delete_container(request: Request) -> Response:
    """``DELETE /api/containers/{id}``: stops it first, removes its record and logs."""
    p = plane(request)
    cid = request.path_params["container_id"]
    _container_or_404(p, cid)
    row = await p.containers.delete(cid)
    if row is None:
        raise ApiError(404, f"container {cid!r} not found", "container_not_found")
    return ok(_container_wire(row))


async def container_logs(request: Request) -> Response:
    """``GET /api/containers/{id}/logs?offset=N&follow=``: NDJSON ``{stream, offset, data}``."""
    p = plane(request)
    cid = request.path_params["container_id"]
    offset = int_query(request, "offset", 0, minimum=0)
    follow = bool_query(request, "follow", False)
    _container_or_404(p, cid)
    return StreamingResponse(
        p.containers.stream_logs(cid, offset, follow),
        media_type="application/x-ndjson",
        headers={"cache-control": "no-store"},
    )


def routes() -> list[Route]:
    """The container routes."""
    return [
        Route("/api/containers", list_containers, methods=["GET"]),
        Route("/api/containers", create_container, methods=["POST"]),
        Route("/api/containers/{container_id}", get_container, methods=["GET"]),
        Route("/api/containers/{container_id}", delete_container, methods=["DELETE"]),
        Route("/api/containers/{container_id}/stop", stop_container, methods=["POST"]),
        Route("/api/containers/{container_id}/logs", container_logs, methods=["GET"]),
    ]
