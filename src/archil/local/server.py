"""The local control plane's HTTP API: a Starlette ASGI application.

:func:`create_app` builds the application for a data directory: the route
table (one module per resource under :mod:`archil.local.routes`), the error
handlers, the middleware (outermost first: request id, chaos, then inside
Starlette authentication and idempotency) and the lifespan. It serves the
contract in ``docs/control-plane.openapi.yaml``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from .chaos import ChaosMiddleware
from .errors import ApiError, describe_validation_error, error_response
from .middleware import AuthMiddleware, IdempotencyMiddleware, RequestIdMiddleware
from .objects import object_routes
from .objects_xml import S3Error, s3_error_response
from .plane import ControlPlane, ServerSettings, load_api_key
from .routes import disks, exec, health, images, processes, sandboxes, tokens

__all__ = [
    "ApiError",
    "ControlPlane",
    "LocalApp",
    "ServerSettings",
    "create_app",
    "describe_validation_error",
    "load_api_key",
]

logger = logging.getLogger("archil.local")


def _is_s3(request: Request) -> bool:
    path = request.url.path
    return path == "/s3" or path.startswith("/s3/")


def _request_id(request: Request) -> str | None:
    rid = request.scope.get("state", {}).get("request_id")
    return None if rid is None else str(rid)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if _is_s3(request):
        code = {404: "NoSuchBucket", 400: "InvalidArgument"}.get(exc.status, "InternalError")
        return s3_error_response(exc.status, code, exc.message, request_id=_request_id(request))
    return error_response(exc.status, exc.message, exc.code)


async def _on_s3_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, S3Error)
    return s3_error_response(exc.status, exc.code, exc.message, exc.resource, _request_id(request))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return error_response(400, describe_validation_error(exc), "validation_error")


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _is_s3(request):
        code = "MethodNotAllowed" if exc.status_code == 405 else "InvalidRequest"
        return s3_error_response(
            exc.status_code, code, str(exc.detail), request_id=_request_id(request)
        )
    if exc.status_code == 404:
        return error_response(
            404, f"no such endpoint: {request.method} {request.url.path}", "not_found"
        )
    if exc.status_code == 405:
        return error_response(
            405, f"method {request.method} not allowed here", "method_not_allowed"
        )
    return error_response(exc.status_code, str(exc.detail), "http_error")


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    rid = _request_id(request)
    logger.error(
        "internal error on %s %s (request %s): %s",
        request.method,
        request.url.path,
        rid,
        exc.__class__.__name__,
        exc_info=exc,
    )
    if _is_s3(request):
        return s3_error_response(500, "InternalError", "internal error", request_id=rid)
    return error_response(500, f"internal error (request {rid})", "internal_error")


def _routes(settings: ServerSettings) -> list[BaseRoute]:
    extensions = not settings.real_api_only
    return [
        *health.routes(),
        *disks.routes(extensions=extensions),
        *exec.routes(),
        *tokens.routes(),
        *images.routes(extensions=extensions),
        *sandboxes.routes(),
        *processes.routes(),
        *object_routes(),
    ]


class LocalApp:
    """The ASGI application of a local control plane; ``plane`` holds its state."""

    def __init__(self, plane: ControlPlane, app: ASGIApp) -> None:
        self.plane = plane
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def create_app(settings: ServerSettings, *, api_key: str | None = None) -> LocalApp:
    """Build the ASGI application for ``settings.data_dir`` (the API key is loaded or generated)."""
    key = api_key if api_key is not None else load_api_key(settings.data_dir)
    plane = ControlPlane(settings, api_key=key)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await plane.startup()
        try:
            yield
        finally:
            await plane.shutdown()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: _on_api_error,
        S3Error: _on_s3_error,
        ValidationError: _on_validation_error,
        HTTPException: _on_http_exception,
        Exception: _on_unexpected,
    }
    middleware = [Middleware(AuthMiddleware, plane=plane)]
    if not settings.real_api_only:
        middleware.append(Middleware(IdempotencyMiddleware, plane=plane))
    starlette = Starlette(
        routes=_routes(settings),
        middleware=middleware,
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    starlette.state.plane = plane
    chaos = ChaosMiddleware(starlette, plane.chaos, dropper=lambda: plane.dropper)
    return LocalApp(plane, RequestIdMiddleware(chaos))
