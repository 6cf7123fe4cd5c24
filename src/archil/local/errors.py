"""The errors a route handler raises, and the JSON error envelope they are answered with.

:class:`ApiError` becomes ``{"success": false, "error": ..., "code": ...}`` with
its HTTP status. The object API's S3 XML errors are in :mod:`archil.local.objects_xml`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from .. import _models as models

__all__ = ["ApiError", "describe_validation_error", "error_response", "json_response"]

_MODEL_NAMES = {name for name in dir(models) if name[:1].isupper()}
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


class ApiError(Exception):
    """An error answered with the JSON error envelope."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A compact JSON response."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, message: str, code: str) -> Response:
    """The error envelope."""
    return json_response({"success": False, "error": message, "code": code}, status)


def _format_loc(loc: tuple[int | str, ...], names: Mapping[str, str] | None = None) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        part = (names or {}).get(part, part)
        if part in _MODEL_NAMES or part in _TYPE_TAGS or "[" in part or "(" in part:
            continue
        if out and not part.replace("_", "").isalnum():
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out


def describe_validation_error(
    exc: ValidationError, prefix: str = "", names: Mapping[str, str] | None = None
) -> str:
    """``"<field path>: <message>"`` for each error of a pydantic ``ValidationError``.

    ``names`` maps field names to the wire's (the SDK's models name fields as Python
    spells them in errors; a request's sender knows them by their wire names).
    """
    parts: list[str] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = _format_loc(tuple(err.get("loc", ())), names)
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        msg = str(err.get("msg", "invalid value"))
        for lead in ("Value error, ", "Assertion failed, "):
            if msg.startswith(lead):
                msg = msg[len(lead) :]
        text = f"{loc or 'body'}: {msg}"
        if text not in seen:
            seen.add(text)
            parts.append(text)
    return "; ".join(parts) or "invalid request"
