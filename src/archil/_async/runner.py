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

import contextlib
import functools
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from .._callproto import (
    PLANS,
    REMOTE_ENV,
    CallAborted,
    CallPaths,
    CallRecord,
    CloudpickleLib,
    FunctionSpec,
    LogPrinter,
    OutputTail,
    bootstrap_command,
    decode_result,
    encode_call,
)
from .._compat import AConcurrent, agather_bounded
from .._errors import (
    APIError,
    ArchilError,
    ConflictError,
    ContainerError,
    FunctionCallCancelledError,
    FunctionTimeoutError,
    ImageBuildError,
    NotFoundError,
    ProcessError,
    SandboxError,
)
from .._models import SandboxData
from .._process import ProcessResult
from .._secrets import merged_env
from .client import AsyncArchil
from .resources.sandbox_handle import discard_sandbox
from .resources.sandboxes import AsyncProcess, AsyncSandbox
from .standby import AsyncStandbys, handover

__all__ = ["AsyncCallRunner"]

log = logging.getLogger("archil")

_CLOUDPICKLE = CloudpickleLib()
_PREPARE_POLL = 0.5
_PREPARING = frozenset({"pending", "running", "stopping"})
_WATCH_POLL = 0.5


class AsyncCallRunner:
    """Runs calls on one client; ``map`` fans out with bounded concurrency."""

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
                f"{_ended(result)} in sandbox {sandbox.id}",
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
            raise SandboxError(
                f"sandbox {sandbox.id} stopped before the call's process started: {exc.message}",
                sandbox_id=sandbox.id,
                exit_reason=exc.message,
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
        resend: str | None = None,
    ) -> ProcessResult | None:
        """Follow ``process`` to its exit (``None`` if ``deadline`` passes first), then detach.

        The process is killed when this is interrupted (``kill``), or when the map it
        belongs to was abandoned (:class:`CallAborted`, checked every half second).
        ``resend`` is sent to its standard input again after each new connection
        (a hand-over line that a dropped connection may have lost).
        """
        clock = self._client._transport.clock
        attachments = process.attachments
        try:
            while process.result is None:
                if resend is not None and process.attachments != attachments:
                    attachments = process.attachments
                    await self._resend(process, resend)
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
        except BaseException:
            if kill:
                try:
                    await process.kill()
                except Exception as exc:
                    log.debug("could not kill process %s: %s", process.id, exc)
            raise
        finally:
            await process.close()

    @staticmethod
    async def _resend(process: AsyncProcess, line: str) -> None:
        try:
            await process.send_input(line)
        except ArchilError as exc:
            log.debug("could not send to process %s again: %s", process.id, exc)

    def _check_abort(self) -> None:
        if self._abort is not None and self._abort.is_set():
            raise CallAborted("the map this call belongs to was stopped")

    async def _outcome(
        self,
        spec: FunctionSpec | None,
        disk: str,
        paths: CallPaths,
        result: ProcessResult | None,
        tail: str,
        what: str,
        sandbox_id: str,
    ) -> Any:
        """The value of an attempt that ended (``result`` None: its sandbox is gone), or raise."""
        if spec is not None:
            tail = spec.redact(tail)
        if result is not None and result.status == "timed_out":
            limit = spec.timeout if spec is not None and spec.timeout else 0
            raise FunctionTimeoutError(
                f"{what} went past its timeout={limit} s and was killed (sandbox {sandbox_id})",
                limit="timeout",
                seconds=float(limit),
            )
        if result is not None and not result.ok:
            raise _container_error(result, tail, what, sandbox_id)
        try:
            data = await self._client.objects.get(disk, paths.output_key)
        except NotFoundError:
            if result is None:
                raise ContainerError(
                    f"{what}: its sandbox {sandbox_id} is gone and it left no result",
                    container_id=sandbox_id,
                ) from None
            raise _container_error(result, tail, f"{what} produced no result", sandbox_id) from None
        return decode_result(data)

    async def _retry_or_raise(
        self, spec: FunctionSpec | None, exc: Exception, attempt: int, what: str
    ) -> None:
        """Wait before the next attempt after ``exc``; raise it when none is left."""
        max_attempts = spec.max_attempts if spec is not None else 1
        if isinstance(exc, APIError) or spec is None or spec.retries is None:
            _note_attempts(exc, attempt, max_attempts)
            raise exc
        if attempt >= max_attempts:
            _note_attempts(exc, attempt, max_attempts)
            raise exc
        delay = spec.retries.delay(attempt)
        log.warning(
            "%s: attempt %d of %d failed (%s); retrying in %.1f s",
            what,
            attempt,
            max_attempts,
            spec.redact(_reason(exc)),
            delay,
        )
        await self._client._transport.sleep(delay)

    # -- calls ------------------------------------------------------------------------------

    async def call(
        self,
        spec: FunctionSpec,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        standbys: AsyncStandbys | None = None,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a sandbox on the app's disk and return its value.

        A failed attempt is run again in a new sandbox as the function's ``retries``
        say. Once an attempt's process has ended, the sandbox's stop and delete (and
        the removal of the call's files) are left to the client's background work;
        if the call is interrupted on the way, they are done before it returns.

        ``standbys`` (in a ``map``): the first attempt takes a sandbox started ahead
        when one is ready, and once the function runs, one is started for the next
        input. Its ``timeout`` is then counted here, from the hand-over.
        """
        payload = encode_call(fn, args, kwargs, spec.image.python_modules)
        paths = CallPaths.new()
        what = getattr(fn, "__qualname__", "function")
        disk = spec.disk_id
        background = self._client._transport.background
        with background.foreground():
            lib = await self._cloudpickle(disk)
        # The input goes to the disk while the sandbox starts; the bootstrap waits for both.
        objects = self._client.objects
        upload = AConcurrent(functools.partial(objects.put, disk, paths.input_key, payload))
        interrupted = True
        try:
            attempt = 1
            while True:
                deadline: float | None = None
                resend: str | None = None
                taken = None
                if standbys is not None and attempt == 1:
                    with background.foreground():
                        await upload.join()
                    taken = await standbys.take(paths)
                try:
                    if taken is None:
                        with background.foreground():
                            sandbox, process = await self._launch(
                                spec, paths, lib, attempt, ready=upload
                            )
                    else:
                        sandbox, process = taken
                        resend = handover(paths)
                        if spec.timeout is not None:
                            deadline = self._client._transport.clock() + spec.timeout
                except SandboxError as exc:  # the sandbox failed to start
                    await self._retry_or_raise(spec, exc, attempt, what)
                    attempt += 1
                    continue
                tail = OutputTail()
                try:
                    if standbys is not None:
                        await standbys.refill()
                    result = await self._watch(
                        process, self._printer_for(spec), tail, deadline, resend=resend
                    )
                except BaseException:
                    await discard_sandbox(sandbox)
                    raise
                background.spawn(functools.partial(discard_sandbox, sandbox))
                if result is None:  # past its timeout, counted from the hand-over
                    result = ProcessResult(process.id, "timed_out", None, None, "", "")
                try:
                    with background.foreground():
                        value = await self._outcome(
                            spec, disk, paths, result, tail.text(), what, sandbox.id
                        )
                except Exception as exc:
                    await self._retry_or_raise(spec, exc, attempt, what)
                    await self._remove_keys(disk, (paths.output_key,))
                    attempt += 1
                    continue
                interrupted = False
                return value
        except Exception:
            interrupted = False
            raise
        finally:
            keys = (paths.input_key, paths.output_key)
            await upload.settle()
            if interrupted:
                await self._remove_keys(disk, keys)
            else:
                background.spawn(lambda: self._remove_keys(disk, keys))

    async def spawn(
        self,
        spec: FunctionSpec,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        function: str,
    ) -> CallRecord:
        """Start a call and return its record once its process has started (not its result).

        The record is written to the disk, so :meth:`collect` and :meth:`cancel` work
        from any process; the sandbox keeps running when this one exits.
        """
        payload = encode_call(fn, args, kwargs, spec.image.python_modules)
        paths = CallPaths.new()
        disk = spec.disk_id
        lib = await self._cloudpickle(disk)
        await self._client.objects.put(disk, paths.input_key, payload)
        sandbox: AsyncSandbox | None = None
        try:
            sandbox, process = await self._launch(spec, paths, lib, 1, detached=True)
            await process.close()
            record = CallRecord(paths.call_id, function, sandbox.id, process.id)
            await self._client.objects.put(disk, paths.record_key, record.dumps())
        except BaseException:
            if sandbox is not None:
                await discard_sandbox(sandbox)
            await self._remove_keys(disk, (paths.input_key, paths.record_key))
            raise
        return record

    async def _record(self, disk: str, paths: CallPaths) -> CallRecord:
        try:
            data = await self._client.objects.get(disk, paths.record_key)
        except NotFoundError:
            raise ArchilError(
                f"there is no call {paths.object_id} on disk {disk}: it was never spawned "
                "there, or its result was already collected"
            ) from None
        return CallRecord.loads(data)

    async def collect(
        self,
        disk: str,
        paths: CallPaths,
        *,
        timeout: float | None,
        specs: Mapping[str, FunctionSpec],
    ) -> Any:
        """Wait for a spawned call and return its value (or raise its error), then clean up.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first (the call goes on).
        A failed attempt is retried here when the function is one of ``specs`` and its
        ``retries`` allow it. Once collected, the call's files are removed.
        """
        clock = self._client._transport.clock
        deadline = None if timeout is None else clock() + timeout
        record = await self._record(disk, paths)
        spec = specs.get(record.function)
        what = record.function
        while True:
            if record.status == "cancelled":
                raise FunctionCallCancelledError(f"the call {paths.object_id} was cancelled")
            sandbox: AsyncSandbox | None = None
            result: ProcessResult | None = None
            tail = OutputTail()
            try:
                sandbox = await self._client.sandboxes.get(record.sandbox_id)
                process = await sandbox.attach(record.process_id, collect_output=False)
            except (NotFoundError, ConflictError, ProcessError, SandboxError) as exc:
                log.debug("call %s: its process cannot be followed: %s", paths.object_id, exc)
            else:
                result = await self._watch(process, None, tail, deadline, kill=False)
                if result is None:
                    raise TimeoutError(
                        f"the call {paths.object_id} is still running after {timeout:g} s"
                    )
            try:
                value = await self._outcome(
                    spec, disk, paths, result, tail.text(), what, record.sandbox_id
                )
            except Exception as exc:
                if sandbox is not None:
                    await discard_sandbox(sandbox)
                try:
                    await self._retry_or_raise(spec, exc, record.attempt, what)
                except BaseException:
                    await self._forget(disk, paths)
                    raise
                assert spec is not None
                await self._remove_keys(disk, (paths.output_key,))
                lib = await self._cloudpickle(disk)
                record.attempt += 1
                sandbox, process = await self._launch(
                    spec, paths, lib, record.attempt, detached=True
                )
                await process.close()
                record.sandbox_id, record.process_id = sandbox.id, process.id
                await self._client.objects.put(disk, paths.record_key, record.dumps())
                continue
            if sandbox is not None:
                await discard_sandbox(sandbox)
            await self._forget(disk, paths)
            return value

    async def cancel(self, disk: str, paths: CallPaths) -> None:
        """Stop a spawned call: its sandbox is stopped and deleted, its files removed.

        The record stays, marked cancelled, so that waiting for the call says so.
        Cancelling a call that is already over, or cancelled, does nothing.
        """
        try:
            record = await self._record(disk, paths)
        except ArchilError:
            return
        if record.status == "cancelled":
            return
        record.status = "cancelled"
        await self._client.objects.put(disk, paths.record_key, record.dumps())
        try:
            sandbox = await self._client.sandboxes.get(record.sandbox_id)
        except NotFoundError:
            pass
        else:
            await discard_sandbox(sandbox)
        await self._remove_keys(disk, (paths.input_key, paths.output_key))

    async def _forget(self, disk: str, paths: CallPaths) -> None:
        await self._remove_keys(disk, (paths.input_key, paths.output_key, paths.record_key))

    def _printer_for(self, spec: FunctionSpec) -> LogPrinter | None:
        if not spec.stream_logs:
            return None
        return self._printer or LogPrinter()

    async def _remove_keys(self, disk_id: str, keys: Iterable[str]) -> None:
        """Remove a call's files, in one request (best effort: a failure is logged at DEBUG)."""
        objects = self._client.objects
        wanted = list(keys)
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

    async def map(
        self,
        spec: FunctionSpec,
        fn: Callable[..., Any],
        inputs: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
        concurrency: int,
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        """Run one call per input with at most ``concurrency`` at once, yielding results.

        Results come in input order (``ordered``) or as they complete. A failure is
        raised where it comes, which stops the rest, unless ``return_exceptions``:
        then the exception is yielded in its place. When the iteration stops early
        (a failure, Ctrl-C, the caller breaking out), every call still running is
        killed and its sandbox deleted before this returns.
        """
        items = list(inputs)
        if items:
            await self._cloudpickle(spec.disk_id)
            await self._prepared(spec) if spec.image.prepare else await self._image_id(
                spec.image.base
            )
        if self._abort is None:
            self._abort = threading.Event()

        standbys = AsyncStandbys(self, spec, _CLOUDPICKLE.guest_path, len(items))

        async def one(item: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
            standbys.begin()
            try:
                return await self.call(spec, fn, item[0], item[1], standbys=standbys)
            except Exception as exc:
                if return_exceptions and not isinstance(exc, CallAborted):
                    return exc
                raise

        try:
            async for value in agather_bounded(
                one, items, concurrency, ordered=ordered, abort=self._abort
            ):
                yield value
        finally:
            await standbys.close()

    async def run(self, spec: FunctionSpec, command: str, name: str) -> int:
        """Run a shell command in a sandbox; return 0 or raise :class:`ContainerError`.

        As for :meth:`call`, the cleanup of a job that ran to its end is background work.
        """
        sandbox: AsyncSandbox | None = None
        finished = False
        try:
            with self._client._transport.background.foreground():
                sandbox = await self._startup(spec, CallPaths.new().call_id[:20])
            env = {**spec.env, **merged_env(spec.secrets), REMOTE_ENV: "1"}
            result, tail = await self._follow(
                sandbox, command, env, spec.cwd, spec.timeout, self._printer_for(spec)
            )
            finished = True
            if result.ok:
                return 0
            if result.status == "timed_out":
                raise FunctionTimeoutError(
                    f"job {name} went past its timeout={spec.timeout} s and was killed "
                    f"(sandbox {sandbox.id})",
                    limit="timeout",
                    seconds=float(spec.timeout or 0),
                )
            raise _container_error(result, spec.redact(tail), f"job {name}", sandbox.id)
        finally:
            if sandbox is not None:
                done = sandbox
                if finished:
                    self._client._transport.background.spawn(lambda: discard_sandbox(done))
                else:
                    await discard_sandbox(done)


def _age(sandbox: AsyncSandbox) -> tuple[datetime, str]:
    return sandbox.created_at, sandbox.name


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _note_attempts(exc: BaseException, attempt: int, max_attempts: int) -> None:
    """Record on the final error how many attempts were made."""
    with contextlib.suppress(AttributeError, TypeError):
        exc.archil_attempts = attempt  # type: ignore[attr-defined]
    if max_attempts > 1 and hasattr(exc, "add_note"):
        exc.add_note(f"archil: the call failed after {attempt} attempt(s) of {max_attempts}")


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
