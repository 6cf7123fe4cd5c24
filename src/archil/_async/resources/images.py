"""``client.images``: container images built from Dockerfiles."""

from __future__ import annotations

from urllib.parse import quote

from typing_extensions import Unpack

from ..._errors import APITimeoutError
from ..._models import CreateImageRequest, Image
from ..._wire import RequestOptions, check_name, check_seconds, parse_model
from .._transport import AsyncTransport

__all__ = ["AsyncImages"]

MIN_POLL_INTERVAL = 0.5
MAX_POLL_INTERVAL = 5.0


class AsyncImages:
    """Images: built once per distinct Dockerfile, then reused."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def create(self, dockerfile: str, **options: Unpack[RequestOptions]) -> Image:
        """Build an image from Dockerfile text, or return the image already built from it."""
        request = CreateImageRequest(dockerfile=dockerfile)
        envelope = await self._transport.request_json(
            "POST", "/api/images", json=request.to_wire(), **options
        )
        return parse_model(Image, envelope.data, envelope.status_code)

    async def get(self, image_id: str, **options: Unpack[RequestOptions]) -> Image:
        """The image ``image_id`` and its build status."""
        path = "/api/images/" + quote(check_name(image_id, "image_id"), safe="")
        envelope = await self._transport.request_json("GET", path, **options)
        return parse_model(Image, envelope.data, envelope.status_code)

    async def wait(
        self, image_id: str, *, timeout: float | None = None, max_retries: int | None = None
    ) -> Image:
        """Poll until the image is ``ready`` or ``failed`` and return it.

        ``timeout`` bounds the whole wait (``None`` waits for ever); when it
        runs out, :class:`APITimeoutError` is raised.
        """
        check_name(image_id, "image_id")
        limit = check_seconds(timeout, "timeout")
        transport = self._transport
        deadline = None if limit is None else transport.clock() + limit
        interval = MIN_POLL_INTERVAL
        while True:
            if max_retries is None:
                image = await self.get(image_id)
            else:
                image = await self.get(image_id, max_retries=max_retries)
            if image.status != "building":
                return image
            now = transport.clock()
            if deadline is not None and now >= deadline:
                raise APITimeoutError(f"image {image_id} is still building after {limit:g} s")
            pause = interval if deadline is None else min(interval, deadline - now)
            await transport.sleep(pause)
            interval = min(interval * 1.5, MAX_POLL_INTERVAL)
