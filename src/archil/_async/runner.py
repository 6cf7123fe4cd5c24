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
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._callproto import (
    REMOTE_ENV,
    CallAborted,
    CallPaths,
    CallRecord,
    FunctionSpec,
    OutputTail,
    decode_result,
    encode_arguments,
    encode_call,
    encode_function,
)
from .._compat import AConcurrent, afinish, agather_bounded
from .._errors import (
    APIError,
    ArchilError,
    ConflictError,
    ContainerError,
    FunctionCallCancelledError,
    FunctionTimeoutError,
    NotFoundError,
    ProcessError,
    SandboxError,
)
from .._process import ProcessResult
from .._secrets import merged_env
from .launcher import AsyncLauncher, ended
from .resources.sandbox_handle import discard_sandbox
from .resources.sandboxes import AsyncSandbox
from .workers import AsyncWorkers

__all__ = ["AsyncCallRunner"]

log = logging.getLogger("archil")


class AsyncCallRunner(AsyncLauncher):
    """Runs calls on one client; ``map`` fans out with bounded concurrency."""

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
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a sandbox on the app's disk and return its value.

        A failed attempt is run again in a new sandbox as the function's ``retries``
        say. Once an attempt's process has ended, the sandbox's stop and delete (and
        the removal of the call's files) are left to the client's background work;
        if the call is interrupted on the way, they are done before it returns.
        """
        what = getattr(fn, "__qualname__", "function")
        # The input goes to the disk while the sandbox starts; the bootstrap waits for both.
        payload = encode_call(fn, args, kwargs, spec.image.python_modules)
        paths = CallPaths.new()
        upload = AConcurrent(functools.partial(self._put_input, spec.disk_id, paths, payload))
        return await self._retried(
            spec,
            Staged(paths, upload),
            what,
            functools.partial(self._attempt, spec, paths, upload, what),
        )

    async def _retried(
        self, spec: FunctionSpec, staged: Staged, what: str, attempt_once: Callable[[int], Any]
    ) -> Any:
        """``attempt_once(1)``, then ``attempt_once(2)``... as the function's ``retries`` allow
        (an attempt raises :class:`_AttemptFailed` for what they cover); the first value.

        Then the call's files go: in the background when it ended, at once (this
        waits) when it was interrupted.
        """
        disk = spec.disk_id
        paths, upload = staged.paths, staged.upload
        interrupted = True
        try:
            attempt = 1
            while True:
                try:
                    value = await attempt_once(attempt)
                except _AttemptFailed as failed:
                    error = failed.error
                else:
                    interrupted = False
                    return value
                await self._retry_or_raise(spec, error, attempt, what)
                await self._remove_keys(disk, paths.files[1:])
                attempt += 1
        except Exception:
            interrupted = False
            raise
        finally:
            keys = paths.files
            if interrupted:
                await afinish(upload.settle, functools.partial(self._remove_keys, disk, keys))
            else:
                self._client._transport.background.spawn(
                    functools.partial(self._settle_and_remove, upload, disk, keys)
                )

    async def _attempt(
        self,
        spec: FunctionSpec,
        paths: CallPaths,
        upload: AConcurrent[None],
        what: str,
        attempt: int,
    ) -> Any:
        """One attempt of a call, in a sandbox of its own.

        Raises :class:`_AttemptFailed` for what the function's ``retries`` cover: its
        sandbox failed to start or stopped under it, or the function failed.
        """
        background = self._client._transport.background
        try:
            with background.foreground():
                lib = await self._cloudpickle(spec.disk_id)
                sandbox, process = await self._launch(spec, paths, lib, attempt, ready=upload)
        except SandboxError as exc:  # the sandbox failed to start
            raise _AttemptFailed(exc) from None
        tail = OutputTail()
        try:
            result = await self._watch(process, self._printer_for(spec), tail)
        except SandboxError as exc:  # the sandbox stopped while the function ran
            await discard_sandbox(sandbox)
            raise _AttemptFailed(exc) from None
        except BaseException:
            await discard_sandbox(sandbox)
            raise
        background.spawn(functools.partial(discard_sandbox, sandbox))
        assert result is not None
        try:
            with background.foreground():
                return await self._outcome(
                    spec, spec.disk_id, paths, result, tail.text(), what, sandbox.id
                )
        except Exception as exc:
            raise _AttemptFailed(exc) from None

    async def _settle_and_remove(
        self, upload: AConcurrent[None], disk: str, keys: tuple[str, ...]
    ) -> None:
        await upload.settle()
        await self._remove_keys(disk, keys)

    async def _put_input(self, disk: str, paths: CallPaths, payload: bytes) -> None:
        await self._client.objects.put(disk, paths.input_key, payload)

    async def _encode_and_put(
        self,
        spec: FunctionSpec,
        fn: Callable[..., Any],
        item: tuple[tuple[Any, ...], dict[str, Any]],
        paths: CallPaths,
    ) -> None:
        payload = encode_arguments(fn, item[0], item[1], spec.image.python_modules)
        await self._put_input(spec.disk_id, paths, payload)

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
                await self._remove_keys(disk, paths.files[1:])
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
        await self._remove_keys(disk, paths.files)

    async def _forget(self, disk: str, paths: CallPaths) -> None:
        await self._remove_keys(disk, (*paths.files, paths.record_key))

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
        """Run ``fn`` on each input with at most ``concurrency`` at once, yielding results.

        The inputs share at most ``concurrency`` containers, each of which loads the
        function once and runs it on one input after another (see :mod:`.workers`).
        Results come in input order (``ordered``) or as they complete. A failure is
        raised where it comes, which stops the rest, unless ``return_exceptions``:
        then the exception is yielded in its place. A failed input is run again as
        the function's ``retries`` say. When the iteration stops early (a failure,
        Ctrl-C, the caller breaking out), every container is stopped and its
        sandbox deleted before this returns; a map that ran to its end leaves that
        to the client's background work, as a call does.
        """
        items = list(inputs)
        if not items:
            return
        disk = spec.disk_id
        what = getattr(fn, "__qualname__", "function")
        function = CallPaths.new()
        payload = encode_function(fn, spec.image.python_modules)
        await self._cloudpickle(disk)
        await self._prepared(spec) if spec.image.prepare else await self._image_id(spec.image.base)
        if self._abort is None:
            self._abort = threading.Event()
        await self._client.objects.put(disk, function.input_key, payload)
        workers = AsyncWorkers(self, spec, function, what)

        def upload(index: int, paths: CallPaths) -> AConcurrent[None]:
            return AConcurrent(
                functools.partial(self._encode_and_put, spec, fn, items[index], paths)
            )

        inputs_ahead = _InputsAhead(len(items), upload)

        async def one(entry: tuple[int, tuple[tuple[Any, ...], dict[str, Any]]]) -> Any:
            index = entry[0]
            # This input's upload may have started already; the next one's starts now,
            # so that it is on the disk when a container frees.
            staged = inputs_ahead.begin(index)
            if staged is None:
                paths = CallPaths.new()
                staged = Staged(paths, upload(index, paths))
            try:
                return await self._map_input(spec, workers, staged, what)
            except Exception as exc:
                if return_exceptions and not isinstance(exc, CallAborted):
                    return exc
                raise

        finished = False
        try:
            async for value in agather_bounded(
                one, list(enumerate(items)), concurrency, ordered=ordered, abort=self._abort
            ):
                yield value
            finished = True
        finally:
            # However the map ends (a cancellation included), nothing it made is left.
            # A map that ran to its end leaves the containers' stop and delete to the
            # background work, as a call does; any other end waits for them.
            leftovers = [
                functools.partial(
                    self._settle_and_remove, left.upload, disk, (left.paths.input_key,)
                )
                for left in inputs_ahead.close()
            ]
            cleanup = functools.partial(
                afinish,
                workers.close,
                *leftovers,
                functools.partial(self._remove_keys, disk, (function.input_key,)),
            )
            if finished:
                self._client._transport.background.spawn(cleanup)
            else:
                await cleanup()

    async def _map_input(
        self, spec: FunctionSpec, workers: AsyncWorkers, staged: Staged, what: str
    ) -> Any:
        """Run one input of a ``map`` in one of its containers; its value, or raise.

        A failed attempt is run again as the function's ``retries`` say: an error
        the function raised leaves its container to the next input, a timeout, a
        container that died or a sandbox that stopped closes it.
        """
        attempt_once = functools.partial(self._map_attempt, spec, workers, staged, what)
        return await self._retried(spec, staged, what, attempt_once)

    async def _map_attempt(
        self, spec: FunctionSpec, workers: AsyncWorkers, staged: Staged, what: str, attempt: int
    ) -> Any:
        """One attempt of a ``map``'s input; :class:`_AttemptFailed` as for :meth:`_attempt`."""
        with self._client._transport.background.foreground():
            await staged.upload.join()  # an input that cannot be pickled fails here
            try:
                worker = await workers.take()
            except SandboxError as exc:  # its sandbox failed to start
                raise _AttemptFailed(exc) from None
        try:
            data = await worker.serve(staged.paths, what)
        except (SandboxError, ContainerError, FunctionTimeoutError) as exc:
            raise _AttemptFailed(exc) from None
        workers.give_back(worker)
        try:
            return decode_result(data)
        except Exception as exc:  # the function raised
            raise _AttemptFailed(exc) from None

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


class _AttemptFailed(Exception):
    """An attempt of a call failed in a way the function's ``retries`` cover."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Staged:
    """A call's paths and the upload of its input, started before the call."""

    paths: CallPaths
    upload: AConcurrent[None]


class _InputsAhead:
    """The inputs of a map whose upload starts before their call: the next after each begun.

    ``start(index, paths)`` starts the upload of input ``index``. An input is staged
    only while no call has begun for it, so each upload is owned either by its call
    or, once the map ends, by :meth:`close`, which returns those never begun.
    """

    def __init__(self, count: int, start: Callable[[int, CallPaths], AConcurrent[None]]) -> None:
        self._count = count
        self._start = start
        self._staged: dict[int, Staged] = {}
        self._begun: set[int] = set()
        self._closed = False
        self._lock = threading.Lock()

    def begin(self, index: int) -> Staged | None:
        """Input ``index`` begins: its staged upload, if any; the next input is staged."""
        with self._lock:
            self._begun.add(index)
            mine = self._staged.pop(index, None)
            following = index + 1
            if (
                not self._closed
                and following < self._count
                and following not in self._begun
                and following not in self._staged
            ):
                paths = CallPaths.new()
                self._staged[following] = Staged(paths, self._start(following, paths))
        return mine

    def close(self) -> list[Staged]:
        """Stage nothing more; the uploads whose input never began."""
        with self._lock:
            self._closed = True
            left, self._staged = list(self._staged.values()), {}
        return left


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


def _container_error(
    result: ProcessResult, tail: str, what: str, sandbox_id: str
) -> ContainerError:
    return ContainerError(
        f"{what} {ended(result)} (sandbox {sandbox_id})",
        container_id=sandbox_id,
        exit_code=result.exit_code,
        logs=tail,
    )
