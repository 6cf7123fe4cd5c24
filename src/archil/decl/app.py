"""The declarative layer: ``App``, ``@app.function`` and ``@app.run``."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from pydantic import SecretStr, ValidationError

from .._callproto import FunctionSpec, Retries, check_python_version
from .._errors import ConfigurationError
from .._models import (
    SANDBOX_DISK_PATH,
    CreateSandboxRequest,
    KernelVariant,
    SandboxMount,
    as_dict,
    as_list,
    validate_disk_id,
)
from .._secrets import Secret
from ._asynchalf import load_async_half
from ._driven import DrivenIterator
from ._driven import stop as stop_driven
from .cls import Cls
from .functioncall import FunctionCall
from .image import Image
from .volume import Volume

if TYPE_CHECKING:
    from .._async.client import AsyncArchil
    from .._client import Archil

__all__ = ["App", "Function", "FunctionCall", "Job"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_MAP_CONCURRENCY = 8
FUNCTION_IDLE_TTL = 600
"""Seconds a function's sandbox may sit with no process connection before the control
plane pauses it: a caller that died cannot leave it running for long.
``ARCHIL_FUNCTION_IDLE_TTL`` sets another value (see :func:`function_idle_ttl`)."""


def function_idle_ttl() -> int:
    """The idle TTL of function and job sandboxes: ``ARCHIL_FUNCTION_IDLE_TTL``, else 600 s.

    Read when a function is declared. It must be a whole number of seconds from 1 to
    86400 (0, which disables the idle TTL, is refused: a caller that dies would leave
    its sandbox running until its lifetime budget runs out).
    """
    raw = os.environ.get("ARCHIL_FUNCTION_IDLE_TTL", "").strip()
    if not raw:
        return FUNCTION_IDLE_TTL
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 86_400:
        raise ConfigurationError(
            f"ARCHIL_FUNCTION_IDLE_TTL must be a whole number of seconds from 1 to 86400, "
            f"got {raw!r}"
        )
    return value


class _LoopClient:
    """An app's async client on one event loop, and the generator that closes it."""

    def __init__(self, client: AsyncArchil) -> None:
        self.client = client
        self.guard: AsyncIterator[None] | None = None
        self.closed = False


async def _close_at_shutdown(
    held: _LoopClient,
    clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient],
    lock: threading.Lock,
    loop: asyncio.AbstractEventLoop,
) -> AsyncIterator[None]:
    # asyncio.run closes the async generators still suspended once it has cancelled
    # (and waited for) every task: this one then closes the client and forgets it.
    try:
        yield
    finally:
        held.closed = True
        with lock:  # other threads run loops of their own with this app
            if clients.get(loop) is held:
                del clients[loop]
        await held.client.aclose()


class App:
    """An application that lives on a disk.

    Every function of the app runs in a container with the disk mounted at
    ``/mnt/archil``::

        app = archil.App(name="my-app", disk_id="disk_abc123", disk_env="production")

        @app.function(image=archil.Image.python("3.11").pip_install("numpy"))
        def process():
            ...

        process.remote()

    The API key comes from ``api_key`` or ``ARCHIL_API_KEY``; with neither, the
    app runs on the embedded local control plane.
    """

    def __init__(
        self,
        name: str,
        disk_id: str,
        disk_env: str = "production",
        api_key: str | None = None,
        *,
        region: str | None = None,
        base_url: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        validate_disk_id(disk_id)
        if not isinstance(disk_env, str) or not disk_env:
            raise ValueError(f"disk_env must be a non-empty string, got {disk_env!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("api_key must be a non-empty string when given")
        self.name = name
        self.disk_id = disk_id
        self.disk_env = disk_env
        self._api_key = SecretStr(api_key) if api_key is not None else None
        self._region = region
        self._base_url = base_url
        self._client: Archil | None = None
        self._lock = threading.Lock()
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = (
            weakref.WeakKeyDictionary()
        )
        self.functions: dict[str, Function[..., Any]] = {}

    def __repr__(self) -> str:
        return f"App(name={self.name!r}, disk_id={self.disk_id!r}, disk_env={self.disk_env!r})"

    def __getstate__(self) -> dict[str, Any]:
        # An app referenced from a pickled function never carries credentials or clients.
        return {"name": self.name, "disk_id": self.disk_id, "disk_env": self.disk_env}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["disk_id"], state["disk_env"])  # type: ignore[misc]

    # -- clients ----------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self._api_key.get_secret_value() if self._api_key else None,
            "region": self._region,
            "base_url": self._base_url,
        }

    def client(self) -> Archil:
        """The blocking client this app uses (created on first use and kept)."""
        with self._lock:
            if self._client is None:
                from .._client import Archil

                self._client = Archil(**self._client_kwargs())
            return self._client

    def async_client(self) -> AsyncArchil:
        """A new async client with the app's configuration (the caller closes it)."""
        from .._async.client import AsyncArchil

        return AsyncArchil(**self._client_kwargs())

    def _held_client(self, loop: asyncio.AbstractEventLoop) -> _LoopClient | None:
        with self._lock:
            held = self._loop_clients.get(loop)
        return held if held is not None and not held.closed else None

    async def _loop_client(self) -> AsyncArchil:
        """The async client the app's ``.aio`` calls use on the running event loop.

        One per loop, kept: its connections serve the next call, and the cleanup of a
        finished call (its sandbox's stop and delete) goes on in the background after
        the call returns, as with the blocking client. A suspended async generator
        holds it, so it is closed (that cleanup finished first) when ``asyncio.run``
        shuts the loop down.
        """
        loop = asyncio.get_running_loop()
        held = self._held_client(loop)
        if held is not None:
            return held.client
        await load_async_half()
        # Other calls on this loop may have made the client while that ran.
        held = self._held_client(loop)
        if held is not None:
            return held.client
        held = _LoopClient(self.async_client())
        guard = _close_at_shutdown(held, self._loop_clients, self._lock, loop)
        await guard.__anext__()  # runs to its yield without suspending: nothing interleaves
        held.guard = guard
        with self._lock:
            self._loop_clients[loop] = held
        return held.client

    def close(self) -> None:
        """Close the app's client and its connections."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- decorators -------------------------------------------------------------

    def _spec(
        self,
        *,
        image: Image | None,
        vcpu_count: int,
        mem_size_mib: int,
        kernel_variant: KernelVariant,
        additional_volumes: Mapping[str, Volume] | None,
        ports: Sequence[int] | None,
        env: Mapping[str, str] | None,
        timeout: int | None,
        stream_logs: bool,
        needs_python: bool,
        secrets: Sequence[Secret] | None = None,
        retries: int | Retries | None = None,
        startup_timeout: int | None = None,
    ) -> FunctionSpec:
        """Validate a decorator's arguments into the :class:`FunctionSpec` every call uses."""
        if image is not None and not isinstance(image, Image):
            raise ValueError(f"image must be an archil.Image, got {type(image).__name__}")
        if needs_python:
            image = image if image is not None else Image.python()
            check_python_version(image.python_version)
        elif image is None:
            image = Image.debian_slim()
        if kernel_variant not in ("base", "extended"):
            raise ValueError(f"kernel_variant must be 'base' or 'extended', got {kernel_variant!r}")
        for label, limit in (("timeout", timeout), ("startup_timeout", startup_timeout)):
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 86_400
            ):
                raise ValueError(
                    f"{label} must be a whole number of seconds from 1 to 86400, got {limit!r}"
                )
        policy = _retries(retries)
        checked_secrets = _secrets(secrets)
        plan = image.plan()
        try:
            template = CreateSandboxRequest.model_validate(
                {
                    "vcpu_count": vcpu_count,
                    "mem_size_mib": mem_size_mib,
                    "kernel_variant": None if kernel_variant == "base" else kernel_variant,
                    "mounts": self._mounts(additional_volumes),
                    "ports": as_list(ports, "ports") or None,
                    "env": plan.env or None,
                    "idle_ttl_seconds": function_idle_ttl(),
                }
            )
            process_env = CreateSandboxRequest(env=as_dict(env, "env") or None).env or {}
        except ValidationError as exc:
            raise ValueError(_describe(exc)) from None
        return FunctionSpec(
            disk_id=self.disk_id,
            template=template,
            image=plan,
            env=process_env,
            timeout=timeout,
            stream_logs=stream_logs,
            retries=policy,
            startup_timeout=startup_timeout,
            secrets=checked_secrets,
        )

    def _mounts(self, volumes: Mapping[str, Volume] | None) -> list[SandboxMount]:
        """The app's disk at /mnt/archil (writable by many sandboxes at once), then the volumes."""
        mounts = [SandboxMount(disk_id=self.disk_id, path=SANDBOX_DISK_PATH, conditional=True)]
        for path, vol in (as_dict(volumes, "additional_volumes") or {}).items():
            if not isinstance(vol, Volume):
                raise ValueError(
                    f"additional_volumes[{path!r}] must be an archil.Volume, got {type(vol).__name__}"
                )
            if vol.disk_id == self.disk_id:
                raise ValueError(
                    f"additional_volumes[{path!r}]: disk {vol.disk_id!r} is the app's own disk, "
                    "already at /mnt/archil (a disk can be mounted once per sandbox)"
                )
            try:
                mount = vol.mount_at(path)
            except (ValueError, ValidationError) as exc:
                detail = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
                raise ValueError(f"additional_volumes[{path!r}]: {detail}") from None
            assert mount.path is not None
            if mount.path == SANDBOX_DISK_PATH or mount.path.startswith(SANDBOX_DISK_PATH + "/"):
                raise ValueError(
                    f"additional_volumes[{path!r}]: the app's disk is at /mnt/archil; "
                    "mount volumes elsewhere"
                )
            mounts.append(mount)
        return mounts

    def function(
        self,
        image: Image | None = None,
        vcpu_count: int = 1,
        mem_size_mib: int = 512,
        kernel_variant: KernelVariant = "base",
        additional_volumes: Mapping[str, Volume] | None = None,
        ports: Sequence[int] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        timeout: int | None = None,
        startup_timeout: int | None = None,
        retries: int | Retries | None = None,
        stream_logs: bool = True,
    ) -> Callable[[Callable[P, R]], Function[P, R]]:
        """Declare a function that runs in a container on the app's disk.

        Args:
            image: the container image (default: Python of the caller's version).
            vcpu_count: vCPUs for the container (1-64).
            mem_size_mib: memory in MiB (128-262144).
            kernel_variant: ``"base"``, or ``"extended"`` for extra drivers (GPU...).
            additional_volumes: further disks, ``{"/path": archil.Volume(...)}``.
            ports: container ports to expose.
            env: environment variables for the container.
            secrets: :class:`archil.Secret` objects whose variables the container gets
                (never stored, logged or shown).
            timeout: seconds one attempt may run before it is killed
                (:class:`archil.FunctionTimeoutError`).
            startup_timeout: seconds for preparing the image and starting the sandbox.
            retries: how many times a failed attempt is run again (an int), or an
                :class:`archil.Retries` policy with its backoff.
            stream_logs: print the container's output while it runs.
        """
        opts = self._spec(
            image=image,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            kernel_variant=kernel_variant,
            additional_volumes=additional_volumes,
            ports=ports,
            env=env,
            timeout=timeout,
            stream_logs=stream_logs,
            needs_python=True,
            secrets=secrets,
            retries=retries,
            startup_timeout=startup_timeout,
        )

        def decorator(fn: Callable[P, R]) -> Function[P, R]:
            if not callable(fn):
                raise TypeError("@app.function() decorates a function")
            f = Function(self, fn, opts)
            self.functions[f.name] = f
            return f

        return decorator

    def cls(
        self,
        image: Image | None = None,
        vcpu_count: int = 1,
        mem_size_mib: int = 512,
        kernel_variant: KernelVariant = "base",
        additional_volumes: Mapping[str, Volume] | None = None,
        ports: Sequence[int] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        timeout: int | None = None,
        startup_timeout: int | None = None,
        scaledown_window: float = 60.0,
        stream_logs: bool = True,
    ) -> Callable[[type[T]], Cls[T]]:
        """Declare a class whose instances live in a warm container on the app's disk.

        Its ``@archil.enter()`` methods run once per container; its
        ``@archil.method()`` methods are called with ``Model().predict.remote(x)``.
        Successive calls (with the same constructor arguments) reuse one sandbox
        until it has been idle ``scaledown_window`` seconds; it is deleted then, at
        the end of the script and on Ctrl-C. ``timeout`` applies to each method
        call; the other options are those of :meth:`function`.
        """
        if (
            isinstance(scaledown_window, bool)
            or not isinstance(scaledown_window, (int, float))
            or not 0 < scaledown_window <= 86_400
        ):
            raise ValueError(
                f"scaledown_window must be a number of seconds from 0 to 86400, "
                f"got {scaledown_window!r}"
            )
        opts = self._spec(
            image=image,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            kernel_variant=kernel_variant,
            additional_volumes=additional_volumes,
            ports=ports,
            env=env,
            timeout=timeout,
            stream_logs=stream_logs,
            needs_python=True,
            secrets=secrets,
            startup_timeout=startup_timeout,
        )

        def decorator(user_cls: type[T]) -> Cls[T]:
            if not isinstance(user_cls, type):
                raise TypeError("@app.cls() decorates a class")
            return Cls(self, user_cls, opts, float(scaledown_window))

        return decorator

    def run(
        self,
        command: str,
        image: Image | None = None,
        vcpu_count: int = 1,
        mem_size_mib: int = 512,
        kernel_variant: KernelVariant = "base",
        additional_volumes: Mapping[str, Volume] | None = None,
        ports: Sequence[int] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        timeout: int | None = None,
        stream_logs: bool = True,
    ) -> Callable[[Callable[..., Any]], Job]:
        """Declare a shell job: ``job.remote()`` runs ``command`` in a container on the disk.

        It returns 0, or raises :class:`archil.ContainerError` when the command
        exits non-zero. The decorated function's body is not run. ``secrets``
        are given to the command as environment variables, as for functions.
        """
        if not isinstance(command, str) or not command.strip():
            raise ValueError("command must be a non-empty shell command")
        opts = self._spec(
            image=image,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            kernel_variant=kernel_variant,
            additional_volumes=additional_volumes,
            ports=ports,
            env=env,
            timeout=timeout,
            stream_logs=stream_logs,
            needs_python=False,
            secrets=secrets,
        )
        script = _dedent_script(command)

        def decorator(fn: Callable[..., Any]) -> Job:
            return Job(self, getattr(fn, "__name__", "job"), script, opts)

        return decorator


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
        """Run one call per input, at most ``concurrency`` at once, and yield the results.

        ``list(fn.map(xs))`` gives them all. Results come in input order, or as
        they complete with ``order_outputs=False``. A failed input raises its
        error (and stops the rest) unless ``return_exceptions=True``, which
        yields the exception in its place. Leaving the iteration early, an
        error or Ctrl-C stops and deletes every sandbox the map started.

        While calls run, the map starts the sandboxes of inputs still waiting
        (up to ``concurrency`` of them, with Python loaded but no user code run),
        so the next input's function starts as soon as a slot frees up; each
        input still runs in a sandbox of its own, and its ``timeout`` counts
        from the moment it is handed its input.
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


def _cloudpickle_version() -> str:
    import cloudpickle

    return str(cloudpickle.__version__)


def _concurrency(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"concurrency must be a positive integer, got {value!r}")
    return value


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _retries(value: int | Retries | None) -> Retries | None:
    if value is None or isinstance(value, Retries):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"retries must be an int or an archil.Retries, got {value!r}")
    try:
        return Retries(max_retries=value)
    except ValueError as exc:
        raise ValueError(f"retries: {exc}") from None


def _secrets(value: Sequence[Secret] | None) -> tuple[Secret, ...]:
    if value is None:
        return ()
    if isinstance(value, Secret) or not isinstance(value, (list, tuple)):
        raise ValueError("secrets must be a list of archil.Secret objects")
    for i, secret in enumerate(value):
        if not isinstance(secret, Secret):
            raise ValueError(f"secrets[{i}] must be an archil.Secret, got {type(secret).__name__}")
    return tuple(value)


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


def _dedent_script(command: str) -> str:
    import textwrap

    return textwrap.dedent(command).strip("\n") + "\n"


def _describe(exc: ValidationError) -> str:
    names = {"mounts": "additional_volumes", "timeout_seconds": "timeout"}
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        if loc:
            loc[0] = names.get(loc[0], loc[0])
        where = ".".join(loc) or "options"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "invalid function options: " + "; ".join(parts)
