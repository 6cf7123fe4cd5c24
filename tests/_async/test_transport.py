"""Retries, error mapping, headers, idempotency keys and per-call options."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
import respx

from archil._async.client import AsyncArchil
from archil._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from archil._models import SandboxMount

from .helpers import (
    API_KEY,
    BASE,
    DISK,
    OBJ,
    FakeClock,
    disk_json,
    err,
    make_client,
    ok,
    sandbox_json,
)

RETRYABLE = [408, 429, 500, 502, 503, 504]
TOKEN = "tok-0123456789abcdef"
NOT_RETRYABLE = [400, 401, 403, 404, 409, 422]


@pytest.mark.parametrize("status", RETRYABLE)
async def test_retryable_status_is_retried(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock, status: int
) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(side_effect=[err(status), ok(disk_json())])
    disk = await client.disks.get(DISK)
    assert disk.id == DISK
    assert route.call_count == 2
    assert clock.sleeps == [0.5]


@pytest.mark.parametrize("status", NOT_RETRYABLE)
async def test_other_4xx_is_not_retried(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock, status: int
) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(side_effect=[err(status), ok(disk_json())])
    with pytest.raises(APIStatusError) as info:
        await client.disks.get(DISK)
    assert info.value.status_code == status
    assert route.call_count == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
    ],
)
async def test_status_maps_to_exception(
    client: AsyncArchil, router: respx.MockRouter, status: int, cls: type[APIStatusError]
) -> None:
    router.get(f"/api/disks/{DISK}").mock(
        return_value=err(status, "it went wrong", "E_TEST", **{"x-request-id": "req-42"})
    )
    with pytest.raises(cls) as info:
        await client.disks.get(DISK, max_retries=0)
    exc = info.value
    assert type(exc) is cls
    assert isinstance(exc, APIError)
    assert exc.status_code == status
    assert exc.message == "it went wrong"
    assert exc.code == "E_TEST"
    assert exc.request_id == "req-42"
    assert "it went wrong" in str(exc)


async def test_plain_text_error_body(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"/api/disks/{DISK}").mock(return_value=httpx.Response(502, text="Bad gateway"))
    with pytest.raises(InternalServerError) as info:
        await client.disks.get(DISK, max_retries=0)
    assert info.value.message == "Bad gateway"
    assert info.value.code is None


async def test_retries_exhausted_raise_the_last_error(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(return_value=err(503, "overloaded"))
    with pytest.raises(InternalServerError) as info:
        await client.disks.get(DISK)
    assert info.value.status_code == 503
    assert route.call_count == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


async def test_connect_error_is_retried(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(
        side_effect=[httpx.ConnectError("connection refused"), ok(disk_json())]
    )
    assert (await client.disks.get(DISK)).id == DISK
    assert route.call_count == 2
    assert len(clock.sleeps) == 1


async def test_connect_errors_become_api_connection_error(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(APIConnectionError) as info:
        await client.disks.get(DISK)
    assert not isinstance(info.value, httpx.HTTPError)
    assert route.call_count == 4


async def test_read_timeout_is_retried_then_api_timeout_error(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(APITimeoutError):
        await client.disks.get(DISK, max_retries=2)
    assert route.call_count == 3


async def test_post_read_timeout_is_retried_with_the_same_key(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.post("/api/sandboxes").mock(
        side_effect=[httpx.ReadTimeout("slow"), ok(sandbox_json("running"), 202)]
    )
    await client.sandboxes.create(mounts=[SandboxMount(disk_id=DISK)])
    keys = [call.request.headers["Idempotency-Key"] for call in route.calls]
    assert len(keys) == 2 and keys[0] == keys[1]


async def test_retry_after_seconds(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    router.get(f"/api/disks/{DISK}").mock(
        side_effect=[err(429, **{"Retry-After": "7"}), ok(disk_json())]
    )
    await client.disks.get(DISK)
    assert clock.sleeps == [7.0]


async def test_retry_after_http_date(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    router.get(f"/api/disks/{DISK}").mock(
        side_effect=[err(503, **{"Retry-After": when}), ok(disk_json())]
    )
    await client.disks.get(DISK)
    assert len(clock.sleeps) == 1
    assert 25.0 <= clock.sleeps[0] <= 30.0


async def test_retry_after_ms(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    router.get(f"/api/disks/{DISK}").mock(
        side_effect=[err(429, **{"retry-after-ms": "1500", "Retry-After": "9"}), ok(disk_json())]
    )
    await client.disks.get(DISK)
    assert clock.sleeps == [1.5]


async def test_retry_after_is_capped(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    router.get(f"/api/disks/{DISK}").mock(
        side_effect=[err(503, **{"Retry-After": "3600"}), ok(disk_json())]
    )
    await client.disks.get(DISK)
    assert clock.sleeps == [60.0]


async def test_idempotency_key_is_kept_across_retries_and_new_per_call(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.post("/api/sandboxes").mock(
        side_effect=[
            err(503),
            err(500),
            ok(sandbox_json("running"), 202),
            err(502),
            ok(sandbox_json("running"), 202),
        ]
    )
    await client.sandboxes.create()
    await client.sandboxes.create()
    keys = [call.request.headers["Idempotency-Key"] for call in route.calls]
    assert len(keys) == 5
    assert keys[0] == keys[1] == keys[2]
    assert keys[3] == keys[4]
    assert keys[0] != keys[3]


async def test_delete_answering_404_on_a_retry_is_done(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.delete(f"/api/tokens/{TOKEN}").mock(
        side_effect=[httpx.RemoteProtocolError("dropped"), err(404, "no such token")]
    )
    await client.tokens.delete(TOKEN)
    assert route.call_count == 2
    router.delete(f"/api/disks/{DISK}").mock(return_value=err(404, "no such disk"))
    with pytest.raises(NotFoundError):
        await client.disks.delete(DISK)


async def test_get_has_no_idempotency_key(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(return_value=ok(disk_json()))
    await client.disks.get(DISK)
    assert "Idempotency-Key" not in route.calls[0].request.headers


async def test_headers(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(return_value=ok(disk_json()))
    await client.disks.get(DISK)
    headers = route.calls[0].request.headers
    assert headers["Authorization"] == API_KEY
    assert headers["User-Agent"].startswith("archil-python/")


async def test_a_requests_own_headers_stay_its_own(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    # The auth and user-agent headers are built once and shared: what one request
    # adds (an idempotency key, a content type) must not reach the next.
    posts = router.post("/api/sandboxes").mock(return_value=ok(sandbox_json("running"), 202))
    put = router.put(f"{OBJ}/{DISK}/k").mock(return_value=httpx.Response(200))
    gets = router.get(f"/api/disks/{DISK}").mock(return_value=ok(disk_json()))
    await client.sandboxes.create()
    await client.objects.put(DISK, "k", b"x", content_type="text/plain")
    await client.disks.get(DISK)
    other = make_client(clock, api_key="another-key-0123456789")
    await other.disks.get(DISK)
    await client.disks.get(DISK)
    await other.aclose()
    assert put.calls[0].request.headers["Content-Type"] == "text/plain"
    assert "Idempotency-Key" in posts.calls[0].request.headers
    sent = [call.request.headers for call in gets.calls]
    assert [h["Authorization"] for h in sent] == [API_KEY, "another-key-0123456789", API_KEY]
    for headers in sent:
        assert "Idempotency-Key" not in headers and "Content-Type" not in headers


async def test_max_retries_per_client(router: respx.MockRouter, clock: FakeClock) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(return_value=err(503))
    c = make_client(clock, max_retries=1)
    with pytest.raises(InternalServerError):
        await c.disks.get(DISK)
    assert route.call_count == 2
    await c.aclose()


async def test_max_retries_per_call(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(return_value=err(503))
    with pytest.raises(InternalServerError):
        await client.disks.get(DISK, max_retries=0)
    assert route.call_count == 1


async def test_max_retries_with_options(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(return_value=err(503))
    other = client.with_options(max_retries=2)
    with pytest.raises(InternalServerError):
        await other.disks.get(DISK)
    assert route.call_count == 3
    assert other.config.max_retries == 2
    assert client.config.max_retries == 3


async def test_with_options_shares_the_pool(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"/api/disks/{DISK}").mock(return_value=ok(disk_json()))
    other = client.with_options(timeout=5)
    await client.disks.get(DISK)
    await other.disks.get(DISK)
    assert other._transport.pool is client._transport.pool
    await other.aclose()
    assert client._transport.pool._client is not None
    await client.disks.get(DISK)


async def test_timeout_per_call_and_with_options(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.get(f"/api/disks/{DISK}").mock(return_value=ok(disk_json()))
    await client.disks.get(DISK)
    await client.disks.get(DISK, timeout=5)
    await client.with_options(timeout=7).disks.get(DISK)
    reads = [call.request.extensions["timeout"]["read"] for call in route.calls]
    assert reads == [30.0, 5.0, 7.0]


async def test_bad_per_call_options(client: AsyncArchil, router: respx.MockRouter) -> None:
    with pytest.raises(ValueError, match="max_retries"):
        await client.disks.get(DISK, max_retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        client.with_options(timeout=0)
    assert not router.calls


async def test_caller_http_client_is_not_closed(router: respx.MockRouter, clock: FakeClock) -> None:
    router.get(f"/api/disks/{DISK}").mock(return_value=ok(disk_json()))
    http = httpx.AsyncClient()
    c = make_client(clock, http_client=http)
    await c.disks.get(DISK)
    await c.aclose()
    assert not http.is_closed
    await http.aclose()


async def test_context_manager_closes_the_pool(router: respx.MockRouter, clock: FakeClock) -> None:
    router.get(f"/api/disks/{DISK}").mock(return_value=ok(disk_json()))
    async with make_client(clock) as c:
        await c.disks.get(DISK)
        assert c._transport.pool._client is not None
    assert c._transport.pool._client is None


async def test_success_false_in_a_200_is_an_error(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.get(f"/api/disks/{DISK}").mock(
        return_value=httpx.Response(200, json={"success": False, "error": "nope"})
    )
    with pytest.raises(APIError, match="nope"):
        await client.disks.get(DISK)


async def test_malformed_response_is_an_api_error(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.get(f"/api/disks/{DISK}").mock(return_value=ok({"unexpected": True}))
    with pytest.raises(APIError, match="Disk"):
        await client.disks.get(DISK)


def test_repr_shows_base_url_not_key() -> None:
    c = AsyncArchil(api_key=API_KEY, base_url=BASE)
    assert BASE in repr(c)
    assert API_KEY not in repr(c)
