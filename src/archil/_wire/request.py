"""What a request carries: per-call options, the ``User-Agent``, checked arguments, URLs."""

from __future__ import annotations

import functools
import math
from typing import Any
from urllib.parse import quote

from typing_extensions import TypedDict

from .._models.validators import validate_disk_id, validate_object_key

MAX_PAGE_SIZE = 100


class RequestOptions(TypedDict, total=False):
    """Per-call overrides accepted by every client method.

    Attributes:
        timeout: seconds allowed for each HTTP request of the call.
        max_retries: how many times a transient failure is retried.
    """

    timeout: float
    max_retries: int


@functools.cache
def user_agent() -> str:
    """The ``User-Agent`` header: ``archil-python/<version>``."""
    try:
        from importlib.metadata import version

        ver = version("archil")
    except Exception:
        ver = "0+unknown"
    return f"archil-python/{ver}"


def check_limit(
    limit: int | None, field: str = "limit", maximum: int = MAX_PAGE_SIZE
) -> int | None:
    """A page size: ``None`` or an integer from 1 to ``maximum`` (100 by default)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise ValueError(f"{field} must be an integer from 1 to {maximum}, got {limit!r}")
    return limit


def check_name(value: str, field: str) -> str:
    """A non-empty identifier that is safe as a single URL path segment."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    if "/" in value or "\x00" in value or value in (".", ".."):
        raise ValueError(f"{field} {value!r} is not a valid identifier")
    return value


def check_seconds(value: float | None, field: str) -> float | None:
    """``None`` or a non-negative, finite number of seconds."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{field} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def check_count(value: int, field: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer of at least ``minimum`` (and at most ``maximum``), else a ``ValueError`` naming ``field``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise ValueError(f"{field} must be an integer {bound}, got {value!r}")
    return value


def disk_path(disk_id: str, *rest: str) -> str:
    """``/api/disks/{id}[/rest...]`` for a validated disk id."""
    validate_disk_id(disk_id)
    return "/".join(("/api/disks", quote(disk_id, safe=""), *rest))


def object_url(base: str, disk_id: str, key: str | None = None) -> str:
    """Path-style object URL ``{base}/{diskId}[/{key}]``; the key is quoted with '/' kept."""
    validate_disk_id(disk_id)
    url = f"{base}/{quote(disk_id, safe='')}"
    if key is None:
        return url
    validate_object_key(key)
    return f"{url}/{quote(key, safe='/')}"


def query(**params: Any) -> dict[str, str | int]:
    """Query parameters with ``None`` dropped and booleans spelled ``true``/``false``."""
    out: dict[str, str | int] = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, int):
            out[name] = value
        else:
            out[name] = str(value)
    return out
