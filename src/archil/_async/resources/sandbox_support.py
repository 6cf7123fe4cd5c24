"""Helpers shared by the sandbox modules.

The request path of a sandbox, the names generated for creates and forks, the
polling and reconnection constants, the checks and errors of the process
protocol, and the pause before a dropped connection is tried again.
"""

from __future__ import annotations

import builtins
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ..._config import LONG_POLL_TIMEOUT
from ..._errors import APIConnectionError, APIStatusError, ProcessError
from ..._models import SandboxMount, validate_sandbox_id
from ..._retry import parse_retry_after
from .._transport import AsyncTransport, TimeoutArg

__all__ = [
    "FIRST_POLL_INTERVAL",
    "MAX_POLL_INTERVAL",
    "RECONNECT_PROGRESS_SECONDS",
    "generated_name",
    "sandbox_path",
]

logger = logging.getLogger("archil")

FIRST_POLL_INTERVAL = 0.05
"""The first pause while waiting for a sandbox to change state; doubled up to the cap."""
MAX_POLL_INTERVAL = 0.5
RECONNECT_PROGRESS_SECONDS = 60.0
"""A process connection that stayed up this long counts as progress (the budget is reset)."""

_NOT_PICKLABLE = (
    "{} holds the client's connection and credentials and cannot be pickled; "
    "pass the sandbox id (and process id) and look them up again"
)


def sandbox_path(sandbox_id: str, *rest: str) -> str:
    """``/api/sandboxes/{sid}[/rest...]`` for a validated sandbox id."""
    validate_sandbox_id(sandbox_id)
    return "/".join(("/api/sandboxes", quote(sandbox_id, safe=""), *rest))


def generated_name() -> str:
    """A unique sandbox name for a create or fork that was not given one."""
    return "sbx-" + secrets.token_hex(8)


def _mount_list(
    mounts: Sequence[SandboxMount | Mapping[str, Any]] | None,
) -> builtins.list[Any] | None:
    if mounts is None:
        return None
    if isinstance(mounts, (SandboxMount, Mapping, str, bytes)) or not isinstance(mounts, Iterable):
        raise ValueError("mounts must be a list of SandboxMount (or dicts)")
    return [dict(m) if isinstance(m, Mapping) else m for m in mounts]


def _long_poll(transport: AsyncTransport, timeout: float | None, wait: bool) -> TimeoutArg:
    """A call's timeout: one given is kept; a ``?wait=true`` call otherwise reads for longer."""
    if timeout is not None or not wait:
        return timeout
    return transport.timeout(read=LONG_POLL_TIMEOUT)


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a connection failure for logs and errors."""
    code = getattr(exc, "code", None)
    name = type(exc).__name__
    if isinstance(exc, APIStatusError):
        return f"HTTP {exc.status_code}"
    if isinstance(code, int):
        return f"{name} (close code {code})"
    text = str(exc)
    return f"{name}: {text}" if text else name


def _process_error(event: Mapping[str, Any], process_id: str | None) -> ProcessError:
    code = event.get("error")
    message = event.get("message")
    return ProcessError(
        str(message) if message else "the process protocol reported an error",
        code=str(code) if code else None,
        process_id=process_id or None,
    )


def _protocol_error(text: str, process_id: str | None) -> ProcessError:
    return ProcessError(text, code="protocol_error", process_id=process_id or None)


def _check_process_id(process_id: str) -> str:
    if not isinstance(process_id, str) or not process_id or "\x00" in process_id:
        raise ValueError(f"process_id must be a non-empty string, got {process_id!r}")
    return process_id


async def _pause_before_retry(
    transport: AsyncTransport, exc: BaseException, failures: int, what: str
) -> int:
    """Wait before retrying a connection, or raise when ``exc`` is final or the budget is spent.

    Returns the new count of failures.
    """
    if isinstance(exc, APIStatusError) and not transport.policy.is_retryable_status(
        exc.status_code or 0
    ):
        raise exc
    budget = transport.config.max_retries
    if failures >= budget:
        raise APIConnectionError(
            f"lost {what} and could not connect again "
            f"({failures + 1} attempts, last: {_describe(exc)})"
        ) from exc
    failures += 1
    hint = parse_retry_after(exc.headers) if isinstance(exc, APIStatusError) else None
    pause = (
        min(hint, transport.policy.max_retry_after)
        if hint is not None
        else transport.policy.backoff(failures)
    )
    logger.info(
        "reconnecting %s in %.2fs (attempt %d of %d) after %s",
        what,
        pause,
        failures + 1,
        budget + 1,
        _describe(exc),
    )
    await transport.sleep(pause)
    return failures
