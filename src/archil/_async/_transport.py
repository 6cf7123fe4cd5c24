"""The HTTP transport: one pooled httpx client, auth headers, retries, envelopes and errors."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import AsyncRetrying

from .._compat import ABackground, ALock, asleep
from .._config import ClientConfig, _check_retries, _check_timeout
from .._errors import APIConnectionError, APIStatusError, error_for_status
from .._retry import RetryableStatusError, RetryPolicy, parse_retry_after
from .._tls import shared_ssl_context, warn_if_insecure
from .._wire import Envelope, decode_envelope, error_from_response, map_transport_error, user_agent

if TYPE_CHECKING:
    from httpx_ws import AsyncWebSocketSession

__all__ = ["AsyncTransport", "HTTPPool"]

logger = logging.getLogger("archil")

TimeoutArg = float | httpx.Timeout | None


class HTTPPool:
    """The lazily created ``httpx`` client shared by a client and its ``with_options`` copies."""

    def __init__(self, http_client: httpx.AsyncClient | None = None) -> None:
        self._client = http_client
        self._owned = http_client is None
        self._lock = ALock()

    @property
    def given(self) -> httpx.AsyncClient | None:
        """The caller's own client, if one was passed in."""
        return None if self._owned else self._client

    async def get(self) -> httpx.AsyncClient:
        """The pooled client, created on first use."""
        client = self._client
        if client is None:
            async with self._lock:
                client = self._client
                if client is None:
                    client = httpx.AsyncClient(
                        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                        follow_redirects=False,
                        verify=shared_ssl_context(),
                    )
                    self._client = client
        return client

    async def aclose(self) -> None:
        """Close the pooled client if this pool created it (a caller's client is left open)."""
        client = self._client
        if client is not None and self._owned:
            self._client = None
            await client.aclose()


@functools.lru_cache(maxsize=256)
def _parsed_url(url: str) -> httpx.URL:
    """``httpx.URL(url)``, remembered: parsing is a third of what building a request costs."""
    return httpx.URL(url)


class AsyncTransport:
    """Sends requests to the control plane and the object gateway, with retries.

    ``sleep`` and ``clock`` are attributes so that tests can replace them.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        pool: HTTPPool,
        policy: RetryPolicy | None = None,
        owns_pool: bool = True,
        background: ABackground | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.owns_pool = owns_pool
        if owns_pool:
            warn_if_insecure([config.base_url, config.object_base_url], pool.given)
        self.policy = policy or RetryPolicy()
        self.background = background or ABackground()
        self.sleep = asleep
        self.clock = time.monotonic
        self._base_headers = httpx.Headers()
        self._base_headers_for: ClientConfig | None = None

    def derive(self, config: ClientConfig) -> AsyncTransport:
        """A transport with another configuration sharing this one's connection pool."""
        other = AsyncTransport(
            config, pool=self.pool, policy=self.policy, owns_pool=False, background=self.background
        )
        other.sleep = self.sleep
        other.clock = self.clock
        return other

    def timeout(self, timeout: TimeoutArg = None, *, read: float | None = None) -> httpx.Timeout:
        """The ``httpx.Timeout`` of one request: the call's, else the client's (``read`` extends it)."""
        if isinstance(timeout, httpx.Timeout):
            return timeout
        base = self.config.timeout if timeout is None else _check_timeout(timeout)
        if read is None:
            return httpx.Timeout(base)
        return httpx.Timeout(base, read=max(base, read))

    def _headers(
        self, extra: Mapping[str, str] | None, idempotency_key: str | None = None
    ) -> httpx.Headers:
        """The request's headers: auth and user agent, then ``extra`` and the idempotency key.

        The common set is built once per config and shared (httpx copies it into
        each request); a request with more headers gets its own copy.
        """
        config = self.config
        if self._base_headers_for is not config:
            self._base_headers = httpx.Headers(
                {"Authorization": config.api_key.get_secret_value(), "User-Agent": user_agent()}
            )
            self._base_headers_for = config
        if not extra and idempotency_key is None:
            return self._base_headers
        headers = self._base_headers.copy()
        if extra:
            headers.update(extra)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        content: bytes | None = None,
        stream_body: Callable[[], AsyncIterable[bytes]] | None = None,
        replayable: bool = True,
        headers: Mapping[str, str] | None = None,
        timeout: TimeoutArg = None,
        max_retries: int | None = None,
        idempotency_key: str | None = None,
        stream: bool = False,
        retry_statuses: frozenset[int] | None = None,
    ) -> httpx.Response:
        """Send one logical request, retrying transient failures.

        A POST carries an ``Idempotency-Key`` made once here and repeated on
        every retry; a DELETE that answers 404 on a retry counts as done. ``stream_body`` makes a fresh body for each attempt;
        with ``replayable=False`` a failure after the body started is final.
        With ``stream=True`` the caller must close the response.
        Raises :class:`APIStatusError` subclasses for error statuses and
        :class:`APIConnectionError` / :class:`APITimeoutError` for transport failures.
        """
        request_headers = self._headers(
            headers, (idempotency_key or str(uuid.uuid4())) if method == "POST" else None
        )
        request_url = _parsed_url(url)
        retries = self.config.max_retries if max_retries is None else _check_retries(max_retries)
        request_timeout = self.timeout(timeout)
        statuses = self.policy.statuses if retry_statuses is None else retry_statuses
        http = await self.pool.get()

        async def attempt_once(retried: bool) -> httpx.Response:
            request = http.build_request(
                method,
                request_url,
                params=params,
                json=json,
                content=stream_body() if stream_body is not None else content,
                headers=request_headers,
                timeout=request_timeout,
            )
            return await self._send_once(http, request, stream, statuses, retried)

        # The first attempt runs outside tenacity; a failure is handed to the retry
        # loop as its first attempt, so the policy sees exactly what it would have.
        first_failure: Exception | None = None
        try:
            return await attempt_once(False)
        except Exception as exc:
            first_failure = exc
        retrying = AsyncRetrying(
            **self.policy.tenacity_kwargs(
                max_retries=retries,
                idempotent=replayable,
                sleep=self.sleep,
                method=method,
                url=url,
            )
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if first_failure is not None:
                        failure, first_failure = first_failure, None
                        raise failure
                    return await attempt_once(True)
        except RetryableStatusError as exc:
            raise exc.error from None
        except httpx.RequestError as exc:
            raise map_transport_error(exc) from exc
        raise AssertionError("the retry loop ended without an outcome")

    async def _send_once(
        self,
        http: httpx.AsyncClient,
        request: httpx.Request,
        stream: bool,
        statuses: frozenset[int],
        retried: bool,
    ) -> httpx.Response:
        response = await http.send(request, stream=stream)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d", request.method, request.url.path, response.status_code)
        if response.status_code < 400:
            return response
        if retried and response.status_code == 404 and request.method == "DELETE":
            # An earlier attempt deleted it and its answer was lost on the way back.
            await response.aclose()
            return httpx.Response(204, request=request)
        if stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        error = error_from_response(response)
        if response.status_code in statuses:
            raise RetryableStatusError(error, parse_retry_after(response.headers))
        raise error

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        timeout: TimeoutArg = None,
        max_retries: int | None = None,
        idempotency_key: str | None = None,
        retry_statuses: frozenset[int] | None = None,
    ) -> Envelope:
        """A control-plane call (``path`` under the base URL), its envelope unwrapped."""
        response = await self.send(
            method,
            self.config.base_url + path,
            params=params,
            json=json,
            timeout=timeout,
            max_retries=max_retries,
            idempotency_key=idempotency_key,
            retry_statuses=retry_statuses,
        )
        return decode_envelope(response)

    @asynccontextmanager
    async def stream(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """Open a streamed response (retried until the headers arrive) and close it on exit.

        Transport failures while the body is read surface as
        :class:`APIConnectionError` / :class:`APITimeoutError`.
        """
        response = await self.send(method, url, stream=True, **kwargs)
        try:
            yield response
        except httpx.RequestError as exc:
            raise map_transport_error(exc) from exc
        finally:
            await response.aclose()

    @asynccontextmanager
    async def websocket(
        self, url: str, *, timeout: TimeoutArg = None
    ) -> AsyncIterator[AsyncWebSocketSession]:
        """Open a WebSocket to ``url`` on the pooled client and close it on exit.

        The URL carries its own token, so no ``Authorization`` header is sent.
        A refused upgrade raises the :class:`APIStatusError` of its status, a
        network failure :class:`APIConnectionError` / :class:`APITimeoutError`.
        Nothing is retried here. ``timeout`` bounds the handshake only: reads
        on the open socket wait as long as it takes (keepalive pings notice a
        dead peer).
        """
        from httpx_ws import AsyncWebSocketSession, aconnect_ws

        redact_socket_urls()
        http = await self.pool.get()
        connecting = aconnect_ws(
            url,
            http,
            session_class=AsyncWebSocketSession,
            headers={"User-Agent": user_agent()},
            timeout=self.timeout(timeout),
        )
        try:
            async with connecting as session:
                yield session
        except Exception as exc:
            mapped = websocket_failure(exc, url)
            if mapped is exc:
                raise
            if isinstance(mapped, APIConnectionError):
                raise mapped from exc
            raise mapped from None

    async def aclose(self) -> None:
        """Finish the background work, then close the connection pool (unless it is borrowed)."""
        if self.owns_pool:
            await self.background.drain()
            await self.pool.aclose()


class _RedactSocketQueries(logging.Filter):
    """Drops the query (a signed token) of WebSocket URLs from httpx's request log lines."""

    archil_socket_redaction = True

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_socket_url(a) for a in args):
            record.args = tuple(_socket_url(a) or a for a in args)
        return True


def _socket_url(value: object) -> str | None:
    """A WebSocket URL with a query, as text without it; ``None`` for anything else."""
    if isinstance(value, httpx.URL) and value.scheme in ("ws", "wss") and value.query:
        return str(value.copy_with(query=None)) + "?<token>"
    return None


def redact_socket_urls() -> None:
    """Keep process-connection tokens out of the ``httpx`` logger's INFO lines (idempotent)."""
    httpx_logger = logging.getLogger("httpx")
    if not any(getattr(f, "archil_socket_redaction", False) for f in httpx_logger.filters):
        httpx_logger.addFilter(_RedactSocketQueries())


def websocket_failure(exc: BaseException, url: str) -> BaseException:
    """The exception to raise for a WebSocket failure: an archil error, or ``exc`` itself.

    An exception group holding a single exception is unwrapped first (a
    coroutine session runs a task group, which wraps what its body raised).
    """
    while type(exc).__name__ in ("ExceptionGroup", "BaseExceptionGroup"):
        inner: tuple[BaseException, ...] = getattr(exc, "exceptions", ())
        if len(inner) != 1:
            break
        exc = inner[0]
    name = type(exc).__name__
    where = url.split("?", 1)[0]
    if name == "WebSocketUpgradeError":
        response: httpx.Response = getattr(exc, "response")  # noqa: B009
        return _upgrade_error(response, where)
    if isinstance(exc, httpx.RequestError):
        return map_transport_error(exc)
    if name in ("WebSocketNetworkError", "WebSocketDisconnect"):
        return APIConnectionError(f"the WebSocket connection broke ({where})", url=where)
    return exc


def _upgrade_error(response: httpx.Response, url: str) -> APIStatusError:
    status = response.status_code
    message = f"the WebSocket upgrade was refused: HTTP {status} {response.reason_phrase}".rstrip()
    return error_for_status(
        status,
        message,
        request_id=response.headers.get("x-request-id"),
        method="GET",
        url=url,
        headers={k.lower(): v for k, v in response.headers.items()},
    )
