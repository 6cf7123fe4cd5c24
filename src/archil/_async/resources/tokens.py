"""``client.tokens``: the account's API keys."""

from __future__ import annotations

from urllib.parse import quote

from typing_extensions import Unpack

from ..._models import ApiToken, CreatedApiToken, CreateTokenRequest
from ..._wire import RequestOptions, check_limit, check_name, items_decoder, parse_model, query
from .._transport import AsyncTransport
from ..pagers import AsyncCursorPager

__all__ = ["AsyncTokens"]


class AsyncTokens:
    """API keys: list, create and revoke the keys that authenticate to the control plane."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    def list(
        self, *, limit: int | None = None, **options: Unpack[RequestOptions]
    ) -> AsyncCursorPager[ApiToken]:
        """Every API key of the account (their public records, never the keys)."""
        params = query(limit=check_limit(limit))
        return AsyncCursorPager(
            self._transport, "/api/tokens", params, items_decoder(ApiToken, "tokens"), **options
        )

    async def create(
        self, name: str, description: str | None = None, **options: Unpack[RequestOptions]
    ) -> CreatedApiToken:
        """Create an API key; its ``token`` (a ``SecretStr``) is shown only this once."""
        request = CreateTokenRequest(name=name, description=description)
        envelope = await self._transport.request_json(
            "POST", "/api/tokens", json=request.to_wire(), **options
        )
        return parse_model(CreatedApiToken, envelope.data, envelope.status_code)

    async def delete(self, token_id: str, **options: Unpack[RequestOptions]) -> None:
        """Revoke and delete the API key ``token_id``."""
        path = "/api/tokens/" + quote(check_name(token_id, "token_id"), safe="")
        await self._transport.request_json("DELETE", path, **options)
