"""``client.images``: sandbox images built from OCI references."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Mapping
from urllib.parse import quote

from typing_extensions import Unpack

from ..._errors import APIStatusError, APITimeoutError, ArchilError, ImageBuildError
from ..._models import BuildImageRequest, RegistryAuth, SandboxImage
from ..._wire import RequestOptions, check_name, check_seconds, parse_model
from .._transport import AsyncTransport

__all__ = ["AsyncImages"]

logger = logging.getLogger("archil")

DEFAULT_BUILD_TIMEOUT = 1800.0
BUILD_FIRST_POLL = 0.1
BUILD_MAX_POLL = 2.0
MAX_INTERRUPTED_RETRIES = 3
REQUEST_AGAIN_AFTER = 120.0
"""A build still ``building`` this long after it was requested is requested again:
that joins a healthy build and restarts one whose builder went away."""


def _image_path(image_id: str) -> str:
    return "/api/images/" + quote(check_name(image_id, "image_id"), safe="")


def _build_error(image: SandboxImage, source: str) -> ImageBuildError:
    reason = image.failure_reason or "unknown"
    text = f"the image {source!r} could not be built ({reason})"
    if image.failure_message:
        text += f": {image.failure_message}"
    return ImageBuildError(text, image_id=image.image_id)


class AsyncImages:
    """Images: sandbox images built from OCI references (:meth:`build`), built once and reused."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def build(
        self,
        source: str,
        *,
        registry_auth: RegistryAuth | Mapping[str, str] | None = None,
        timeout: float = DEFAULT_BUILD_TIMEOUT,
        max_retries: int | None = None,
    ) -> SandboxImage:
        """Build a sandbox image from the OCI reference ``source`` and wait until it is ready.

        The build is requested with ``POST /api/images`` (an image already built
        comes back at once, a build already running is joined) and polled with
        backoff. A build that was ``interrupted`` is requested again, up to 3 times.

        Args:
            source: an OCI reference such as ``python:3.11-slim``.
            registry_auth: credentials for a private registry (sent, never logged or shown).
            timeout: seconds to wait for the whole build (30 minutes by default).
            max_retries: retries of each request (the client's by default).

        Raises:
            ValueError: a bad ``source`` or ``timeout``, before anything is sent.
            ImageBuildError: the build failed (the message names the source, the
                failure reason and the server's explanation when it gave one).
            APITimeoutError: the image was not ready within ``timeout``.
        """
        auth = (
            registry_auth
            if registry_auth is None or isinstance(registry_auth, RegistryAuth)
            else RegistryAuth.model_validate(dict(registry_auth))
        )
        request = BuildImageRequest(source=source, registry_auth=auth)
        limit = check_seconds(timeout, "timeout")
        assert limit is not None
        transport = self._transport
        clock = transport.clock
        deadline = clock() + limit
        image = await self._request_build(request, max_retries)
        requested_at = clock()
        interrupted = 0
        interval = BUILD_FIRST_POLL
        while True:
            if image.status == "ready":
                return image
            if image.status == "failed":
                if image.failure_reason != "interrupted" or interrupted >= MAX_INTERRUPTED_RETRIES:
                    raise _build_error(image, source)
                interrupted += 1
                logger.info(
                    "the build of %s was interrupted; requesting it again (%d of %d)",
                    source,
                    interrupted,
                    MAX_INTERRUPTED_RETRIES,
                )
                image = await self._request_build(request, max_retries)
                requested_at = clock()
                continue
            now = clock()
            if now >= deadline:
                raise APITimeoutError(
                    f"the image {source!r} ({image.image_id}) is still building after {limit:g} s"
                )
            await transport.sleep(min(interval, deadline - now))
            interval = min(interval * 2, BUILD_MAX_POLL)
            image = await self._get_sandbox_image(image.image_id, max_retries)
            if image.status == "building" and clock() - requested_at >= REQUEST_AGAIN_AFTER:
                image = await self._request_build(request, max_retries)
                requested_at = clock()

    async def _request_build(
        self, request: BuildImageRequest, max_retries: int | None
    ) -> SandboxImage:
        envelope = await self._transport.request_json(
            "POST", "/api/images", json=request.to_wire(), max_retries=max_retries
        )
        return parse_model(SandboxImage, envelope.data, envelope.status_code)

    async def _get_sandbox_image(self, image_id: str, max_retries: int | None) -> SandboxImage:
        envelope = await self._transport.request_json(
            "GET", _image_path(image_id), max_retries=max_retries
        )
        return parse_model(SandboxImage, envelope.data, envelope.status_code)

    async def get(self, image_id: str, **options: Unpack[RequestOptions]) -> SandboxImage:
        """The image ``image_id`` and its build status (:class:`NotFoundError` if there is none)."""
        envelope = await self._transport.request_json("GET", _image_path(image_id), **options)
        return parse_model(SandboxImage, envelope.data, envelope.status_code)

    async def list(self, **options: Unpack[RequestOptions]) -> builtins.list[SandboxImage]:
        """Every image requested on this control plane, oldest first.

        ``GET /api/images`` is an archil extension that the local control plane
        offers; on a control plane without it this raises :class:`ArchilError`
        saying so.
        """
        try:
            envelope = await self._transport.request_json("GET", "/api/images", **options)
        except APIStatusError as exc:
            if exc.status_code in (404, 405):
                raise ArchilError(
                    "this control plane does not list images (GET /api/images is an "
                    "archil extension of the local control plane); get one by id instead"
                ) from None
            raise
        data = envelope.data if isinstance(envelope.data, dict) else {}
        return [
            parse_model(SandboxImage, item, envelope.status_code)
            for item in data.get("images") or []
        ]
