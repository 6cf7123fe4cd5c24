"""``/api/images``: sandbox images built from OCI references (:mod:`archil.local.images`)."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..._models import BuildImageRequest
from ..errors import ApiError
from ..images import ImageRecord
from .common import ok, plane, read_json, validated

__all__ = ["image_wire", "routes"]


def image_wire(record: ImageRecord, *, extensions: bool) -> dict[str, Any]:
    """The live API's ``Image`` record (``failure_message`` is an archil extension)."""
    data = record.to_wire()
    if not extensions:
        data.pop("failure_message", None)
    return data


async def create_image(request: Request) -> Response:
    """``POST /api/images``: build (or join the build of) an image from an OCI reference."""
    p = plane(request)
    req = validated(BuildImageRequest, await read_json(request))
    try:
        record = await anyio.to_thread.run_sync(p.images.request, req.source)
    except ValueError as exc:
        raise ApiError(400, str(exc), "validation_error") from None
    return ok(image_wire(record, extensions=p.extensions), 202)


async def get_image(request: Request) -> Response:
    """``GET /api/images/{image_id}``: an image and its build state."""
    p = plane(request)
    image_id = str(request.path_params["image_id"])
    record = p.images.get(image_id)
    if record is None:
        raise ApiError(404, f"image {image_id!r} not found", "image_not_found")
    return ok(image_wire(record, extensions=p.extensions))


async def list_images(request: Request) -> Response:
    """``GET /api/images`` (an archil extension): every image, oldest first."""
    p = plane(request)
    records = await anyio.to_thread.run_sync(p.images.list)
    return ok({"images": [image_wire(r, extensions=True) for r in records]})


def routes(*, extensions: bool = True) -> list[Route]:
    """The image routes (the listing is an extension, absent in real-API-only mode)."""
    table = [
        Route("/api/images", create_image, methods=["POST"]),
        Route("/api/images/{image_id}", get_image, methods=["GET"]),
    ]
    if extensions:
        table.append(Route("/api/images", list_images, methods=["GET"]))
    return table
