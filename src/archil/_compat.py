"""Hand-written async/blocking pairs that ``scripts/unasync.py`` maps onto each other.

Code in ``_async/`` must sleep, lock and fan out only through the ``a``-prefixed
names here; the generator rewrites them to the blocking twins, so the
generated ``_sync/`` code really waits (a bare ``await asyncio.sleep`` would
turn into an un-awaited coroutine) and really runs work concurrently.

``aenter_detached`` / ``enter_detached`` hold a context manager open beyond the
call that entered it (a process's WebSocket stays open between calls).

``afinish`` / ``finish`` run cleanup to its end: ``asyncio.run`` cancels every
task still pending when its coroutine returns, and a task cancelled again
while it cleans up would otherwise leave sandboxes running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from concurrent.futures import wait as wait_futures
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Generic, TypeVar

__all__ = [
    "ABackground",
    "AConcurrent",
    "ADetached",
    "ALock",
    "Background",
    "Concurrent",
    "Detached",
    "Lock",
    "aenter_detached",
    "afinish",
    "agather_bounded",
    "areceive_event",
    "asleep",
    "enter_detached",
    "finish",
    "gather_bounded",
    "receive_event",
    "sleep",
]

logger = logging.getLogger("archil")

T = TypeVar("T")
R = TypeVar("R")


async def asleep(seconds: float) -> None:
    """Sleep without blocking the event loop."""
    if seconds > 0:
        await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Block the calling thread for ``seconds``."""
    if seconds > 0:
        time.sleep(seconds)


FINISH_GRACE = 30.0
"""Seconds that cleanup goes on for after its task was cancelled, at most."""

FINISH_RESTARTS = 4
"""How many cancellations a piece of cleanup is restarted after, at most."""


async def afinish(*works: Callable[[], Awaitable[Any]]) -> None:
    """Run each of ``works`` (idempotent cleanup) to its end, even if this task is cancelled.

    A cancellation that arrives meanwhile interrupts the request in flight: that
    piece of work is started again (it must be safe to repeat), the rest follow,
    and the cancellation is raised once all have run. After ``FINISH_RESTARTS``
    cancellations or ``FINISH_GRACE`` seconds the cleanup gives up (logged) and
    the cancellation is raised at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FINISH_GRACE
    cancelled: asyncio.CancelledError | None = None
    restarts = 0
    for work in works:
        while True:
            try:
                await work()
                break
            except asyncio.CancelledError as exc:
                cancelled = exc
                restarts += 1
                if restarts > FINISH_RESTARTS or loop.time() >= deadline:
                    logger.warning(
                        "cleanup interrupted %d times: gave up; what it would have "
                        "removed ends by its idle timeout",
                        restarts,
                    )
                    raise
    if cancelled is not None:
        raise cancelled


def finish(*works: Callable[[], Any]) -> None:
    """Run each of ``works`` (cleanup) in turn: threads are not cancelled."""
    for work in works:
        work()


class ALock:
    """An asyncio lock created lazily so it binds to the loop that first uses it."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        assert self._lock is not None
        self._lock.release()


class Lock:
    """A thread lock with the same shape as :class:`ALock`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


async def agather_bounded(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    limit: int,
    *,
    ordered: bool = True,
    abort: threading.Event | None = None,
) -> AsyncIterator[R]:
    """Run ``fn`` over ``items`` with at most ``limit`` in flight; yield results.

    Results come in input order, or as they complete when ``ordered`` is false.
    When the iteration stops before every result was yielded (an error, a
    cancellation, the caller leaving), ``abort`` is set and the work still
    running is cancelled and waited for.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    sem = asyncio.Semaphore(limit)

    async def run(item: T) -> R:
        async with sem:
            return await fn(item)

    tasks = [asyncio.ensure_future(run(item)) for item in items]
    finished = False
    try:
        if ordered:
            for task in tasks:
                yield await task
        else:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finished = True
    finally:
        if not finished and abort is not None:
            abort.set()
        for task in tasks:
            if not task.done():
                task.cancel()
        if tasks:
            # The tasks clean up after themselves (deleting sandboxes): wait for them
            # even if this is cancelled again, or what they use could close under them.
            await afinish(functools.partial(asyncio.wait, tasks))
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # retrieved, so that it is not logged as lost


def gather_bounded(
    fn: Callable[[T], R],
    items: Iterable[T],
    limit: int,
    *,
    ordered: bool = True,
    abort: threading.Event | None = None,
) -> Iterator[R]:
    """Run ``fn`` over ``items`` on at most ``limit`` threads; yield results.

    Results come in input order, or as they complete when ``ordered`` is false.
    When the iteration stops before every result was yielded (an error, Ctrl-C,
    the caller leaving), ``abort`` is set (work in flight watches it and stops),
    work not started is cancelled, and the threads are waited for.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="archil")
    futures = [pool.submit(fn, item) for item in items]
    finished = False
    try:
        if ordered:
            for fut in futures:
                yield fut.result()
        else:
            for fut in as_completed(futures):
                yield fut.result()
        finished = True
    finally:
        if not finished and abort is not None:
            abort.set()
        for fut in futures:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class AConcurrent(Generic[T]):
    """Work started now that runs while the caller does something else: a task on the loop.

    :meth:`join` waits for it and returns its value (or raises its failure);
    :meth:`settle` waits for it without raising (before cleaning up after it).
    """

    def __init__(self, work: Callable[[], Awaitable[T]]) -> None:
        self._task: asyncio.Future[T] = asyncio.ensure_future(work())

    async def join(self) -> T:
        """Its value, once it is done."""
        return await self._task

    async def settle(self) -> None:
        """Wait until it is done, whatever its outcome."""
        if not self._task.done():
            await asyncio.wait([self._task])
        if not self._task.cancelled():
            self._task.exception()


class Concurrent(Generic[T]):
    """Work started now that runs while the caller does something else: a thread of its own.

    :meth:`join` waits for it and returns its value (or raises its failure);
    :meth:`settle` waits for it without raising (before cleaning up after it).
    """

    def __init__(self, work: Callable[[], T]) -> None:
        self._future: Future[T] = Future()
        thread = threading.Thread(target=self._run, args=(work,), name="archil-io", daemon=True)
        thread.start()

    def _run(self, work: Callable[[], T]) -> None:
        try:
            value = work()
        except BaseException as exc:
            self._future.set_exception(exc)
        else:
            self._future.set_result(value)

    def join(self) -> T:
        """Its value, once it is done."""
        return self._future.result()

    def settle(self) -> None:
        """Wait until it is done, whatever its outcome."""
        wait_futures([self._future])


class ADetached(Generic[T]):
    """An async context manager held open in a task of its own (see :func:`aenter_detached`).

    ``value`` is what the context manager gave. Any task may use it and any task
    may :meth:`aclose` it: context managers built on anyio task groups (such as
    an httpx-ws session) must otherwise be exited by the very task that
    entered them, which ``asyncio.gather``/``wait_for`` around a caller's code
    would break. If the handle is garbage-collected unclosed, the context is
    exited anyway.
    """

    def __init__(self, value: T, task: asyncio.Task[None], release: asyncio.Event) -> None:
        self.value = value
        self._task = task
        self._release = release
        loop = task.get_loop()
        self._finalizer = weakref.finalize(self, _release_soon, loop, release)

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called or the context ended by itself."""
        return self._release.is_set() or self._task.done()

    async def aclose(self) -> None:
        """Exit the context (in its own task) and wait until it has exited.

        Errors while exiting are logged at DEBUG and not raised: closing is best effort.
        """
        self._finalizer.detach()
        self._release.set()
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if not self._task.done():
                raise


def _release_soon(loop: asyncio.AbstractEventLoop, release: asyncio.Event) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is left to release
        loop.call_soon_threadsafe(release.set)


async def aenter_detached(cm: AbstractAsyncContextManager[T]) -> ADetached[T]:
    """Enter ``cm`` in a new task that keeps it open until :meth:`ADetached.aclose`.

    An error while entering is raised here, as ``async with cm`` would raise it.
    """
    loop = asyncio.get_running_loop()
    entered: asyncio.Future[T] = loop.create_future()
    release = asyncio.Event()

    async def hold() -> None:
        try:
            async with cm as value:
                if entered.done():  # the caller gave up while we were entering
                    return
                entered.set_result(value)
                await release.wait()
        except asyncio.CancelledError:
            if not entered.done():
                entered.cancel()
        except BaseException as exc:
            if not entered.done():
                entered.set_exception(exc)
            else:
                logger.debug("closing a connection failed: %s", type(exc).__name__)

    task = loop.create_task(hold())
    try:
        value = await entered
    except BaseException:
        release.set()
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    return ADetached(value, task, release)


class Detached(Generic[T]):
    """A context manager held open beyond the call that entered it (see :func:`enter_detached`).

    Open handles are closed when the interpreter shuts down, before it waits
    for non-daemon threads: a blocking WebSocket session's reader threads
    would otherwise keep a script from exiting.
    """

    def __init__(self, cm: AbstractContextManager[T]) -> None:
        self._stack = contextlib.ExitStack()
        self.value = self._stack.enter_context(cm)
        self._closed = False
        _track(self)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Exit the context. Errors while exiting are logged at DEBUG and not raised."""
        if self._closed:
            return
        self._closed = True
        _open_detached.discard(self)
        try:
            self._stack.close()
        except Exception as exc:
            logger.debug("closing a connection failed: %s", type(exc).__name__)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


_open_detached: weakref.WeakSet[Detached[Any]] = weakref.WeakSet()
_atexit_registered = False
_atexit_lock = threading.Lock()


def _track(handle: Detached[T]) -> None:
    global _atexit_registered
    _open_detached.add(handle)
    if _atexit_registered:
        return
    with _atexit_lock:
        if _atexit_registered:
            return
        _atexit_registered = True
        # Runs before the interpreter joins non-daemon threads (atexit would be too late).
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            with contextlib.suppress(RuntimeError):  # already shutting down
                register(_close_all_detached)


def _close_all_detached() -> None:
    for handle in list(_open_detached):
        handle.close()


def enter_detached(cm: AbstractContextManager[T]) -> Detached[T]:
    """Enter ``cm`` and keep it open until :meth:`Detached.close`."""
    return Detached(cm)


async def areceive_event(session: Any, timeout: float) -> Any:
    """The next event of an async WebSocket session, or ``None`` after ``timeout`` seconds."""
    try:
        return await session.receive(timeout=timeout)
    except TimeoutError:
        return None


def receive_event(session: Any, timeout: float) -> Any:
    """The next event of a blocking WebSocket session, or ``None`` after ``timeout`` seconds."""
    try:
        return session.receive(timeout=timeout)
    except queue.Empty:
        return None


YIELD_LIMIT = 0.25
YIELD_QUIET = 0.02
"""Background work (the cleanup of finished calls) waits until no call has been starting
for ``YIELD_QUIET`` seconds, and at most ``YIELD_LIMIT`` seconds.

A call's start (its payload upload, sandbox create and process start) and its result's
read are sequential requests on its critical path; the stop and delete of the previous
call's sandbox would otherwise share the control plane and the CPUs with them. Calls made
one after another start within a few milliseconds of each other, so the cleanup of one
runs while the next one's function runs. The limit keeps a steady stream of starts (a
large ``map``) from holding cleanup back.
"""


class ABackground:
    """Work that finishes after the call that started it returned: tasks on the running loop.

    :meth:`drain` waits for everything started so far (a client's ``aclose`` does).
    A failure is logged, never raised.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting = 0
        self._last_start_ended = -YIELD_QUIET
        self._waiters: list[asyncio.Future[None]] = []

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a stretch of a call's critical path (its start, its result's read).

        Background work waits until none is in progress (see ``YIELD_LIMIT``).
        """
        self._starting += 1
        try:
            yield
        finally:
            self._starting -= 1
            self._last_start_ended = time.monotonic()
            if self._starting == 0:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    def spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work()`` in the background, once the calls being started have got going."""
        task = asyncio.get_running_loop().create_task(self._run(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await self._yield()
        except asyncio.CancelledError:
            # Cancelled (the loop is ending): the cleanup is done now, and then it stops.
            await afinish(functools.partial(_logged, work))
            raise
        await _logged(work)

    async def _yield(self) -> None:
        deadline = time.monotonic() + YIELD_LIMIT
        while (left := deadline - time.monotonic()) > 0:
            if self._starting:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter, left)
                continue
            quiet = time.monotonic() - self._last_start_ended
            if quiet >= YIELD_QUIET:
                break
            await asyncio.sleep(min(YIELD_QUIET - quiet, left))

    async def drain(self) -> None:
        """Wait until every piece of background work started so far has finished.

        It goes on waiting if cancelled meanwhile (see :func:`afinish`): the work
        uses the client that is closed next.
        """
        while self._tasks:
            await afinish(functools.partial(asyncio.wait, list(self._tasks)))


async def _logged(work: Callable[[], Awaitable[None]]) -> None:
    try:
        await work()
    except Exception as exc:
        logger.warning("background work failed: %s", exc)


class Background:
    """Work that finishes after the call that started it returned: a few worker threads.

    The threads finish their work before the interpreter exits; :meth:`drain`
    waits for it (a client's ``close`` does).
    """

    def __init__(self, workers: int = 4) -> None:
        self._workers = workers
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: set[Any] = set()
        self._starting = 0
        self._last_start_ended = -YIELD_QUIET
        self._quiet = threading.Condition()

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a stretch of a call's critical path (its start, its result's read).

        Background work waits until none is in progress (see ``YIELD_LIMIT``).
        """
        with self._quiet:
            self._starting += 1
        try:
            yield
        finally:
            with self._quiet:
                self._starting -= 1
                self._last_start_ended = time.monotonic()
                if self._starting == 0:
                    self._quiet.notify_all()

    def spawn(self, work: Callable[[], None]) -> None:
        """Run ``work()`` on a worker thread, once the calls being started have got going."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="archil-cleanup")
            future = self._pool.submit(self._run, work)
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Any) -> None:
        with self._lock:
            self._futures.discard(future)

    def drain(self) -> None:
        """Wait until every piece of background work started so far has finished."""
        while True:
            with self._lock:
                pending = list(self._futures)
            if not pending:
                return
            for future in pending:
                future.exception()

    def _run(self, work: Callable[[], None]) -> None:
        deadline = time.monotonic() + YIELD_LIMIT
        with self._quiet:
            while (left := deadline - time.monotonic()) > 0:
                quiet = time.monotonic() - self._last_start_ended
                if not self._starting and quiet >= YIELD_QUIET:
                    break
                self._quiet.wait(left if self._starting else min(YIELD_QUIET - quiet, left))
        _logged_sync(work)


def _logged_sync(work: Callable[[], None]) -> None:
    try:
        work()
    except Exception as exc:
        logger.warning("background work failed: %s", exc)
