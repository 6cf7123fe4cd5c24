"""What ``@app.function`` and ``@app.run`` make: ``Function`` (``.remote``, ``.spawn``,
``.map``, ``.starmap``, ``.for_each``, each with its ``.aio`` twin) and ``Job``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .._callproto import FunctionSpec
from ._driven import DrivenIterator
from ._driven import stop as stop_driven
from .functioncall import FunctionCall

if TYPE_CHECKING:
    from .app import App

__all__ = ["DEFAULT_MAP_CONCURRENCY", "Function", "Job"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAP_CONCURRENCY = 8


class _Remote(Generic[P, R]):
    """``fn.remote(...)`` blocks; ``fn.remote.aio(...)`` is its awaitable twin."""

    def __init__(self, owner: Function[P, R]) -> None:
        self._owner = owner

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        from .._sync.runner import CallRunner

        runner = CallRunner(self._owner.app.client())
        result: R = runner.call(self._owner.options, self._owner.fn, args, kwargs)
        return result

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function remotely without blocking the event loop."""
        client = await self._owner.app._loop_client()
        from .._async.runner import AsyncCallRunner

        result: R = await AsyncCallRunner(client).call(
            self._owner.options, self._owner.fn, args, kwargs
        )
        return result


class _Spawn(Generic[P, R]):
    """``fn.spawn(...)`` starts a call and returns its handle; ``fn.spawn.aio(...)`` too."""

    def __init__(self, owner: Function[P, R]) -> None:
        self._owner = owner

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> FunctionCall[R]:
        """Start the call and return its handle once its process has started."""
        from .._sync.runner import CallRunner

        owner = self._owner
        record = CallRunner(owner.app.client()).spawn(
            owner.options, owner.fn, args, kwargs, owner.name
        )
        return FunctionCall(owner.app, "fc-" + record.call_id)

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> FunctionCall[R]:
        """Start the call without blocking the event loop."""
        owner = self._owner
        client = await owner.app._loop_client()
        from .._async.runner import AsyncCallRunner

        record = await AsyncCallRunner(client).spawn(
            owner.options, owner.fn, args, kwargs, owner.name
        )
        return FunctionCall(owner.app, "fc-" + record.call_id)


class _MapResults(Generic[R]):
    """What ``fn.map.aio(...)`` returns: ``async for`` it, or ``await`` it for a list."""

    def __init__(
        self,
        owner: Function[..., R],
        inputs: list[tuple[tuple[Any, ...], dict[str, Any]]],
        concurrency: int,
        ordered: bool,
        return_exceptions: bool,
    ) -> None:
        self._owner = owner
        self._inputs = inputs
        self._concurrency = concurrency
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._running: set[asyncio.Task[None]] = set()

    async def _results(self) -> AsyncIterator[R]:
        owner = self._owner
        client = await owner.app._loop_client()
        from .._async.runner import AsyncCallRunner

        results = AsyncCallRunner(client).map(
            owner.options,
            owner.fn,
            self._inputs,
            self._concurrency,
            ordered=self._ordered,
            return_exceptions=self._return_exceptions,
        )
        async for value in results:
            yield value

    def __aiter__(self) -> AsyncIterator[R]:
        # The map runs in a task of its own, so that leaving the loop early (``break``)
        # stops its calls however the event loop ends (see ``_driven``).
        return DrivenIterator(self._results(), self._running)

    async def aclose(self) -> None:
        """Stop the calls still running and wait until their sandboxes are deleted.

        ``break`` out of ``async for`` starts the same cleanup without waiting for
        it; ``async with contextlib.aclosing(fn.map.aio(xs)) as results`` waits.
        """
        for task in list(self._running):
            await stop_driven(task)

    async def _list(self) -> list[R]:
        return [value async for value in self._results()]

    def __await__(self) -> Generator[Any, None, list[R]]:
        return self._list().__await__()


class _Map(Generic[R]):
    """``fn.map(inputs)`` yields results; ``fn.map.aio(inputs)`` is its async twin."""

    def __init__(self, owner: Function[..., R], *, star: bool = False) -> None:
        self._owner = owner
        self._star = star

    def _inputs(
        self, iterables: Sequence[Iterable[Any]]
    ) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        if self._star:
            if len(iterables) != 1:
                raise ValueError("starmap() takes one iterable of argument tuples")
            return _star_inputs(iterables[0])
        return _zip_inputs(iterables)

    def __call__(
        self,
        *iterables: Iterable[Any],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
        return_exceptions: bool = False,
        order_outputs: bool = True,
    ) -> Iterator[R]:
        """Run the function on each input, at most ``concurrency`` at once; yield the results.

        ``list(fn.map(xs))`` gives them all. Results come in input order, or as
        they complete with ``order_outputs=False``. A failed input raises its
        error (and stops the rest) unless ``return_exceptions=True``, which
        yields the exception in its place. Leaving the iteration early, an
        error or Ctrl-C stops and deletes every sandbox the map started.

        The inputs run in at most ``concurrency`` containers, each of which
        loads the function once and runs it on one input after another, so
        module-level state carries over between the inputs of a container. An
        input's ``timeout`` counts from the moment its container is handed it;
        an input that times out or ends its container's process fails alone
        (or runs again, per ``retries``) and a new container takes its place.
        """
        from .._sync.runner import CallRunner

        inputs = self._inputs(iterables)
        limit = _concurrency(concurrency)
        _check_flag(return_exceptions, "return_exceptions")
        _check_flag(order_outputs, "order_outputs")
        runner = CallRunner(self._owner.app.client())
        results: Iterator[R] = runner.map(
            self._owner.options,
            self._owner.fn,
            inputs,
            limit,
            ordered=order_outputs,
            return_exceptions=return_exceptions,
        )
        return results

    def aio(
        self,
        *iterables: Iterable[Any],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
        return_exceptions: bool = False,
        order_outputs: bool = True,
    ) -> _MapResults[R]:
        """The async twin: ``async for r in fn.map.aio(xs)``, or ``await`` it for a list."""
        inputs = self._inputs(iterables)
        limit = _concurrency(concurrency)
        _check_flag(return_exceptions, "return_exceptions")
        _check_flag(order_outputs, "order_outputs")
        return _MapResults(self._owner, inputs, limit, order_outputs, return_exceptions)


class _ForEach:
    """``fn.for_each(inputs)`` runs one call per input and keeps no result."""

    def __init__(self, owner: Function[..., Any]) -> None:
        self._owner = owner

    def __call__(
        self,
        *iterables: Iterable[Any],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
        ignore_exceptions: bool = False,
    ) -> None:
        """Run ``fn`` over the inputs for its effects; the first failure is raised
        (and stops the rest) unless ``ignore_exceptions=True``."""
        for _ in self._owner.map(
            *iterables,
            concurrency=concurrency,
            return_exceptions=ignore_exceptions,
            order_outputs=False,
        ):
            pass

    async def aio(
        self,
        *iterables: Iterable[Any],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
        ignore_exceptions: bool = False,
    ) -> None:
        """The async twin of ``for_each``."""
        results = self._owner.map.aio(
            *iterables,
            concurrency=concurrency,
            return_exceptions=ignore_exceptions,
            order_outputs=False,
        )
        async for _ in results:
            pass


class Function(Generic[P, R]):
    """A function declared with ``@app.function``.

    - ``fn.remote(*args, **kwargs)`` runs it in a container and returns its value;
    - ``await fn.remote.aio(...)`` does the same from async code;
    - ``fn.spawn(...)`` starts it and returns an :class:`archil.FunctionCall` at once;
    - ``fn.map(xs)``, ``fn.starmap(pairs)`` run one call per input, in parallel,
      and yield the results; ``fn.for_each(xs)`` keeps none;
    - ``fn.local(...)`` (or calling ``fn(...)``) runs it here, in-process.
    """

    def __init__(self, app: App, fn: Callable[P, R], options: FunctionSpec) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.name = getattr(fn, "__qualname__", getattr(fn, "__name__", "function"))
        functools.update_wrapper(self, fn)
        self.remote: _Remote[P, R] = _Remote(self)
        self.spawn: _Spawn[P, R] = _Spawn(self)
        self.map: _Map[R] = _Map(self)
        self.starmap: _Map[R] = _Map(self, star=True)
        self.for_each: _ForEach = _ForEach(self)

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process."""
        return self.fn(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<archil.Function {self.name} on {self.app.disk_id}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"app": self.app, "fn": self.fn, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["app"], state["fn"], state["options"])  # type: ignore[misc]


class _JobRemote:
    def __init__(self, job: Job) -> None:
        self._job = job

    def __call__(self) -> int:
        from .._sync.runner import CallRunner

        return CallRunner(self._job.app.client()).run(
            self._job.options, self._job.command, self._job.name
        )

    async def aio(self) -> int:
        """Run the job without blocking the event loop."""
        client = await self._job.app._loop_client()
        from .._async.runner import AsyncCallRunner

        return await AsyncCallRunner(client).run(
            self._job.options, self._job.command, self._job.name
        )


class Job:
    """A shell job declared with ``@app.run``; ``job.remote()`` runs it and returns 0."""

    def __init__(self, app: App, name: str, command: str, options: FunctionSpec) -> None:
        self.app = app
        self.name = name
        self.command = command
        self.options = options
        self.remote = _JobRemote(self)

    def __repr__(self) -> str:
        return f"<archil.Job {self.name} on {self.app.disk_id}>"


def _concurrency(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"concurrency must be a positive integer, got {value!r}")
    return value


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _star_inputs(iterable: Iterable[Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    inputs: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for i, args in enumerate(iterable):
        if not isinstance(args, (tuple, list)):
            raise ValueError(
                f"starmap: input {i} must be a tuple of arguments, got {type(args).__name__}"
            )
        inputs.append((tuple(args), {}))
    return inputs


def _zip_inputs(iterables: Sequence[Iterable[Any]]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    if not iterables:
        raise ValueError("map() needs at least one iterable of inputs")
    return [(tuple(args), {}) for args in zip(*iterables, strict=False)]
