"""``GET /healthz``: readiness, and whether the ``Authorization`` header is valid."""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .common import ok, plane

__all__ = ["routes"]


async def healthz(request: Request) -> Response:
    """``GET /healthz``: readiness; says whether the ``Authorization`` header is valid."""
    p = plane(request)
    data: dict[str, Any] = {"status": "ok"}
    header = request.headers.get("authorization")
    if header is not None:
        authed = p.authenticate(header)
        data["authenticated"] = authed
        if authed:
            data["dataDir"] = str(p.settings.data_dir)
            data["pid"] = os.getpid()
    return ok(data)


def routes() -> list[Route]:
    """The health route."""
    return [Route("/healthz", healthz, methods=["GET"])]
