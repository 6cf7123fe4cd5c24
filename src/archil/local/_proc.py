"""Process helpers shared by the local runtime and image builder (Linux ``/proc`` based)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable

__all__ = [
    "CpuPool",
    "SharedFd",
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
