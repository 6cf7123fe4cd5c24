"""Process helpers shared by the local runtime and image builder (Linux ``/proc`` based)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "alive",
    "child_of",
    "kill_pids",
    "make_preexec",
    "pids_in_group",
    "pids_in_pid_namespace",
    "pids_with_env_marker",
    "pump",
    "sweep",
]

PR_SET_PDEATHSIG = 1

_prctl: Any = None
_prctl_lock = threading.Lock()


def _load_prctl() -> Any:
    global _prctl
    with _prctl_lock:
        if _prctl is None:
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.prctl
                fn.argtypes = [
                    ctypes.c_int,
                    ctypes.c_ulong,
                    ctypes.c_ulong,
                    ctypes.c_ulong,
                    ctypes.c_ulong,
                ]
                fn.restype = ctypes.c_int
                _prctl = fn
            except (OSError, AttributeError):
                _prctl = False
        return _prctl


def make_preexec(
    *,
    pdeathsig: bool = True,
    cgroup_procs: str | None = None,
    cpus: Iterable[int] | None = None,
) -> Callable[[], None]:
    """A ``preexec_fn`` that runs in the child between ``fork`` and ``exec``.

    It asks the kernel to SIGKILL the child when the thread that spawned it dies
    (``PR_SET_PDEATHSIG``; the signal follows the *thread*, so spawn from a long-lived
    one), moves the child into a cgroup by writing to ``cgroup_procs`` (so the limit holds
    from the first instruction of the new program), and pins it to ``cpus``.
    Everything it needs is prepared here, in the parent.
    """
    prctl = _load_prctl() if pdeathsig else None
    parent = os.getpid()
    cpu_set = frozenset(cpus) if cpus is not None else None
    procs_path = cgroup_procs

    def preexec() -> None:
        if prctl:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:
                os._exit(137)
        if procs_path is not None:
            fd = os.open(procs_path, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        if cpu_set:
            os.sched_setaffinity(0, cpu_set)

    return preexec


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


def child_of(pid: int) -> int | None:
    """The (first) child process of ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
        return int(children[0]) if children else None
    except OSError:
        pass
    for cand in _pids():
        try:
            with open(f"/proc/{cand}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid).encode():
            return cand
    return None


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


def pids_in_group(pgid: int) -> set[int]:
    """The processes of process group ``pgid``."""
    out: set[int] = set()
    for pid in _pids():
        try:
            if os.getpgid(pid) == pgid:
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


def pump(fd: int, on_chunk: Callable[[str], None], *, max_chunk: int = 64 * 1024) -> None:
    """Read ``fd`` to its end, calling ``on_chunk`` with each line (or long-line piece).

    Closes ``fd`` at the end. Exceptions raised by ``on_chunk`` don't stop the reading,
    so the writer never blocks on a full pipe.
    """
    from archil.local.logs import LineChunker

    chunker = LineChunker(max_chunk)

    def emit(chunks: list[str]) -> None:
        for chunk in chunks:
            with contextlib.suppress(Exception):
                on_chunk(chunk)

    try:
        while True:
            try:
                data = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                break
            if not data:
                break
            emit(chunker.feed(data))
        emit(chunker.flush())
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
