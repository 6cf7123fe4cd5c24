"""``/api/images``: sandbox images."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ... import _models as models
from ..._models import CreateImageRequest
from ..errors import ApiError
from ..plane import ControlPlane
from .common import ok, plane, read_json, shape, validated

__all__ = ["routes"]


async def _image_wire(p: ControlPlane, image_id: str) -> dict[str, Any] | None:
    row = p.state.get_image(image_id)
    if row is None:
        return None
    status, reason = p.images.status(image_id)
    if status is None:
        await anyio.to_thread.run_sync(p.images.ensure, row["dockerfile"])
        status, reason = p.images.status(image_id)
    status = status or row["status"]
    if status != row["status"] or reason != row["failure_reason"]:
        p.state.set_image_status(image_id, status, reason)
    data: dict[str, Any] = {"imageId": image_id, "status": status}
    if status == "failed":
        data["failureReason"] = reason or "the build failed"
    return shape(models.Image, data)


async def create_image(request: Request) -> Response:
    """``POST /api/images``: idempotent by Dockerfile content."""
    p = plane(request)
    req: CreateImageRequest = validated(CreateImageRequest, await read_json(request))
    image_id = p.images.image_id_for(req.dockerfile)
    created = p.state.insert_image(image_id, req.dockerfile)
    await anyio.to_thread.run_sync(p.images.ensure, req.dockerfile)
    data = await _image_wire(p, image_id)
    return ok(data, 201 if created else 200)


async def get_image(request: Request) -> Response:
    """``GET /api/images/{id}``."""
    p = plane(request)
    image_id = request.path_params["image_id"]
    data = await _image_wire(p, image_id)
    if data is None:
        raise ApiError(404, f"image {image_id!r} not found", "image_not_found")
    return ok(data)


def routes() -> list[Route]:
    """The image routes."""
    return [
        Route("/api/images", create_image, methods=["POST"]),
        Route("/api/images/{image_id}", get_image, methods=["GET"]),
    ]
