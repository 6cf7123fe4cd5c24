"""``client.containers``: create, inspect, wait for, stream the logs of, stop and delete containers."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence

import httpx
from typing_extensions import Unpack

from ..._config import LONG_POLL_TIMEOUT
from ..._errors import APITimeoutError
from ..._models import (
    AdditionalMount,
    ArchilMount,
    Container,
    CreateContainerRequest,
    KernelVariant,
    LogEntry,
    validate_container_id,
    validate_disk_id,
)
from ..._retry import describe_failure, log_retry
from ..._wire import (
    RequestOptions,
    check_container_status,
    check_limit,
    check_seconds,
    container_path,
    decode_log_line,
    items_decoder,
    map_transport_error,
    parse_model,
    query,
)
from .._transport import AsyncTransport
from ..pagers import AsyncCursorPager

__all__ = ["AsyncContainers"]

LONG_POLL_SLICE = 30.0
MIN_POLL_INTERVAL = 0.25
MAX_POLL_INTERVAL = 2.0


class AsyncContainers:
    """Containers: each one lives on a disk mounted at ``/mnt/archil``."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def create(
        self,
        *,
        archil_mount: ArchilMount | Mapping[str, str],
        vcpu_count: int = 1,
        mem_size_mib: int = 512,
        kernel_variant: KernelVariant = "base",
        initialization_script: str | None = None,
        command: str | None = None,
        env: Mapping[str, str] | None = None,
        image_id: str | None = None,
        additional_mounts: Sequence[AdditionalMount | Mapping[str, object]] | None = None,
        ports: Sequence[int] | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_seconds: int | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Container:
        """Create a container on the disk of ``archil_mount``.

        Arguments are checked before anything is sent (a ``ValidationError``
        names the bad field). The request carries ``idempotency_key`` (a fresh
        one by default), so a retried create never makes a second container.
        """
        request = CreateContainerRequest(
            archil_mount=archil_mount,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            kernel_variant=kernel_variant,
            initialization_script=initialization_script,
            command=command,
            env=dict(env) if env is not None else None,
            image_id=image_id,
            additional_mounts=list(additional_mounts or ()),
            ports=list(ports or ()),
            metadata=dict(metadata) if metadata is not None else None,
            timeout_seconds=timeout_seconds,
        )
        envelope = await self._transport.request_json(
            "POST",
            "/api/containers",
            json=request.to_wire(),
            idempotency_key=idempotency_key,
            **options,
        )
        return parse_model(Container, envelope.data, envelope.status_code)

    def list(
        self,
        *,
        status: str | None = None,
        disk_id: str | None = None,
        limit: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncCursorPager[Container]:
        """All containers, optionally only those with ``status`` or on ``disk_id``.

        ``limit`` is the page size (at most 100); the pager fetches every page.
        """
        check_container_status(status)
        if disk_id is not None:
            validate_disk_id(disk_id)
        params = query(status=status, diskId=disk_id, limit=check_limit(limit))
        return AsyncCursorPager(
            self._transport,
            "/api/containers",
            params,
            items_decoder(Container, "containers"),
            **options,
        )

    async def get(self, container_id: str, **options: Unpack[RequestOptions]) -> Container:
        """The container with id ``container_id`` (``NotFoundError`` if there is none)."""
        envelope = await self._transport.request_json(
            "GET", container_path(container_id), **options
        )
        return parse_model(Container, envelope.data, envelope.status_code)

    async def stop(self, container_id: str, **options: Unpack[RequestOptions]) -> Container:
        """Stop a running container and return its record."""
        envelope = await self._transport.request_json(
            "POST", container_path(container_id, "stop"), **options
        )
        return parse_model(Container, envelope.data, envelope.status_code)

    async def delete(self, container_id: str, **options: Unpack[RequestOptions]) -> None:
        """Delete a container (stopping it first if it still runs)."""
        await self._transport.request_json("DELETE", container_path(container_id), **options)

    async def wait(
        self,
        container_id: str,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> Container:
        """Block until the container exits, fails or is stopped, and return its final record.

        The server holds each request open until the state is terminal (at most
        about 30 s per request); with a server that answers at once, the state
        is polled at a short interval instead. ``timeout`` bounds the whole wait
        (``None`` waits for ever); when it runs out, :class:`APITimeoutError` is raised.
        """
        path = container_path(container_id)
        limit = check_seconds(timeout, "timeout")
        transport = self._transport
        clock = transport.clock
        deadline = None if limit is None else clock() + limit
        interval = MIN_POLL_INTERVAL
        while True:
            started = clock()
            budget = (
                LONG_POLL_SLICE if deadline is None else min(LONG_POLL_SLICE, deadline - started)
            )
            seconds = max(0, math.floor(budget))
            envelope = await transport.request_json(
                "GET",
                path,
                params={"wait": seconds},
                timeout=transport.timeout(read=seconds + transport.config.timeout),
                max_retries=max_retries,
            )
            container = parse_model(Container, envelope.data, envelope.status_code)
            if container.is_terminal:
                return container
            now = clock()
            if deadline is not None and now >= deadline:
                raise APITimeoutError(
                    f"container {container_id} is still {container.status} after {limit:g} s"
                )
            if now - started < seconds / 2 or seconds == 0:
                pause = interval if deadline is None else min(interval, deadline - now)
                await transport.sleep(pause)
                interval = min(interval * 2, MAX_POLL_INTERVAL)

    def logs(
        self,
        container_id: str,
        *,
        follow: bool = False,
        offset: int = 0,
        **options: Unpack[RequestOptions],
    ) -> AsyncIterator[LogEntry]:
        """The container's log entries (build, stdout, stderr, system) from ``offset`` on.

        With ``follow=True`` the stream stays open while the container runs and
        ends when the server closes it. A dropped connection is resumed from the
        entry after the last one received, with the client's retry policy.
        """
        validate_container_id(container_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        return self._iter_logs(container_id, follow, offset, **options)

    async def _iter_logs(
        self,
        container_id: str,
        follow: bool,
        offset: int,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> AsyncIterator[LogEntry]:
        transport = self._transport
        url = transport.config.base_url + container_path(container_id, "logs")
        budget = transport.config.max_retries if max_retries is None else max_retries
        request_timeout = transport.timeout(timeout, read=LONG_POLL_TIMEOUT if follow else None)
        next_offset = offset
        failures = 0
        while True:
            params: dict[str, str | int] = {
                "offset": next_offset,
                "follow": "true" if follow else "false",
            }
            response = await transport.send(
                "GET",
                url,
                params=params,
                timeout=request_timeout,
                max_retries=max_retries,
                stream=True,
            )
            try:
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    entry = decode_log_line(line)
                    if entry.offset < next_offset:
                        continue
                    next_offset = entry.offset + 1
                    failures = 0
                    yield entry
                return
            except httpx.RequestError as exc:
                if follow and isinstance(exc, httpx.ReadTimeout):
                    continue
                if failures >= budget or not transport.policy.is_retryable(exc):
                    raise map_transport_error(exc) from exc
                failures += 1
                pause = transport.policy.backoff(failures)
                log_retry("GET", url, describe_failure(exc), pause, failures + 1, budget + 1)
                await transport.sleep(pause)
            finally:
                await response.aclose()
