"""The retry policy on its own: classification, backoff, Retry-After parsing."""

from __future__ import annotations

import email.utils

import httpx
import pytest
import tenacity

from archil._errors import error_for_status
from archil._retry import (
    EXEC_RETRY_STATUSES,
    RETRYABLE_STATUSES,
    RetryableStatusError,
    RetryPolicy,
    parse_retry_after,
)


def status(code: int, retry_after: float | None = None) -> RetryableStatusError:
    return RetryableStatusError(error_for_status(code, "x"), retry_after)


def test_retryable_statuses() -> None:
    assert frozenset({408, 429, 500, 502, 503, 504}) == RETRYABLE_STATUSES
    assert 504 not in EXEC_RETRY_STATUSES
    policy = RetryPolicy()
    for code in range(400, 600):
        assert policy.is_retryable_status(code) == (code in RETRYABLE_STATUSES)


@pytest.mark.parametrize(
    ("exc", "idempotent", "expected"),
    [
        (httpx.ConnectError("x"), False, True),
        (httpx.ConnectTimeout("x"), False, True),
        (httpx.PoolTimeout("x"), False, True),
        (httpx.ReadTimeout("x"), True, True),
        (httpx.ReadTimeout("x"), False, False),
        (httpx.RemoteProtocolError("x"), True, True),
        (httpx.RemoteProtocolError("x"), False, False),
        (httpx.ReadError("x"), True, True),
        (httpx.WriteError("x"), False, False),
        (httpx.LocalProtocolError("x"), True, False),
        (httpx.UnsupportedProtocol("x"), True, False),
        (ValueError("x"), True, False),
        (error_for_status(503, "x"), True, False),
    ],
)
def test_exception_classification(exc: BaseException, idempotent: bool, expected: bool) -> None:
    assert RetryPolicy().is_retryable(exc, idempotent=idempotent) is expected


def test_status_classification() -> None:
    policy = RetryPolicy()
    assert policy.is_retryable(status(503))
    assert not policy.is_retryable(status(503), idempotent=False)
    assert not policy.is_retryable(status(404))


def test_backoff_is_exponential_capped_and_jittered() -> None:
    exact = RetryPolicy(random=lambda: 0.0)
    assert [exact.backoff(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low = RetryPolicy(random=lambda: 0.999999)
    for n in range(1, 8):
        assert 0.75 * exact.backoff(n) <= low.backoff(n) <= exact.backoff(n)
    real = RetryPolicy()
    waits = {real.backoff(3) for _ in range(50)}
    assert len(waits) > 1
    assert all(1.5 <= w <= 2.0 for w in waits)


def test_wait_prefers_retry_after_capped() -> None:
    policy = RetryPolicy(random=lambda: 0.0)
    assert policy.wait_for(1, status(429, 12.0)) == 12.0
    assert policy.wait_for(1, status(429, 600.0)) == 60.0
    assert policy.wait_for(2, status(503)) == 1.0
    assert policy.wait_for(3, httpx.ConnectError("x")) == 2.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "soon"}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1000", "Retry-After": "9"}, 1.0),
        ({"retry-after-ms": "nan", "Retry-After": "9"}, 9.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert (
        parse_retry_after({"Retry-After": email.utils.formatdate(now + 42, usegmt=True)}, now=now)
        == 42.0
    )
    assert (
        parse_retry_after({"Retry-After": email.utils.formatdate(now - 42, usegmt=True)}, now=now)
        == 0.0
    )


def test_tenacity_controller_stops_and_reraises() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(random=lambda: 0.0)
    kwargs = policy.tenacity_kwargs(
        max_retries=2, idempotent=True, sleep=sleeps.append, method="GET", url="http://h/api/x?q=1"
    )
    attempts = 0

    def fail() -> None:
        nonlocal attempts
        attempts += 1
        raise status(502)

    with pytest.raises(RetryableStatusError):
        tenacity.Retrying(**kwargs)(fail)
    assert attempts == 3
    assert sleeps == [0.5, 1.0]


def test_tenacity_controller_does_not_retry_other_errors() -> None:
    kwargs = RetryPolicy().tenacity_kwargs(
        max_retries=5, idempotent=True, sleep=lambda s: None, method="GET", url="http://h/"
    )
    calls = 0

    def fail() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("nope")

    with pytest.raises(KeyError):
        tenacity.Retrying(**kwargs)(fail)
    assert calls == 1
