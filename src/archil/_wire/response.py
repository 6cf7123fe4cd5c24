"""What an answer means: envelopes, response models, error answers and transport failures.

Nothing here does I/O; the transports call these helpers on responses whose
body has already been read.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from .._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    error_for_status,
)

M = TypeVar("M", bound=BaseModel)

_MAX_ERROR_TEXT = 1000


@dataclass(frozen=True)
class Envelope:
    """A decoded ``{"success": true, "data": ..., "nextCursor": ...}`` answer."""

    data: Any
    next_cursor: str | None
    status_code: int


def decode_envelope(response: httpx.Response) -> Envelope:
    """Unwrap a successful control-plane answer (its body already read)."""
    status = response.status_code
    if not response.content:
        return Envelope(None, None, status)
    try:
        body = json.loads(response.content)
    except ValueError:
        raise APIError(
            "the control plane sent a response that is not JSON",
            status_code=status,
            request_id=response.headers.get("x-request-id"),
        ) from None
    if isinstance(body, dict) and "success" in body:
        if body.get("success") is False:
            raise error_from_response(response)
        cursor = body.get("nextCursor")
        return Envelope(
            body.get("data"), cursor if isinstance(cursor, str) and cursor else None, status
        )
    return Envelope(body, None, status)


def parse_model(model: type[M], data: Any, status_code: int | None = None) -> M:
    """Validate response ``data`` as ``model``; a malformed answer is an :class:`APIError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise APIError(
            f"unexpected {model.__name__} in the control plane's response: "
            f"{exc.error_count()} invalid field(s)",
            status_code=status_code,
        ) from None


def items_decoder(model: type[M], key: str | None = None) -> Callable[[Any], list[M]]:
    """A decoder of list ``data``: ``null`` is empty, ``{key: [...]}`` is unwrapped."""

    def decode(data: Any) -> list[M]:
        if data is None:
            return []
        if isinstance(data, dict):
            if key is None:
                raise APIError("unexpected list in the control plane's response")
            data = data.get(key) or []
        if not isinstance(data, list):
            raise APIError("unexpected list in the control plane's response")
        return [parse_model(model, item) for item in data]

    return decode


def _request_info(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        request = response.request
    except RuntimeError:
        return None, None
    return request.method, str(request.url.copy_with(query=None))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_fields(element: ET.Element) -> dict[str, str]:
    return {_local(child.tag): (child.text or "").strip() for child in element}


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The exception for an error answer: JSON envelope, S3 XML ``<Error>``, or plain text."""
    status = response.status_code
    headers = response.headers
    request_id = headers.get("x-request-id") or headers.get("x-amz-request-id")
    message: str | None = None
    code: str | None = None
    body = response.content
    stripped = body.lstrip()
    ctype = headers.get("content-type", "")
    if stripped[:1] in (b"{", b"[") or "json" in ctype:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            err = payload.get("error")
            if isinstance(err, dict):
                message = _text(err.get("message"))
                code = _text(err.get("code"))
            else:
                message = _text(err) or _text(payload.get("message"))
            code = code or _text(payload.get("code"))
    elif stripped[:1] == b"<" or "xml" in ctype:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            root = None
        if root is not None and _local(root.tag) == "Error":
            fields = _xml_fields(root)
            message = fields.get("Message") or None
            code = fields.get("Code") or None
            request_id = request_id or fields.get("RequestId") or None
    elif stripped:
        message = body.decode("utf-8", "replace").strip()[:_MAX_ERROR_TEXT]
    if not message:
        message = response.reason_phrase or f"HTTP {status}"
    method, url = _request_info(response)
    return error_for_status(
        status,
        message,
        code=code,
        request_id=request_id,
        method=method,
        url=url,
        body=_body_of(body, ctype),
        headers={k.lower(): v for k, v in headers.items()},
    )


def _body_of(raw: bytes, ctype: str) -> Any:
    """An error answer's body for :attr:`APIError.body`: decoded JSON, else text (capped)."""
    if not raw:
        return None
    if "json" in ctype or raw.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw[: _MAX_ERROR_TEXT * 16].decode("utf-8", "replace")


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def map_transport_error(exc: Exception) -> APIConnectionError:
    """Turn an ``httpx`` transport failure into :class:`APIConnectionError` / :class:`APITimeoutError`."""
    method: str | None = None
    url: str | None = None
    if isinstance(exc, httpx.RequestError):
        try:
            method = exc.request.method
            url = str(exc.request.url.copy_with(query=None))
        except RuntimeError:
            pass
    where = f" ({method} {url})" if method and url else ""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out{where}: {detail}", method=method, url=url)
    return APIConnectionError(
        f"could not reach the Archil control plane{where}: {detail}", method=method, url=url
    )
