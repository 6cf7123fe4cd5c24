"""``@app.cls``: classes whose instances live in warm containers.

``@archil.enter()`` marks methods run once per container after the instance is
built (load a model from ``/mnt/archil``); ``@archil.method()`` marks the
methods callable remotely: ``Model().predict.remote(x)``. Successive calls with
the same constructor arguments reuse one warm sandbox until it has been idle
for ``scaledown_window`` seconds; it is deleted then, at the end of the script
(or of the ``asyncio.run`` of async calls), and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._callproto import FunctionSpec, encode_instance
from .._compat import afinish
from ._asynchalf import load_async_half

if TYPE_CHECKING:
    from .._async.client import AsyncArchil
    from .._async.warm import AsyncWarmContainer
    from .._sync.warm import WarmContainer
    from .app import App

__all__ = ["Cls", "enter", "method"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_ROLE = "__archil_role__"


def enter() -> Callable[[F], F]:
    """Mark a method to run once per container, right after the instance is built.

    Use it for expensive set-up that successive calls share::

        @app.cls()
        class Model:
            @archil.enter()
            def load(self):
                self.weights = open("/mnt/archil/weights.bin", "rb").read()
    """

    def mark(fn: F) -> F:
        if not callable(fn):
            raise TypeError("@archil.enter() decorates a method")
        setattr(fn, _ROLE, "enter")
        return fn

    return mark


def method() -> Callable[[F], F]:
    """Mark a method of an ``@app.cls`` class as callable remotely (``Model().m.remote(...)``)."""

    def mark(fn: F) -> F:
        if not callable(fn):
            raise TypeError("@archil.method() decorates a method")
        setattr(fn, _ROLE, "method")
        return fn

    return mark


class _SyncEntry:
    """The warm container of one set of constructor arguments, for blocking calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.container: WarmContainer | None = None
        self.timer: threading.Timer | None = None


class _AsyncEntry:
    """The warm container of one set of constructor arguments, on one event loop."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.container: AsyncWarmContainer | None = None
        self.timer: asyncio.TimerHandle | None = None


class _LoopState:
    """What a class keeps on one event loop: its client and its warm containers.

    When ``asyncio.run`` ends, it first cancels every task, then closes the async
    generators still suspended. A task that waits for nothing but its cancellation
    (``keeper``) closes the containers in the first step, while the client still
    works; a suspended async generator (``guard``) closes the client in the second,
    once no task is left to use it (and any container left). Requests made while
    the generators are closed would draw a ``ResourceWarning`` from the loop.
    """

    def __init__(self, client: AsyncArchil) -> None:
        self.client = client
        self.entries: dict[bytes, _AsyncEntry] = {}
        self.guard: AsyncIterator[None] | None = None
        self.keeper: asyncio.Task[None] | None = None

    async def close_containers(self) -> None:
        for entry in list(self.entries.values()):
            if entry.timer is not None:
                entry.timer.cancel()
            container, entry.container = entry.container, None
            if container is not None:
                await container.close()
        self.entries.clear()

    async def aclose(self) -> None:
        if self.keeper is not None and not self.keeper.done():
            self.keeper.cancel()
        await self.close_containers()
        await self.client.aclose()


async def _hold(state: _LoopState) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await state.aclose()


async def _keep(state: _LoopState) -> None:
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        await afinish(state.close_containers)


_classes: weakref.WeakSet[Cls[Any]] = weakref.WeakSet()
_exit_registered = False
_exit_lock = threading.Lock()


def _close_all_at_exit() -> None:
    for cls in list(_classes):
        cls._close_sync()


def _register_exit() -> None:
    global _exit_registered
    with _exit_lock:
        if _exit_registered:
            return
        _exit_registered = True
        # Runs before the interpreter joins non-daemon threads, while the client still works.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            with contextlib.suppress(RuntimeError):
                register(_close_all_at_exit)
                return
        import atexit

        atexit.register(_close_all_at_exit)


class Cls(Generic[T]):
    """A class declared with ``@app.cls``: call it to get an instance whose
    ``@archil.method()`` methods run remotely (``Model().predict.remote(x)``,
    ``await Model().predict.remote.aio(x)``) or here (``.local(x)``)."""

    def __init__(
        self, app: App, user_cls: type[T], options: FunctionSpec, scaledown_window: float
    ) -> None:
        self.app = app
        self.user_cls = user_cls
        self.options = options
        self.scaledown_window = scaledown_window
        self.name = user_cls.__qualname__
        self._enters = _marked(user_cls, "enter")
        self._methods = _marked(user_cls, "method")
        if not self._methods:
            raise ValueError(f"@app.cls: class {self.name} has no @archil.method() method")
        self._lock = threading.Lock()
        self._entries: dict[bytes, _SyncEntry] = {}
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        _classes.add(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Instance[T]:
        """An instance built with these arguments (in the container, on its first call)."""
        return Instance(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<archil.Cls {self.name} on {self.app.disk_id}>"

    @property
    def methods(self) -> tuple[str, ...]:
        """The names of the remotely callable methods."""
        return self._methods

    @property
    def enters(self) -> tuple[str, ...]:
        """The names of the methods run once per container."""
        return self._enters

    # -- blocking calls -------------------------------------------------------------

    def _call(
        self, key: bytes, payload: bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        from .._sync.launcher import Launcher
        from .._sync.warm import WarmContainer

        with self._lock:
            entry = self._entries.setdefault(key, _SyncEntry())
        with entry.lock:
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
            if entry.container is None or not entry.container.alive:
                launcher = Launcher(self.app.client())
                container = WarmContainer(launcher, self.options, payload, self.name)
                _register_exit()
                container.start()
                entry.container = container
            try:
                return entry.container.call(name, args, kwargs)
            finally:
                if entry.container is not None and entry.container.alive:
                    timer = threading.Timer(self.scaledown_window, self._expire, (entry,))
                    timer.daemon = True
                    entry.timer = timer
                    timer.start()

    def _expire(self, entry: _SyncEntry) -> None:
        """Scale down: close the container once it has been idle for the window."""
        if not entry.lock.acquire(blocking=False):
            return  # a call is running; it schedules the next expiry
        try:
            if entry.timer is not None and entry.timer is not threading.current_thread():
                return  # a newer call rescheduled it
            entry.timer = None
            container, entry.container = entry.container, None
            if container is not None:
                container.close()
        finally:
            entry.lock.release()

    def _close_sync(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            with entry.lock:
                if entry.timer is not None:
                    entry.timer.cancel()
                    entry.timer = None
                container, entry.container = entry.container, None
            if container is not None:
                container.close()

    # -- async calls ----------------------------------------------------------------

    async def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            await load_async_half()
            state = self._loops.get(loop)  # made by another call while that ran?
        if state is None:
            state = _LoopState(self.app.async_client())
            guard = _hold(state)
            await guard.__anext__()
            state.guard = guard
            state.keeper = loop.create_task(_keep(state), name="archil: warm containers")
            self._loops[loop] = state
        return state

    async def _acall(
        self, key: bytes, payload: bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        state = await self._state()
        from .._async.launcher import AsyncLauncher
        from .._async.warm import AsyncWarmContainer

        entry = state.entries.setdefault(key, _AsyncEntry())
        async with entry.lock:
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
            if entry.container is None or not entry.container.alive:
                launcher = AsyncLauncher(state.client)
                container = AsyncWarmContainer(launcher, self.options, payload, self.name)
                await container.start()
                entry.container = container
            try:
                return await entry.container.call(name, args, kwargs)
            finally:
                if entry.container is not None and entry.container.alive:
                    loop = asyncio.get_running_loop()
                    entry.timer = loop.call_later(
                        self.scaledown_window, lambda: loop.create_task(self._aexpire(entry))
                    )

    async def _aexpire(self, entry: _AsyncEntry) -> None:
        if entry.lock.locked():
            return
        async with entry.lock:
            entry.timer = None
            container, entry.container = entry.container, None
            if container is not None:
                await container.close()


class Instance(Generic[T]):
    """An instance of an ``@app.cls`` class: its methods run in the class's warm container."""

    def __init__(self, cls: Cls[T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._cls = cls
        self._args = args
        self._kwargs = kwargs
        self._payload = encode_instance(
            cls.user_cls, args, kwargs, cls.enters, cls.options.image.python_modules
        )
        self._key = hashlib.sha256(self._payload).digest()
        self._local: T | None = None

    def __getattr__(self, name: str) -> BoundMethod:
        if name.startswith("_") or name not in self._cls.methods:
            raise AttributeError(
                f"{self._cls.name} has no remote method {name!r} "
                f"(methods: {', '.join(self._cls.methods)})"
            )
        return BoundMethod(self, name)

    def _local_instance(self) -> T:
        if self._local is None:
            obj = self._cls.user_cls(*self._args, **self._kwargs)
            for name in self._cls.enters:
                getattr(obj, name)()
            self._local = obj
        return self._local

    def __repr__(self) -> str:
        return f"<archil {self._cls.name} instance on {self._cls.app.disk_id}>"


class _MethodRemote:
    """``obj.m.remote(...)`` blocks; ``await obj.m.remote.aio(...)`` is its twin."""

    def __init__(self, bound: BoundMethod) -> None:
        self._bound = bound

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the method in the class's warm container and return its value (or raise)."""
        inst = self._bound._instance
        return inst._cls._call(inst._key, inst._payload, self._bound.name, args, kwargs)

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        """Run the method in the warm container without blocking the event loop."""
        inst = self._bound._instance
        return await inst._cls._acall(inst._key, inst._payload, self._bound.name, args, kwargs)


class BoundMethod:
    """A method of an instance: ``.remote(...)`` (and ``.remote.aio``), or ``.local(...)``."""

    def __init__(self, instance: Instance[Any], name: str) -> None:
        self._instance = instance
        self.name = name
        self.remote = _MethodRemote(self)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the method on an instance in this process (its ``enter`` methods run first, once)."""
        return getattr(self._instance._local_instance(), self.name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<archil method {self._instance._cls.name}.{self.name}>"


def _marked(user_cls: type[Any], role: str) -> tuple[str, ...]:
    names = []
    for name in dir(user_cls):
        attr = getattr(user_cls, name, None)
        if getattr(attr, _ROLE, None) == role:
            names.append(name)
    return tuple(names)
