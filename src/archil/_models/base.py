"""The base classes of every wire model, and the rule that reveals secrets.

The control-plane API (disks, users, tokens, exec, objects) spells its fields
in camelCase: :class:`_Request` and :class:`_Response` map them to snake_case
attributes. The sandbox API (sandboxes, images) is snake_case on the wire:
:class:`_SnakeRequest` and :class:`_SnakeResponse`. Requests reject unknown
fields; responses keep them, so a newer server never breaks an older client.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr
from pydantic.alias_generators import to_camel


class _Request(BaseModel):
    """A request body: snake_case in Python, camelCase on the wire, unknown fields rejected.

    Errors name a field as the caller spells it (``disk_id``), not as the wire does.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        loc_by_alias=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON body to send, secrets revealed, unset optional fields omitted."""
        return self.model_dump(
            mode="json", by_alias=True, exclude_none=True, context={"reveal": True}
        )


class _Response(BaseModel):
    """A response body: unknown fields are kept, not fatal."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        hide_input_in_errors=True,
    )


def _reveal(value: SecretStr | None, info: Any) -> str | SecretStr | None:
    if value is None:
        return None
    ctx = getattr(info, "context", None) or {}
    if ctx.get("reveal"):
        return value.get_secret_value()
    return value


class _SnakeRequest(BaseModel):
    """A sandbox-API request body: snake_case on the wire, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body to send, secrets revealed, unset optional fields omitted."""
        return self.model_dump(mode="json", exclude_none=True, context={"reveal": True})


class _SnakeResponse(BaseModel):
    """A sandbox-API response body: unknown fields are kept, not fatal."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)
