"""Process helpers shared by the local runtime and image builder (Linux ``/proc`` based)."""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable, Iterable

__all__ = [
    "CpuPool",
    "EventLoop",
    "SharedFd",
    "Timer",
    "alive",
    "kill_pids",
    "pidfd_alive",
    "pidfd_of_child",
    "pids_in_pid_namespace",
    "pids_with_env_marker",
    "signal_name",
    "status_field",
    "sweep",
]


def _pids() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    end = stat.rfind(b")")
    state = stat[end + 2 : end + 3]
    return state not in (b"Z", b"X", b"")


def pids_in_pid_namespace(ns_link: str) -> set[int]:
    """The processes whose PID namespace is ``ns_link`` (as read from ``/proc/<pid>/ns/pid``)."""
    out: set[int] = set()
    for pid in _pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == ns_link:
                out.add(pid)
        except OSError:
            continue
    return out


def pids_with_env_marker(name: str, value: str) -> set[int]:
    """The processes started with ``name=value`` in their environment.

    Children inherit the environment, so this finds descendants that left the process group
    or session (``setsid``); only a process that cleared its own environment escapes it.
    """
    needle = f"{name}={value}".encode()
    me = os.getpid()
    out: set[int] = set()
    for pid in _pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            out.add(pid)
    return out


def sweep(find: Callable[[], set[int]], *, quiet_scans: int = 2, limit: float = 5.0) -> None:
    """SIGKILL what ``find()`` returns until it has come back empty ``quiet_scans`` times in a row.

    A single scan can miss a process caught in the middle of ``exec`` (its environment is
    briefly unreadable), so one empty scan is not proof that nothing is left.
    """
    deadline = time.monotonic() + limit
    quiet = 0
    delay = 0.005
    while quiet < quiet_scans and time.monotonic() < deadline:
        pids = {p for p in find() if alive(p)}
        if pids:
            quiet = 0
            kill_pids(pids, signal.SIGKILL)
        else:
            quiet += 1
        if quiet < quiet_scans:
            time.sleep(delay)
            delay = min(0.05, delay * 2)


def kill_pids(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids``, ignoring the ones already gone."""
    me = os.getpid()
    for pid in pids:
        if pid <= 1 or pid == me:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def status_field(pid: int, name: str) -> str | None:
    """The value of ``name`` in ``/proc/<pid>/status`` (``PPid``, ``NSpid``...), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def signal_name(sig: int) -> str:
    """``SIGKILL`` for 9, and so on."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class CpuPool:
    """Hands out CPUs for affinity, least-loaded first."""

    def __init__(self) -> None:
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = []
        self._load = dict.fromkeys(self.cpus, 0)
        self._rr = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> list[int]:
        """``n`` CPUs (capped at the CPUs available) for one user; give them back later."""
        with self._lock:
            if not self.cpus:
                return []
            n = max(1, min(n, len(self.cpus)))
            k = self._rr % len(self.cpus)
            order = self.cpus[k:] + self.cpus[:k]
            self._rr += n
            chosen = sorted(order, key=lambda c: self._load[c])[:n]
            for c in chosen:
                self._load[c] += 1
            return sorted(chosen)

    def give(self, cpus: Iterable[int]) -> None:
        """Return CPUs obtained from :meth:`take`."""
        with self._lock:
            for c in cpus:
                if c in self._load:
                    self._load[c] = max(0, self._load[c] - 1)


class SharedFd:
    """A descriptor used by several threads: closed once the last user has let go of it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._refs = 0
        self._closing = False
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        """The descriptor (call :meth:`release` after use), or None once closing."""
        with self._lock:
            if self._closing or self._fd < 0:
                return None
            self._refs += 1
            return self._fd

    def release(self) -> None:
        """Let go of the descriptor."""
        with self._lock:
            self._refs -= 1
            fd = self._take()
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        """Close now, or when the last user releases it."""
        with self._lock:
            self._closing = True
            fd = self._take()
        if fd >= 0:
            os.close(fd)

    def _take(self) -> int:
        if self._closing and self._refs == 0 and self._fd >= 0:
            fd, self._fd = self._fd, -1
            return fd
        return -1


def pidfd_of_child(pid: int, parent: int | None) -> int | None:
    """A pidfd for ``pid`` when it is alive and (if given) a child of ``parent``."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    ppid = status_field(pid, "PPid")
    if (parent is not None and ppid != str(parent)) or not pidfd_alive(fd):
        os.close(fd)
        return None
    return fd


def pidfd_alive(fd: int) -> bool:
    """True while the process of a pidfd has not exited."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not poller.poll(0)


class Timer:
    """A call scheduled on an :class:`EventLoop` (see :meth:`EventLoop.call_later`)."""

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run it (a no-op once it has run)."""
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class EventLoop:
    """One thread that reads descriptors as they become readable and runs timers.

    Callbacks run on that thread, one at a time, and must return quickly. Use
    :meth:`add_reader`, :meth:`remove_reader` and :meth:`call_later` from any thread.
    """

    def __init__(self, name: str) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._commands: list[Callable[[], None]] = []
        self._timers: list[Timer] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def in_loop(self) -> bool:
        """True on the loop's own thread."""
        return threading.current_thread() is self._thread

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (or at its end)."""

        def register() -> None:
            self._selector.register(fd, selectors.EVENT_READ, callback)

        self._command(register)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (before closing it)."""
        if self.in_loop:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            return
        done = threading.Event()

        def remove() -> None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            done.set()

        self._command(remove)
        done.wait(5.0)

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn()`` on the loop in ``delay`` seconds."""
        timer = Timer(time.monotonic() + delay, fn)
        with self._lock:
            heapq.heappush(self._timers, timer)
        self._wake()
        return timer

    def close(self) -> None:
        """Stop the loop (descriptors still registered are left to their owners)."""
        with self._lock:
            self._closed = True
        self._wake()
        if not self.in_loop:
            self._thread.join(5.0)

    def _command(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._commands.append(fn)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _next_timeout(self) -> float | None:
        with self._lock:
            while self._timers and self._timers[0].cancelled:
                heapq.heappop(self._timers)
            if not self._timers:
                return None
            return max(0.0, self._timers[0].when - time.monotonic())

    def _due(self) -> list[Timer]:
        now, due = time.monotonic(), []
        with self._lock:
            while self._timers and self._timers[0].when <= now:
                due.append(heapq.heappop(self._timers))
        return [t for t in due if not t.cancelled]

    def _run(self) -> None:
        while True:
            with self._lock:
                commands, self._commands = self._commands, []
                closed = self._closed
            for command in commands:
                command()
            if closed:
                break
            for key, _ in self._selector.select(self._next_timeout()):
                if key.fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                else:
                    self._safely(key.data)
            for timer in self._due():
                self._safely(timer.fn)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    @staticmethod
    def _safely(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            logging.getLogger("archil").exception("an event loop callback failed")
