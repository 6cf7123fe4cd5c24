"""``/api/tokens``: the account's API keys."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ... import _models as models
from ..._models import CreatedApiToken, CreateTokenRequest
from ..errors import ApiError
from ..plane import digest
from .common import decode_cursor, int_query, ok, page, plane, read_json, shape, validated

__all__ = ["routes"]


def _token_wire(row: dict[str, Any]) -> dict[str, Any]:
    return shape(
        models.ApiToken,
        {
            "id": row["id"],
            "name": row["name"],
            "description": row["description"],
            "tokenSuffix": row["token_suffix"],
            "createdAt": row["created_at"],
            "lastUsedAt": row["last_used_at"],
        },
    )


async def list_tokens(request: Request) -> Response:
    """``GET /api/tokens``."""
    p = plane(request)
    limit = int_query(request, "limit", 50, minimum=1, maximum=100)
    after = decode_cursor(request, "token")
    rows, cursor = page(p.state.list_tokens(after=after, limit=limit + 1), limit, "token")
    return ok({"tokens": [_token_wire(r) for r in rows]}, nextCursor=cursor)


async def create_token(request: Request) -> Response:
    """``POST /api/tokens``: the full key is in the answer, and only there."""
    p = plane(request)
    req: CreateTokenRequest = validated(CreateTokenRequest, await read_json(request))
    token = "key-" + secrets.token_hex(16)
    row = p.state.insert_token(
        token_id="tok-" + secrets.token_hex(8),
        name=req.name,
        description=req.description,
        token_digest=digest(token),
        token_suffix=token[-4:],
    )
    data = shape(CreatedApiToken, _token_wire(row))
    data["token"] = token
    return ok(data, 201)


async def delete_token(request: Request) -> Response:
    """``DELETE /api/tokens/{id}``."""
    p = plane(request)
    token_id = request.path_params["token_id"]
    if not p.state.delete_token(token_id):
        raise ApiError(404, f"token {token_id!r} not found", "token_not_found")
    return ok({"message": "Token deleted"})


def routes() -> list[Route]:
    """The API-token routes."""
    return [
        Route("/api/tokens", list_tokens, methods=["GET"]),
        Route("/api/tokens", create_token, methods=["POST"]),
        Route("/api/tokens/{token_id}", delete_token, methods=["DELETE"]),
    ]
