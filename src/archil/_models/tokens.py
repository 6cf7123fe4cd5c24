"""API tokens: the request that creates one and the key's public record."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, SecretStr

from .base import _Request, _Response


class CreateTokenRequest(_Request):
    """``POST /api/tokens``."""

    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)


class ApiToken(_Response):
    """An API key's public record (never the key itself)."""

    id: str
    name: str | None = None
    description: str | None = None
    token_suffix: str | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None


class CreatedApiToken(ApiToken):
    """A newly created API key: ``token`` holds the full key, shown only this once."""

    token: SecretStr | None = None
