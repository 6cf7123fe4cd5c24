"""``archil.FunctionCall``: a handle on a call started with ``fn.spawn(...)``."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._callproto import CallPaths, FunctionSpec

if TYPE_CHECKING:
    from .app import App

__all__ = ["FunctionCall"]

R = TypeVar("R")

_UNSET: Any = object()


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    return float(timeout)


class _Get(Generic[R]):
    """``call.get(timeout=None)`` blocks; ``await call.get.aio(...)`` is its twin."""

    def __init__(self, call: FunctionCall[R]) -> None:
        self._call = call

    def __call__(self, timeout: float | None = None) -> R:
        """Wait for the call (at most ``timeout`` seconds) and return its value or raise."""
        from .._sync.runner import CallRunner

        call = self._call
        limit = _check_timeout(timeout)
        with call._lock:
            if call._value is not _UNSET:
                return call._finish()
            try:
                value = CallRunner(call.app.client()).collect(
                    call.app.disk_id, call._paths, timeout=limit, specs=call._specs()
                )
            except TimeoutError as exc:
                if type(exc) is TimeoutError:  # still running: nothing to remember
                    raise
                call._value, call._error = None, exc
                raise
            except Exception as exc:
                call._value, call._error = None, exc
                raise
            call._value = value
            return call._finish()

    async def aio(self, timeout: float | None = None) -> R:
        """Wait for the result without blocking the event loop."""
        call = self._call
        limit = _check_timeout(timeout)
        if call._value is not _UNSET:
            return call._finish()
        client = await call.app._loop_client()
        from .._async.runner import AsyncCallRunner

        try:
            value = await AsyncCallRunner(client).collect(
                call.app.disk_id, call._paths, timeout=limit, specs=call._specs()
            )
        except TimeoutError as exc:
            if type(exc) is TimeoutError:
                raise
            call._value, call._error = None, exc
            raise
        except Exception as exc:
            call._value, call._error = None, exc
            raise
        call._value = value
        return call._finish()


class _Cancel:
    """``call.cancel()`` stops the call; ``await call.cancel.aio()`` is its twin."""

    def __init__(self, call: FunctionCall[Any]) -> None:
        self._call = call

    def __call__(self) -> None:
        """Stop the call and delete its sandbox (nothing happens if it is already over)."""
        from .._sync.runner import CallRunner

        call = self._call
        CallRunner(call.app.client()).cancel(call.app.disk_id, call._paths)

    async def aio(self) -> None:
        """Cancel the call without blocking the event loop."""
        call = self._call
        client = await call.app._loop_client()
        from .._async.runner import AsyncCallRunner

        await AsyncCallRunner(client).cancel(call.app.disk_id, call._paths)


class FunctionCall(Generic[R]):
    """A call started with ``fn.spawn(...)``, running in its own sandbox.

    - ``call.get(timeout=None)`` waits and returns the value, or raises what
      ``fn.remote()`` would; past ``timeout`` seconds it raises ``TimeoutError``
      and the call goes on. The result is collected once: the call's files on the
      disk are then removed (this handle remembers the result);
    - ``call.cancel()`` stops the call and deletes its sandbox;
    - ``call.object_id`` names the call: ``FunctionCall.from_id(object_id, app=app)``
      picks it up again in another process, since the call's state and result live
      on the app's disk.

    ``.aio`` twins: ``await call.get.aio()``, ``await call.cancel.aio()``.
    """

    def __init__(self, app: App, object_id: str) -> None:
        self._paths = CallPaths.from_object_id(object_id)
        self.app = app
        self._lock = threading.Lock()
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self.get: _Get[R] = _Get(self)
        self.cancel: _Cancel = _Cancel(self)

    @property
    def object_id(self) -> str:
        """The call's id (``fc-`` and 32 hex digits), for :meth:`from_id`."""
        return self._paths.object_id

    @classmethod
    def from_id(cls, object_id: str, app: App) -> FunctionCall[Any]:
        """The call ``object_id`` spawned on ``app``'s disk (from this or another process).

        Nothing is requested until ``get()`` or ``cancel()``. When ``app`` declares the
        spawned function (the same script, imported again), its ``retries`` apply
        while waiting.
        """
        from .app import App

        if not isinstance(app, App):
            raise ValueError(f"app must be an archil.App, got {type(app).__name__}")
        return cls(app, object_id)

    def _specs(self) -> dict[str, FunctionSpec]:
        return {name: fn.options for name, fn in self.app.functions.items()}

    def _finish(self) -> R:
        if self._error is not None:
            raise self._error
        value: R = self._value
        return value

    def __repr__(self) -> str:
        return f"FunctionCall({self.object_id!r}, disk_id={self.app.disk_id!r})"
