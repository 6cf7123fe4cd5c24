"""The Archil client."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

import httpx
from typing_extensions import Self

from .._config import LONG_POLL_TIMEOUT, ClientConfig, resolve_config
from .._models import ExecMount, ExecRequest, ExecResult
from .._retry import EXEC_RETRY_STATUSES
from .._wire import parse_model
from ._transport import AsyncTransport, HTTPPool
from .resources import (
    AsyncContainers,
    AsyncDisks,
    AsyncImages,
    AsyncObjects,
    AsyncSandboxes,
    AsyncTokens,
)

__all__ = ["AsyncArchil"]


class AsyncArchil:
    """A client of the Archil control plane.

    Args:
        api_key: the API key; defaults to ``ARCHIL_API_KEY``. With neither a key
            nor a ``base_url``, an embedded local control plane is started.
        region: the region (``ARCHIL_REGION``, default ``aws-us-east-1``).
        base_url: the control plane's URL, overriding the region (``ARCHIL_BASE_URL``).
        timeout: seconds allowed for each request (default 30).
        max_retries: how many times a transient failure is retried (default 3).
        http_client: an ``httpx`` client to send requests with; it is not
            closed by this client.

    Attributes:
        containers: create, inspect, wait for, stream the logs of, stop and delete containers.
        disks: create, list, inspect, share and delete disks, and run commands on them.
        tokens: list, create and revoke API keys.
        images: build sandbox images from OCI references (and container images from Dockerfiles).
        objects: read and write files on a disk through the object gateway.
        sandboxes: create, list and find sandboxes, and run processes in them.
    """

    containers: AsyncContainers
    disks: AsyncDisks
    tokens: AsyncTokens
    images: AsyncImages
    objects: AsyncObjects
    sandboxes: AsyncSandboxes

    def __init__(
        self,
        api_key: str | None = None,
        *,
        region: str | None = None,
        base_url: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        config = resolve_config(
            api_key=api_key,
            region=region,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )
        self._setup(AsyncTransport(config, pool=HTTPPool(http_client)))

    def _setup(self, transport: AsyncTransport) -> None:
        self._transport = transport
        self.disks = AsyncDisks(transport)
        self.tokens = AsyncTokens(transport)
        self.images = AsyncImages(transport)
        self.objects = AsyncObjects(transport)
        self.sandboxes = AsyncSandboxes(transport)
        self.containers = AsyncContainers(transport, self.sandboxes, self.objects)

    @classmethod
    def _from_transport(cls, transport: AsyncTransport) -> Self:
        client = cls.__new__(cls)
        client._setup(transport)
        return client

    @classmethod
    def from_config(
        cls, config: ClientConfig, *, http_client: httpx.AsyncClient | None = None
    ) -> Self:
        """A client for an already resolved :class:`ClientConfig`."""
        return cls._from_transport(AsyncTransport(config, pool=HTTPPool(http_client)))

    @property
    def config(self) -> ClientConfig:
        """The resolved configuration (base URLs, region, timeout, retries; the key stays secret)."""
        return self._transport.config

    def with_options(self, *, timeout: float | None = None, max_retries: int | None = None) -> Self:
        """A client with another timeout and/or retry budget, sharing this one's connections.

        The copy borrows the connection pool: closing it leaves this client usable.
        """
        config = self._transport.config.with_options(timeout=timeout, max_retries=max_retries)
        return self._from_transport(self._transport.derive(config))

    async def exec(
        self,
        disks: Mapping[str, str | ExecMount],
        command: str,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> ExecResult:
        """Run a shell command in a short-lived container with several disks mounted.

        ``disks`` maps a relative path under ``/mnt/archil`` to a disk id or an
        :class:`ExecMount` (a subdirectory, read-only). ``timeout`` bounds the
        wait for the answer (5 minutes by default); a command that runs out of
        server time answers 504, which is not retried.
        """
        request = ExecRequest(disks=dict(disks), command=command)
        transport = self._transport
        envelope = await transport.request_json(
            "POST",
            "/api/exec",
            json=request.to_wire(),
            timeout=transport.timeout(timeout, read=None if timeout else LONG_POLL_TIMEOUT),
            max_retries=max_retries,
            retry_statuses=EXEC_RETRY_STATUSES,
        )
        return parse_model(ExecResult, envelope.data, envelope.status_code)

    async def flush(self) -> None:
        """Wait for the background work of finished calls: the stop and delete of their sandboxes.

        ``fn.remote()`` returns as soon as its value is back and leaves that cleanup
        to the background; closing the client (and the end of the process, for the
        blocking client) waits for it too.
        """
        await self._transport.background.drain()

    async def aclose(self) -> None:
        """Finish the background work and close the client's connections.

        A client made by ``with_options`` borrows them: closing it closes nothing.
        """
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._transport.config.base_url!r})"
