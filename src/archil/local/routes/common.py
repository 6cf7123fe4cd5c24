"""What every route module shares: the success envelope, body and query parsing, cursors."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ApiError, describe_validation_error, json_response

if TYPE_CHECKING:
    from ..plane import ControlPlane

__all__ = [
    "MAX_JSON_BODY",
    "bool_query",
    "decode_cursor",
    "encode_cursor",
    "float_query",
    "int_query",
    "ok",
    "page",
    "plane",
    "read_json",
    "shape",
    "validated",
]

MAX_JSON_BODY = 16 * 1024 * 1024
M = TypeVar("M", bound=BaseModel)


def plane(request: Request) -> ControlPlane:
    """The control plane serving ``request``."""
    value: ControlPlane = request.app.state.plane
    return value


def ok(data: Any, status: int = 200, **top: Any) -> Response:
    """The success envelope; ``top`` adds keys beside ``data`` (``nextCursor``)."""
    payload: dict[str, Any] = {"success": True, "data": data}
    payload.update({k: v for k, v in top.items() if v is not None})
    return json_response(payload, status)


def shape(model: type[BaseModel], data: dict[str, Any], *, by_alias: bool = True) -> dict[str, Any]:
    """``data`` validated as ``model`` and dumped as JSON-ready wire data."""
    out: dict[str, Any] = model.model_validate(data).model_dump(
        mode="json", by_alias=by_alias, exclude_none=True
    )
    return out


async def read_json(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body (``{}`` for an empty body when ``optional``)."""
    raw = await request.body()
    if len(raw) > MAX_JSON_BODY:
        raise ApiError(413, "body: the request body is too large", "body_too_large")
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "body: a JSON object is required", "invalid_body")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(
            400, f"body: invalid JSON ({exc.__class__.__name__})", "invalid_json"
        ) from None
    if data is None and optional:
        return {}
    if not isinstance(data, dict):
        raise ApiError(400, "body: must be a JSON object", "invalid_body")
    return data


def validated(model: type[M], data: dict[str, Any], prefix: str = "") -> M:
    """``data`` as ``model``; a 400 naming the bad field (by its wire name) otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message = describe_validation_error(exc, prefix, wire_names(model))
        raise ApiError(400, message, "validation_error") from None


def wire_names(model: type[BaseModel]) -> dict[str, str]:
    """Field name to wire name, for ``model`` and the models inside it, where they differ."""
    names: dict[str, str] = {}
    todo: list[type[BaseModel]] = [model]
    seen: set[type[BaseModel]] = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name, info in current.model_fields.items():
            alias = info.serialization_alias or info.alias
            if alias and alias != name:
                names.setdefault(name, alias)
            todo.extend(_models_in(info.annotation))
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def int_query(
    request: Request, name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    """An integer query parameter (clamped to ``maximum``)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, f"{name}: must be an integer, got {raw[:40]!r}", "validation_error"
        ) from None
    if value < minimum:
        raise ApiError(400, f"{name}: must be at least {minimum}", "validation_error")
    if maximum is not None:
        value = min(value, maximum)
    return value


def float_query(request: Request, name: str, default: float, *, maximum: float) -> float:
    """A non-negative number of seconds (clamped to ``maximum``)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name}: must be a number of seconds", "validation_error") from None
    if value != value or value < 0:
        raise ApiError(400, f"{name}: must be a non-negative number of seconds", "validation_error")
    return min(value, maximum)


def bool_query(request: Request, name: str, default: bool) -> bool:
    """A boolean query parameter (``true``/``false``, ``1``/``0``, ``yes``/``no``)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    low = raw.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name}: must be true or false", "validation_error")


def encode_cursor(kind: str, seq: int) -> str:
    """An opaque cursor for the page after sequence number ``seq``."""
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(request: Request, kind: str) -> int:
    """The sequence number in the request's ``cursor`` (0 for the first page)."""
    raw = request.query_params.get("cursor")
    if not raw:
        return 0
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        got_kind, _, seq = text.partition(":")
        if got_kind != kind:
            raise ValueError(kind)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            400, "cursor: not a cursor from a previous page", "validation_error"
        ) from None


def page(
    rows: list[dict[str, Any]], limit: int, kind: str
) -> tuple[list[dict[str, Any]], str | None]:
    """At most ``limit`` rows (of ``limit + 1`` fetched) and the next cursor, if any."""
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(kind, int(rows[-1]["seq"]))
    return rows, None
