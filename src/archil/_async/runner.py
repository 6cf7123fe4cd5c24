"""Runs one function call or shell job in a container and cleans up after it.

The steps are sequential on purpose: upload the call, create the container,
follow its log stream to the end (the server closes it when the container
stops), read the final state, then fetch the result. Cleanup always runs:
on success, on error and on interruption, when the container is stopped
first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from .._callproto import (
    CallPaths,
    ContainerOptions,
    LogPrinter,
    bootstrap_command,
    decode_result,
    encode_call,
)
from .._compat import agather_bounded
from .._errors import ArchilError, ContainerError, ImageBuildError, NotFoundError
from .._models import ArchilMount, Container
from .client import AsyncArchil

__all__ = ["AsyncCallRunner"]

log = logging.getLogger("archil")


class AsyncCallRunner:
    """Runs calls on one client; ``map`` fans out with bounded concurrency."""

    def __init__(self, client: AsyncArchil, printer: LogPrinter | None = None) -> None:
        self._client = client
        self._printer = printer or LogPrinter()
        self._images: dict[str, str] = {}

    async def _image_id(self, dockerfile: str | None) -> str | None:
        if dockerfile is None:
            return None
        cached = self._images.get(dockerfile)
        if cached is not None:
            return cached
        image = await self._client.images.create(dockerfile)
        self._images[dockerfile] = image.image_id
        return image.image_id

    async def _create(
        self, opts: ContainerOptions, command: str, metadata: dict[str, str]
    ) -> Container:
        image_id = await self._image_id(opts.dockerfile)
        return await self._client.containers.create(
            archil_mount=ArchilMount(disk_id=opts.disk_id, env=opts.disk_env),
            additional_mounts=list(opts.additional_mounts),
            vcpu_count=opts.vcpu_count,
            mem_size_mib=opts.mem_size_mib,
            kernel_variant=opts.kernel_variant,
            image_id=image_id,
            command=command,
            env=dict(opts.env) or None,
            ports=list(opts.ports),
            metadata={**opts.metadata, **metadata} or None,
            timeout_seconds=opts.timeout_seconds,
        )

    async def _follow(self, container: Container, opts: ContainerOptions) -> tuple[Container, str]:
        """Stream the logs to the end, then return the final state and the output's tail."""
        tail: list[str] = []
        async for entry in self._client.containers.logs(container.container_id, follow=True):
            if entry.stream in ("stdout", "stderr", "build"):
                tail.append(entry.data)
                if len(tail) > 200:
                    del tail[:100]
            if opts.stream_logs:
                self._printer.write(entry.stream, entry.data)
        final = await self._client.containers.wait(container.container_id)
        text = "".join(tail)
        return final, "\n".join(text.splitlines()[-40:])

    async def _cleanup(self, container_id: str | None, interrupted: bool) -> None:
        if container_id is None:
            return
        try:
            if interrupted:
                await self._client.with_options(max_retries=1, timeout=10).containers.stop(
                    container_id
                )
            await self._client.containers.delete(container_id)
        except NotFoundError:
            pass
        except Exception as exc:
            log.warning("could not clean up container %s: %s", container_id, exc)

    async def _remove_call_files(self, disk_id: str, paths: CallPaths) -> None:
        for key in (paths.input_key, paths.output_key):
            try:
                await self._client.objects.delete(disk_id, key)
            except Exception as exc:
                log.debug("could not remove %s: %s", key, exc)

    async def _failure(self, final: Container, tail: str, what: str) -> ArchilError:
        """The error for a container that did not run to its end: a failed build or a failed container."""
        if final.status == "failed" and final.image_id:
            image = await self._client.images.get(final.image_id)
            if image.status == "failed":
                return ImageBuildError(
                    f"{what}: image {image.image_id} failed to build: {image.failure_reason}",
                    image_id=image.image_id,
                    logs=tail,
                )
        return _container_error(final, tail, what)

    async def call(
        self,
        opts: ContainerOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a container on the disk and return its value."""
        payload = encode_call(fn, args, kwargs)
        paths = CallPaths.new()
        name = getattr(fn, "__qualname__", "function")
        container_id: str | None = None
        interrupted = True
        try:
            await self._client.objects.put(opts.disk_id, paths.input_key, payload)
            container = await self._create(
                opts,
                bootstrap_command(paths),
                {"archil.function": name, "archil.call": paths.call_id},
            )
            container_id = container.container_id
            final, tail = await self._follow(container, opts)
            interrupted = False
            if final.status != "exited":
                raise await self._failure(final, tail, name)
            try:
                data = await self._client.objects.get(opts.disk_id, paths.output_key)
            except NotFoundError:
                raise _container_error(final, tail, f"{name} produced no result") from None
            return decode_result(data)
        finally:
            await self._cleanup(container_id, interrupted)
            await self._remove_call_files(opts.disk_id, paths)

    async def map(
        self,
        opts: ContainerOptions,
        fn: Callable[..., Any],
        inputs: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
        concurrency: int,
    ) -> list[Any]:
        """Run one call per input with at most ``concurrency`` at once; results in input order."""
        items = list(inputs)
        if items:
            await self._image_id(opts.dockerfile)

        async def one(item: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
            return await self.call(opts, fn, item[0], item[1])

        return [r async for r in agather_bounded(one, items, concurrency)]

    async def run(self, opts: ContainerOptions, command: str, name: str) -> int:
        """Run a shell command in a container; return 0 or raise :class:`ContainerError`."""
        container_id: str | None = None
        interrupted = True
        try:
            container = await self._create(opts, command, {"archil.job": name})
            container_id = container.container_id
            final, tail = await self._follow(container, opts)
            interrupted = False
            if final.status == "exited" and final.exit_code == 0:
                return 0
            raise await self._failure(final, tail, f"job {name}")
        finally:
            await self._cleanup(container_id, interrupted)


def _container_error(final: Container, tail: str, what: str) -> ContainerError:
    if final.status == "exited":
        msg = f"{what} exited with code {final.exit_code} in container {final.container_id}"
    elif final.status == "stopped":
        msg = f"{what}: container {final.container_id} was stopped"
    else:
        reason = final.failure_reason or "unknown reason"
        msg = f"{what}: container {final.container_id} failed: {reason}"
    return ContainerError(
        msg, container_id=final.container_id, exit_code=final.exit_code, logs=tail
    )
