"""Starts the sandboxes that run calls and jobs, and follows their processes.

A call's sandbox is a fork of the stopped sandbox that holds its image's
preparation (made once, on first use), or a new sandbox from the function's
template when the image has no steps. The bootstrap then runs as the sandbox's
process. :class:`AsyncLauncher` does these steps and follows a process to its
``exit`` event; :class:`~archil._async.runner.AsyncCallRunner` builds the call
protocol on it.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .._callproto import (
    PLANS,
    CallAborted,
    CallPaths,
    CloudpickleLib,
    FunctionSpec,
    LogPrinter,
    OutputTail,
    bootstrap_command,
)
from .._compat import AConcurrent, afinish
from .._errors import (
    APIError,
    ConflictError,
    FunctionTimeoutError,
    ImageBuildError,
    NotFoundError,
    SandboxError,
)
from .._models import SandboxData
from .._process import ProcessResult
from .client import AsyncArchil
from .resources.sandbox_handle import discard_sandbox
from .resources.sandboxes import AsyncProcess, AsyncSandbox

__all__ = ["CLOUDPICKLE", "AsyncLauncher", "ended"]

log = logging.getLogger("archil")

CLOUDPICKLE = CloudpickleLib()
_PREPARE_POLL = 0.5
_PREPARING = frozenset({"pending", "running", "stopping"})
_WATCH_POLL = 0.5


class AsyncLauncher:
    """Prepares images, starts sandboxes and follows processes for one client.

    ``printer`` prints the output of processes that stream their logs; ``abort``,
    once set, stops every process followed here (a map that was abandoned).
    """

    def __init__(
        self,
        client: AsyncArchil,
        printer: LogPrinter | None = None,
        abort: threading.Event | None = None,
    ) -> None:
        self._client = client
        self._printer = printer
        self._abort = abort

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
        lib = CLOUDPICKLE
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
        """The stopped sandbox holding the image's preparation (made if needed); None if none.

        Preparations are named ``<prepared_name>-<8 hex>``, one name per attempt, so a
        create whose answer was lost is found again by its own name; when several
        callers prepare at once, the oldest preparation wins and the others wait for it.
        """
        plan = spec.image
        if plan.prepare is None:
            return None
        base = spec.prepared_name()
        cached = PLANS.get(self._base_url, "prepared", base)
        if isinstance(cached, SandboxData):
            return cached
        while True:
            found = await self._preparations(spec.disk_id, base)
            ready = [s for s in found if s.status == "stopped" and s.checkpoint]
            if ready:
                best = min(ready, key=_age)
                PLANS.put(self._base_url, "prepared", base, best.data)
                return best.data
            busy = [s for s in found if s.status in _PREPARING]
            for sandbox in found:
                if sandbox not in busy and sandbox.status not in ("deleting", "deleted"):
                    await discard_sandbox(sandbox)
            if busy:
                await self._client._transport.sleep(_PREPARE_POLL)
                continue
            made = await self._prepare(spec, base)
            if made is not None:
                PLANS.put(self._base_url, "prepared", base, made.data)
                return made.data

    async def _preparations(self, disk_id: str, base: str) -> list[AsyncSandbox]:
        """The sandboxes on the app's disk that hold, or make, a preparation named after ``base``."""
        return [
            s
            for s in await self._client.sandboxes.list(disk_id=disk_id)
            if s.name == base or s.name.startswith(base + "-")
        ]

    async def _upload_trees(self, spec: FunctionSpec) -> None:
        """Put the image's local files on the disk (once per content: a marker says done)."""
        objects = self._client.objects
        for tree in spec.image.uploads:
            try:
                await objects.head(spec.disk_id, tree.marker_key)
                continue
            except NotFoundError:
                pass
            for rel, local in tree.files:
                await objects.upload_file(spec.disk_id, f"{tree.prefix}/tree/{rel}", local)
            await objects.put(spec.disk_id, tree.marker_key, b"")

    async def _prepare(self, spec: FunctionSpec, base: str) -> AsyncSandbox | None:
        """Run the image's steps in a new sandbox and stop it; ``None`` if an older one runs."""
        await self._upload_trees(spec)
        image_id = await self._image_id(spec.image.base)
        name = f"{base}-{secrets.token_hex(4)}"
        template = spec.template.model_copy(update={"name": name, "image_id": image_id})
        sandbox = await self._client.sandboxes.create_from(template, wait=True, unique_name=True)
        rivals = [
            s
            for s in await self._preparations(spec.disk_id, base)
            if s.id != sandbox.id
            and (s.status in _PREPARING or (s.status == "stopped" and s.checkpoint))
        ]
        if any(_age(s) < _age(sandbox) for s in rivals):
            await discard_sandbox(sandbox)
            return None
        printer = LogPrinter(prefix="[build] ") if spec.stream_logs else None
        try:
            result, tail = await self._follow(
                sandbox, spec.image.prepare or "", {}, "/", spec.startup_timeout, printer
            )
        except BaseException:
            await discard_sandbox(sandbox)
            raise
        if result.status == "timed_out":
            await discard_sandbox(sandbox)
            raise FunctionTimeoutError(
                f"preparing the image {spec.image.base} took longer than "
                f"startup_timeout={spec.startup_timeout} s",
                limit="startup_timeout",
                seconds=float(spec.startup_timeout or 0),
            )
        if not result.ok:
            await discard_sandbox(sandbox)
            raise ImageBuildError(
                f"preparing the image {spec.image.base} failed: the steps "
                f"{ended(result)} in sandbox {sandbox.id}",
                image_id=image_id,
                logs=tail,
            )
        return await sandbox.stop(wait=True)

    async def _sandbox(self, spec: FunctionSpec, key: str) -> AsyncSandbox:
        """A running sandbox for one call: a fork of the image's preparation, or a new one.

        ``key`` makes its name (``archil-call-<key>``): one per call and attempt.
        """
        name = f"archil-call-{key}"
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
            return await self._sandbox(spec, key)

    async def _startup(self, spec: FunctionSpec, key: str) -> AsyncSandbox:
        """A running sandbox for one attempt, within the function's ``startup_timeout``."""
        limit = spec.startup_timeout
        began = self._client._transport.clock()
        sandbox = await self._sandbox(spec, key)
        if limit is not None and self._client._transport.clock() - began > limit:
            await discard_sandbox(sandbox)
            raise FunctionTimeoutError(
                f"preparing the image and starting the sandbox took longer than "
                f"startup_timeout={limit} s",
                limit="startup_timeout",
                seconds=float(limit),
            )
        return sandbox

    async def _launch(
        self,
        spec: FunctionSpec,
        paths: CallPaths,
        lib: str,
        attempt: int,
        *,
        detached: bool = False,
        ready: AConcurrent[Any] | None = None,
    ) -> tuple[AsyncSandbox, AsyncProcess]:
        """A sandbox running the bootstrap for ``paths`` (whose input is on the disk).

        ``detached``: the call outlives this connection (a spawned call), so the sandbox
        must not be paused for want of a connection. ``ready``: joined once the sandbox
        runs and before the bootstrap starts (the input's upload, made meanwhile).
        """
        key = paths.call_id[:20] if attempt == 1 else f"{paths.call_id[:20]}-{attempt}"
        return await self._start_bootstrap(
            spec,
            key,
            bootstrap_command(paths),
            lib,
            timeout=spec.timeout,
            detached=detached,
            ready=ready,
        )

    async def _start_bootstrap(
        self,
        spec: FunctionSpec,
        key: str,
        command: str,
        lib: str,
        *,
        timeout: int | None,
        detached: bool = False,
        ready: AConcurrent[Any] | None = None,
    ) -> tuple[AsyncSandbox, AsyncProcess]:
        """A new sandbox (named after ``key``) running ``command``, a bootstrap; deleted on failure.

        ``ready`` is joined between the sandbox's start and the command's.
        """
        sandbox = await self._startup(spec, key)
        try:
            if ready is not None:
                await ready.join()
            if detached:
                await sandbox.set_timeout(idle_ttl_seconds=0)
            process = await sandbox.run(
                command,
                env=spec.process_env(lib),
                cwd=spec.cwd,
                timeout_seconds=timeout,
                collect_output=False,
            )
        except ConflictError as exc:
            # The sandbox stopped between its start and the process's (stopped by someone,
            # or its control plane restarted): nothing of the call ran, so it may run again.
            await discard_sandbox(sandbox)
            raise SandboxError.stopped(
                sandbox.id, "before the call's process started", exc
            ) from exc
        except BaseException:
            await discard_sandbox(sandbox)
            raise
        return sandbox, process

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
        result = await self._watch(process, printer, tail)
        assert result is not None
        return result, tail.text()

    async def _watch(
        self,
        process: AsyncProcess,
        printer: LogPrinter | None,
        tail: OutputTail,
        deadline: float | None = None,
        *,
        kill: bool = True,
    ) -> ProcessResult | None:
        """Follow ``process`` to its exit (``None`` if ``deadline`` passes first), then detach.

        The process is killed when this is interrupted (``kill``), or when the map it
        belongs to was abandoned (:class:`CallAborted`, checked every half second).
        Raises :class:`SandboxError` when the sandbox stops under the process.
        """
        clock = self._client._transport.clock
        try:
            while process.result is None:
                self._check_abort()
                idle = _WATCH_POLL
                if deadline is not None:
                    left = deadline - clock()
                    if left <= 0:
                        return None
                    idle = min(idle, left)
                async for out in process.available(idle):
                    tail.feed(out.data)
                    if printer is not None:
                        printer.write(out.stream, out.data)
                    self._check_abort()
            return process.result
        except ConflictError as exc:
            # Its connection answers 409: the sandbox is not running (stopped by someone,
            # or its control plane restarted), and the process cannot be followed.
            raise SandboxError.stopped(
                process.sandbox.id, f"while process {process.id} ran", exc
            ) from exc
        except BaseException:
            if kill:
                try:
                    await process.kill()
                except Exception as exc:
                    log.debug("could not kill process %s: %s", process.id, exc)
            raise
        finally:
            await process.close()

    def _check_abort(self) -> None:
        if self._abort is not None and self._abort.is_set():
            raise CallAborted("the map this call belongs to was stopped")

    def _printer_for(self, spec: FunctionSpec) -> LogPrinter | None:
        if not spec.stream_logs:
            return None
        return self._printer or LogPrinter()

    async def _remove_keys(self, disk_id: str, keys: Iterable[str]) -> None:
        """Remove a call's files, in one request (best effort: a failure is logged at DEBUG).

        It goes on if its caller is cancelled meanwhile (see :func:`afinish`).
        """
        await afinish(functools.partial(self._remove_now, disk_id, list(keys)))

    async def _remove_now(self, disk_id: str, wanted: list[str]) -> None:
        objects = self._client.objects
        try:
            if len(wanted) == 1:
                await objects.delete(disk_id, wanted[0])
                return
            result = await objects.delete_many(disk_id, wanted, quiet=True)
        except NotFoundError:
            return
        except APIError as exc:
            log.debug("could not remove %s: %s", ", ".join(wanted), exc)
            return
        for error in result.errors:
            log.debug("could not remove %s: %s", error.key, error.message)


def _age(sandbox: AsyncSandbox) -> tuple[datetime, str]:
    return sandbox.created_at, sandbox.name


def ended(result: ProcessResult) -> str:
    """How a process ended, for an error message ("exited with code 1", "timed out")."""
    if result.status == "completed":
        return f"exited with code {result.exit_code}"
    reason = f": {result.exit_reason}" if result.exit_reason else ""
    return f"{result.status.replace('_', ' ')}{reason}"
