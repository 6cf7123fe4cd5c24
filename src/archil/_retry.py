"""Retry policy: which failures are transient, how long to wait, and how retries are logged.

Nothing here does I/O. The transports build a tenacity controller from a
:class:`RetryPolicy` (``AsyncRetrying`` in the async client, ``Retrying`` in the
blocking one) and hand it their own sleep function, so tests never sleep.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random as _random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import tenacity

from ._errors import APIStatusError

__all__ = [
    "DEFAULT_BASE_DELAY",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_MAX_RETRY_AFTER",
    "EXEC_RETRY_STATUSES",
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "RetryableStatusError",
    "describe_failure",
    "log_retry",
    "parse_retry_after",
]

logger = logging.getLogger("archil")

RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
# Exec endpoints answer 504 when the command itself ran out of time: not transient.
EXEC_RETRY_STATUSES: frozenset[int] = RETRYABLE_STATUSES - {504}
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 8.0
DEFAULT_MAX_RETRY_AFTER = 60.0

# Failures where the request never reached the server: always safe to repeat.
_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Failures after the request may have been (partly) processed: safe only when
# repeating the request has no second effect (GET/PUT/DELETE, or a POST that
# carries an Idempotency-Key) and its body can be sent again.
_MAYBE_SENT: tuple[type[Exception], ...] = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


class RetryableStatusError(Exception):
    """An error status that the policy may retry, with the server's ``Retry-After`` hint.

    The transports raise it inside a retry attempt and unwrap ``error`` once
    the retries are over, so callers only ever see the :class:`APIStatusError`.
    """

    def __init__(self, error: APIStatusError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The wait, in seconds, that the server asked for, or ``None``.

    ``retry-after-ms`` (milliseconds) wins over ``Retry-After``, which may be a
    number of seconds or an HTTP date. Unparseable or negative values are ignored.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        ms = _to_float(raw_ms)
        if ms is not None:
            return ms / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _to_float(raw)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _to_float(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def describe_failure(exc: BaseException | None) -> str:
    """A short, secret-free description of a failed attempt for logs."""
    if exc is None:
        return "unknown failure"
    if isinstance(exc, RetryableStatusError):
        return f"HTTP {exc.error.status_code}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def log_retry(
    method: str, url: str, reason: str, wait: float, attempt: int, max_attempts: int
) -> None:
    """Log one retry at INFO on the ``archil`` logger (method, path, reason, wait; no headers)."""
    logger.info(
        "retrying %s %s in %.2fs (attempt %d of %d) after %s",
        method,
        urlsplit(url).path or "/",
        wait,
        attempt,
        max_attempts,
        reason,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry.

    Args:
        base_delay: the first backoff, doubled on every further attempt.
        max_delay: the cap of the exponential backoff.
        max_retry_after: the cap on a server-requested wait (``Retry-After``).
        jitter: the fraction of the backoff taken off at random (0 disables jitter).
        statuses: the HTTP statuses worth retrying.
        random: the random source for the jitter, in ``[0, 1)``.
    """

    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    jitter: float = 0.25
    statuses: frozenset[int] = RETRYABLE_STATUSES
    random: Callable[[], float] = field(default=_random.random, repr=False, compare=False)

    def is_retryable_status(self, status_code: int) -> bool:
        """True for a transient HTTP status (408, 429, 500, 502, 503, 504 by default)."""
        return status_code in self.statuses

    def is_retryable(self, exc: BaseException, *, idempotent: bool = True) -> bool:
        """True when the failed attempt ``exc`` is worth repeating.

        ``idempotent`` says whether the request may be repeated once the server
        may have seen it: true for GET/PUT/DELETE/HEAD and for POSTs with an
        Idempotency-Key, false when the body was a one-shot stream.
        """
        if isinstance(exc, RetryableStatusError):
            return idempotent and self.is_retryable_status(exc.error.status_code or 0)
        if isinstance(exc, _NOT_SENT):
            return True
        if isinstance(exc, _MAYBE_SENT):
            return idempotent
        return False

    def backoff(self, attempt: int) -> float:
        """The jittered exponential wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.max_delay, self.base_delay * 2.0 ** max(0, attempt - 1))
        return delay * (1.0 - self.jitter * self.random())

    def wait_for(self, attempt: int, exc: BaseException | None) -> float:
        """The wait before the next attempt: the server's hint (capped) or the backoff."""
        if isinstance(exc, RetryableStatusError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        return self.backoff(attempt)

    def tenacity_kwargs(
        self,
        *,
        max_retries: int,
        idempotent: bool,
        sleep: Callable[[float], Any],
        method: str,
        url: str,
    ) -> dict[str, Any]:
        """Keyword arguments for ``tenacity.AsyncRetrying`` / ``tenacity.Retrying``.

        The last failure is re-raised as it is (``reraise=True``), never wrapped
        in ``tenacity.RetryError``.
        """
        max_attempts = max_retries + 1

        def retry(state: tenacity.RetryCallState) -> bool:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None and outcome.failed else None
            return exc is not None and self.is_retryable(exc, idempotent=idempotent)

        def wait(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None and outcome.failed else None
            return self.wait_for(state.attempt_number, exc)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None and outcome.failed else None
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            log_retry(
                method,
                url,
                describe_failure(exc),
                delay,
                state.attempt_number + 1,
                max_attempts,
            )

        return {
            "retry": retry,
            "wait": wait,
            "stop": tenacity.stop_after_attempt(max_attempts),
            "sleep": sleep,
            "before_sleep": before_sleep,
            "reraise": True,
        }
