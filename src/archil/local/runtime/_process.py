"""Processes in a sandbox: :class:`RunningProcess`, what :meth:`Environment.spawn` returns.

Its output is read on the runtime's event loop thread, which also runs its timeout
(SIGTERM, then SIGKILL ``_TIMEOUT_GRACE`` seconds later). Its exit, reported by the
sandbox's agent, is delivered once: after the end of its output, or ``_DRAIN_GRACE``
seconds after the exit when something still holds the output open.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import select
import signal
import struct
import termios
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from archil.local import _proc
from archil.local.spec import ExitInfo, ProcessSpec

if TYPE_CHECKING:
    from archil.local.runtime._environment import Environment

logger = logging.getLogger("archil")

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` every process starts from."""

_TIMEOUT_GRACE = 2.0
_DRAIN_GRACE = 0.2


class SpawnError(RuntimeError):
    """A process could not be started in a sandbox."""


class RunningProcess:
    """A process started by :meth:`Environment.spawn`."""

    def __init__(
        self,
        env: Environment,
        pid_id: str,
        spec: ProcessSpec,
        on_output: Callable[[int, bytes], None],
        on_exit: Callable[[ExitInfo], None],
    ) -> None:
        self.pid = 0
        """The host pid; 0 for a process that ended before its pid could be translated
        (the kernel translates it when the agent's report is read, and not once it is reaped)."""
        self.id = pid_id
        self.spec = spec
        self._env = env
        self._on_output = on_output
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._stdin: _proc.SharedFd | None = None
        self._streams = 0
        self._exit: ExitInfo | None = None
        self._delivered = False
        self._cancelled = False
        self._timed_out = False
        self._timers: list[_proc.Timer] = []
        self._loop: _proc.EventLoop | None = None
        self._oom_base = 0
        self._spawned = threading.Event()
        self._spawn_error: str | None = None
        self.done = threading.Event()
        """Set once ``on_exit`` has been called."""

    # -- control

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process and its descendants (within its sandbox)."""
        self._env._request({"type": "signal", "id": self.id, "signal": int(sig), "tree": True})

    def cancel(self) -> None:
        """Kill the process and its descendants; it ends ``cancelled``."""
        with self._lock:
            if self._exit is not None:
                return
            self._cancelled = True
        self.signal(signal.SIGKILL)

    def write(self, data: bytes) -> None:
        """Write to the process's standard input (blocks while the pipe is full).

        Raises ``BrokenPipeError`` once the input is closed or the process has ended.
        """
        fd = self._stdin.acquire() if self._stdin is not None else None
        if fd is None:
            raise BrokenPipeError(errno.EPIPE, "the standard input of the process is closed")
        try:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(fd, view)
                except BlockingIOError:  # a terminal's master is non-blocking
                    select.select([], [fd], [], 1.0)
                    continue
                view = view[n:]
        finally:
            self._stdin.release()  # type: ignore[union-attr]

    def close_stdin(self) -> None:
        """Close the standard input (on a terminal: send end-of-file, ^D)."""
        if self.spec.terminal:
            with contextlib.suppress(OSError):
                self.write(b"\x04")
        elif self._stdin is not None:
            self._stdin.close()

    def resize(self, cols: int, rows: int) -> None:
        """Set the terminal's window size (terminal processes only)."""
        fd = self._stdin.acquire() if self.spec.terminal and self._stdin is not None else None
        if fd is None:
            raise ValueError("the process has no open terminal")
        try:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        finally:
            self._stdin.release()  # type: ignore[union-attr]

    # -- plumbing

    def _attach(self, stdin: int, outputs: list[tuple[int, int]]) -> None:
        """Take the server ends: ``stdin`` (a pipe, or the pty master) and the outputs."""
        self._stdin = _proc.SharedFd(stdin)
        self._streams = len(outputs)
        self._loop = loop = self._env._runtime._io()
        for fd, stream in outputs:
            os.set_blocking(fd, False)
            if self.spec.terminal:
                self._stdin.acquire()  # the pty master is read here until its end
            loop.add_reader(fd, functools.partial(self._on_readable, fd, stream))

    def _on_readable(self, fd: int, stream: int) -> None:
        """On the event loop: pass what ``fd`` has on, or close it at its end."""
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO: a terminal whose every slave end is closed
        if data:
            if not self._delivered:
                try:
                    self._on_output(stream, data)
                except Exception:
                    logger.exception("on_output of process %s failed", self.id)
            return
        assert self._loop is not None and self._stdin is not None
        self._loop.remove_reader(fd)
        if self.spec.terminal:
            self._stdin.release()
        else:
            os.close(fd)
        with self._lock:
            self._streams -= 1
        self._maybe_finish()

    def _abandon(self) -> None:
        """The process did not start: let go of its descriptors, never call ``on_exit``."""
        with self._lock:
            self._delivered = True
        if self._stdin is not None:
            self._stdin.close()
        self._env._forget(self)

    def _arm_timeout(self) -> None:
        t = self.spec.timeout_seconds
        if t is None or t <= 0:
            return
        self._timer(float(t), self._on_timeout)

    def _timer(self, delay: float, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        self._timers.append(self._loop.call_later(delay, fn))

    def _on_timeout(self) -> None:
        with self._lock:
            if self._exit is not None or self._cancelled:
                return
            self._timed_out = True
        with contextlib.suppress(SpawnError):
            self.signal(signal.SIGTERM)
        self._timer(_TIMEOUT_GRACE, self._kill_after_timeout)

    def _kill_after_timeout(self) -> None:
        if self._exit is None:
            with contextlib.suppress(SpawnError):
                self.signal(signal.SIGKILL)

    def _classify(self, code: int | None, sig: int | None) -> ExitInfo:
        if self._cancelled:
            return ExitInfo("cancelled", None, "cancelled")
        if self._timed_out:
            return ExitInfo("timed_out", None, f"timed out after {self.spec.timeout_seconds} s")
        killed = sig == signal.SIGKILL or code == 128 + signal.SIGKILL
        if killed and self._env._oom_kills() > self._oom_base:
            limit = self._env.memory_limit_mib
            return ExitInfo("failed", 128 + signal.SIGKILL, f"out of memory (limit {limit} MiB)")
        if sig is not None:
            return ExitInfo("failed", 128 + sig, f"killed by signal {_proc.signal_name(sig)}")
        return ExitInfo("completed", code if code is not None else 0, None)

    def _exited(self, code: int | None, sig: int | None) -> None:
        """The agent reported the exit (on the environment's reader thread)."""
        self._set_exit(self._classify(code, sig))

    def _lost(self, reason: str) -> None:
        """The sandbox ended before the process's exit was reported."""
        if self._cancelled or self._timed_out:
            self._set_exit(self._classify(None, signal.SIGKILL))
        else:
            self._set_exit(ExitInfo("failed", None, reason))

    def _set_exit(self, info: ExitInfo) -> None:
        with self._lock:
            if self._exit is not None:
                return
            self._exit = info
        for t in self._timers:
            t.cancel()
        if self._loop is not None:
            self._loop.call_later(_DRAIN_GRACE, self._deliver)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        with self._lock:
            ready = self._exit is not None and self._streams <= 0
        if ready:
            self._deliver()

    def _deliver(self) -> None:
        with self._lock:
            if self._delivered or self._exit is None:
                return
            self._delivered = True
            info = self._exit
        if self._stdin is not None:
            self._stdin.close()
        try:
            self._on_exit(info)
        except Exception:
            logger.exception("on_exit of process %s failed", self.id)
        finally:
            self._env._forget(self)
            self.done.set()
