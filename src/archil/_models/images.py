"""Sandbox images: a build from an OCI reference, its registry credentials, the image record."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, SecretStr, field_serializer, field_validator

from .base import _reveal, _SnakeRequest, _SnakeResponse

SandboxImageStatus = Literal["building", "ready", "failed"]
SandboxImageFailure = Literal["invalid_source", "interrupted"]


class RegistryAuth(_SnakeRequest):
    """Credentials for a private registry; sent with a build and never stored."""

    username: str = Field(min_length=1, max_length=256)
    password: SecretStr

    @field_serializer("password")
    def _ser_password(self, value: SecretStr, info: Any) -> str | SecretStr | None:
        return _reveal(value, info)


class BuildImageRequest(_SnakeRequest):
    """``POST /api/images``: build a sandbox image from an OCI reference."""

    source: str = Field(min_length=1, max_length=512)
    registry_auth: RegistryAuth | None = None

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v != v.strip() or any(c.isspace() for c in v) or "\x00" in v:
            raise ValueError(f"source {v!r} is not an image reference (no spaces allowed)")
        return v


class SandboxImage(_SnakeResponse):
    """A sandbox image built from an OCI reference: ``status`` is building, ready or failed.

    ``failure_message`` is an archil extension: a sentence saying why a build failed.
    """

    image_id: str
    source: str
    private: bool = False
    status: SandboxImageStatus
    created_at: datetime
    updated_at: datetime
    digest: str | None = None
    canonical_source: str | None = None
    # The known reasons are SandboxImageFailure; a newer one must not make a failed image unreadable.
    failure_reason: SandboxImageFailure | str | None = None
    failure_message: str | None = None
