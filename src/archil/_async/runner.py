"""Runs function calls and shell jobs in sandboxes, and cleans up after them.

One call: the payload goes to the app's disk (``.archil/calls/<id>/``), a
sandbox is created from the function's template (or forked from the stopped
sandbox that holds its image's preparation), the bootstrap runs as the
sandbox's process while its output streams to the terminal, then the result is
read back from the disk. The steps are sequential on purpose (see DESIGN
section 3): one loop follows the process to its ``exit`` event. Cleanup always
runs, on success, on error and on interruption (when the process is killed
first): the sandbox is stopped and deleted and the call's files removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from .._callproto import (
    PLANS,
    CallPaths,
    CloudpickleLib,
    FunctionSpec,
    LogPrinter,
    OutputTail,
    bootstrap_command,
    decode_result,
    encode_call,
)
from .._compat import agather_bounded
from .._errors import (
    APIError,
    ArchilError,
    ConflictError,
    ContainerError,
    ImageBuildError,
    NotFoundError,
)
from .._models import SandboxData
from .._process import ProcessResult
from .client import AsyncArchil
from .resources.sandboxes import AsyncSandbox

__all__ = ["AsyncCallRunner"]

log = logging.getLogger("archil")

_CLOUDPICKLE = CloudpickleLib()
_PREPARE_POLL = 0.5


class AsyncCallRunner:
    """Runs calls on one client; ``map`` fans out with bounded concurrency."""

    def __init__(self, client: AsyncArchil, printer: LogPrinter | None = None) -> None:
        self._client = client
        self._printer = printer

    @property
    def _base_url(self) -> str:
        return self._client.config.base_url

    # -- what every call needs once ------------------------------------------------------

    async def _image_id(self, source: str) -> str:
        cached = PLANS.get(self._base_url, "image", source)
        if cached is not None:
            return str(cached)
        image = await self._client.images.build(source)
        PLANS.put(self._base_url, "image", source, image.image_id)
        return image.image_id

    async def _cloudpickle(self, disk_id: str) -> str:
        """The guest path of this process's cloudpickle on the disk (written once)."""
        lib = _CLOUDPICKLE
        if PLANS.get(self._base_url, "cloudpickle", disk_id) is None:
            objects = self._client.objects
            try:
                await objects.head(disk_id, lib.marker_key)
            except NotFoundError:
                for key, data in lib.files:
                    await objects.put(disk_id, key, data)
                await objects.put(disk_id, lib.marker_key, b"")
            PLANS.put(self._base_url, "cloudpickle", disk_id, True)
        return lib.guest_path

    async def _prepared(self, spec: FunctionSpec) -> SandboxData | None:
        """The stopped sandbox holding the image's preparation (made if needed); None if none."""
        plan = spec.image
        if plan.prepare is None:
            return None
        name = spec.prepared_name()
        cached = PLANS.get(self._base_url, "prepared", name)
        if isinstance(cached, SandboxData):
            return cached
        sandboxes = self._client.sandboxes
        while True:
            found = await sandboxes.find(name)
            if found is None:
                found = await self._prepare(spec, name)
                if found is None:
                    continue
            if found.status == "stopped" and found.checkpoint:
                PLANS.put(self._base_url, "prepared", name, found.data)
                return found.data
            if found.status in ("pending", "running", "stopping"):
                await self._client._transport.sleep(_PREPARE_POLL)
                continue
            await self._discard(found)

    async def _prepare(self, spec: FunctionSpec, name: str) -> AsyncSandbox | None:
        """Run the image's steps in a new sandbox and stop it; ``None`` if another caller won."""
        image_id = await self._image_id(spec.image.base)
        template = spec.template.model_copy(update={"name": name, "image_id": image_id})
        try:
            sandbox = await self._client.sandboxes.create_from(template, wait=True)
        except ConflictError:
            return None
        printer = LogPrinter(prefix="[build] ") if spec.stream_logs else None
        try:
            result, tail = await self._follow(
                sandbox, spec.image.prepare or "", {}, "/", None, printer
            )
        except BaseException:
            await self._discard(sandbox)
            raise
        if not result.ok:
            await self._discard(sandbox)
            raise ImageBuildError(
                f"preparing the image {spec.image.base} failed: the steps "
                f"{_ended(result)} in sandbox {sandbox.id}",
                image_id=image_id,
                logs=tail,
            )
        return await sandbox.stop(wait=True)

    async def _discard(self, sandbox: AsyncSandbox) -> None:
        """Stop (idempotent) and delete a sandbox, tolerating one that is already gone."""
        try:
            if sandbox.status not in ("stopped", "exited", "failed"):
                await sandbox.stop(wait=True)
            await sandbox.delete()
        except NotFoundError:
            pass
        except ArchilError as exc:
            log.warning("could not clean up sandbox %s: %s", sandbox.id, exc)

    async def _sandbox(self, spec: FunctionSpec, call_id: str) -> AsyncSandbox:
        """A running sandbox for one call: a fork of the image's preparation, or a new one."""
        name = f"archil-call-{call_id[:20]}"
        prepared = await self._prepared(spec)
        if prepared is None:
            image_id = await self._image_id(spec.image.base)
            template = spec.template.model_copy(update={"name": name, "image_id": image_id})
            return await self._client.sandboxes.create_from(template, wait=True, unique_name=True)
        source = AsyncSandbox(self._client._transport, prepared)
        try:
            return await source.fork(
                name=name, checkpoint=prepared.checkpoint, wait=True, unique_name=True
            )
        except (NotFoundError, ConflictError):
            PLANS.drop(self._base_url, "prepared", spec.prepared_name())
            return await self._sandbox(spec, call_id)

    # -- following a process ---------------------------------------------------------------

    async def _follow(
        self,
        sandbox: AsyncSandbox,
        command: str,
        env: dict[str, str],
        cwd: str,
        timeout: int | None,
        printer: LogPrinter | None,
    ) -> tuple[ProcessResult, str]:
        """Run ``command`` in ``sandbox`` to its end, printing its output; its result and tail."""
        tail = OutputTail()
        process = await sandbox.run(
            command, env=env, cwd=cwd, timeout_seconds=timeout, collect_output=False
        )
        try:
            async for out in process:
                tail.feed(out.data)
                if printer is not None:
                    printer.write(out.stream, out.data)
            result = await process.wait()
        except BaseException:
            try:
                await process.kill()
            except Exception as exc:
                log.debug("could not kill process %s: %s", process.id, exc)
            raise
        finally:
            await process.close()
        return result, tail.text()

    # -- calls ------------------------------------------------------------------------------

    async def call(
        self,
        spec: FunctionSpec,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a sandbox on the app's disk and return its value.

        Once the process has ended, the sandbox's stop and delete and the removal of
        the result are left to the client's background work; if the call is
        interrupted or fails on the way, they are done before it returns.
        """
        payload = encode_call(fn, args, kwargs)
        paths = CallPaths.new()
        what = getattr(fn, "__qualname__", "function")
        disk = spec.disk_id
        sandbox: AsyncSandbox | None = None
        finished = False
        try:
            lib = await self._cloudpickle(disk)
            await self._client.objects.put(disk, paths.input_key, payload)
            sandbox = await self._sandbox(spec, paths.call_id)
            env = {**spec.env, "PYTHONPATH": lib}
            result, tail = await self._follow(
                sandbox,
                bootstrap_command(paths),
                env,
                spec.cwd,
                spec.timeout,
                self._printer_for(spec),
            )
            finished = True
            if not result.ok:
                raise _container_error(result, tail, what, sandbox.id)
            try:
                data = await self._client.objects.get(disk, paths.output_key)
            except NotFoundError:
                raise _container_error(
                    result, tail, f"{what} produced no result", sandbox.id
                ) from None
            return decode_result(data)
        finally:
            if finished and sandbox is not None:
                done = sandbox
                self._client._transport.background.spawn(
                    lambda: self._cleanup(done, disk, paths, ran=True)
                )
            else:
                await self._cleanup(sandbox, disk, paths, ran=sandbox is not None)

    async def _cleanup(
        self, sandbox: AsyncSandbox | None, disk: str, paths: CallPaths, *, ran: bool
    ) -> None:
        if sandbox is not None:
            await self._discard(sandbox)
        await self._remove_call_files(disk, paths, ran=ran)

    def _printer_for(self, spec: FunctionSpec) -> LogPrinter | None:
        if not spec.stream_logs:
            return None
        return self._printer or LogPrinter()

    async def _remove_call_files(self, disk_id: str, paths: CallPaths, *, ran: bool) -> None:
        """The call's files: the bootstrap removes its input once read, the caller the rest."""
        keys = (paths.output_key,) if ran else (paths.input_key,)
        for key in keys:
            try:
                await self._client.objects.delete(disk_id, key)
            except NotFoundError:
                pass
            except APIError as exc:
                log.debug("could not remove %s: %s", key, exc)

    async def map(
        self,
        spec: FunctionSpec,
        fn: Callable[..., Any],
        inputs: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
        concurrency: int,
    ) -> list[Any]:
        """Run one call per input with at most ``concurrency`` at once; results in input order."""
        items = list(inputs)
        if items:
            await self._cloudpickle(spec.disk_id)
            await self._prepared(spec) if spec.image.prepare else await self._image_id(
                spec.image.base
            )

        async def one(item: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
            return await self.call(spec, fn, item[0], item[1])

        return [r async for r in agather_bounded(one, items, concurrency)]

    async def run(self, spec: FunctionSpec, command: str, name: str) -> int:
        """Run a shell command in a sandbox; return 0 or raise :class:`ContainerError`.

        As for :meth:`call`, the cleanup of a job that ran to its end is background work.
        """
        sandbox: AsyncSandbox | None = None
        finished = False
        try:
            sandbox = await self._sandbox(spec, CallPaths.new().call_id)
            result, tail = await self._follow(
                sandbox, command, dict(spec.env), spec.cwd, spec.timeout, self._printer_for(spec)
            )
            finished = True
            if result.ok:
                return 0
            raise _container_error(result, tail, f"job {name}", sandbox.id)
        finally:
            if sandbox is not None:
                done = sandbox
                if finished:
                    self._client._transport.background.spawn(lambda: self._discard(done))
                else:
                    await self._discard(done)


def _ended(result: ProcessResult) -> str:
    if result.status == "completed":
        return f"exited with code {result.exit_code}"
    reason = f": {result.exit_reason}" if result.exit_reason else ""
    return f"{result.status.replace('_', ' ')}{reason}"


def _container_error(
    result: ProcessResult, tail: str, what: str, sandbox_id: str
) -> ContainerError:
    return ContainerError(
        f"{what} {_ended(result)} (sandbox {sandbox_id})",
        container_id=sandbox_id,
        exit_code=result.exit_code,
        logs=tail,
    )
