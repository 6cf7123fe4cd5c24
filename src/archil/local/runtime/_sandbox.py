"""The base of :class:`Environment`: its state, its agent's reports, its kills, process set-up.

Every process gets ``ARCHIL_SANDBOX_ID``, ``ARCHIL_ISOLATION`` (``namespace`` or
``process``), ``ARCHIL_DISK_PATH`` when a mount targets ``/mnt/archil``,
``ARCHIL_MOUNT_COUNT`` and ``ARCHIL_MOUNT_<N>``/``ARCHIL_MOUNT_<N>_PATH`` for the other
mounts, and ``ARCHIL_PROCESS_TOKEN`` (how a process's tree is found when it is
signalled).

Kills are scoped: to the sandbox's PID namespace (held open by a descriptor), its cgroups,
its marker, and to its helper and init through pidfds; nothing else is ever signalled. In
namespace mode the death of the server takes every sandbox with it (``PDEATHSIG`` from the
zygote down to PID 1); in process mode only each process the agent started directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import posixpath
import signal
import socket
import struct
import termios
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archil.local import _proc
from archil.local.cgroups import CgroupError, SandboxCgroup
from archil.local.runtime._process import BASE_PATH, RunningProcess, SpawnError
from archil.local.runtime._zygote import _send, _Zygote
from archil.local.spec import GUEST_DISK_PATH, ProcessSpec, SandboxSpec

if TYPE_CHECKING:
    from archil.local.runtime._runtime import Runtime

logger = logging.getLogger("archil")


class _Resources:
    """What a sandbox holds on the host, released once when it ends."""

    def __init__(self, runtime: Runtime, cpus: list[int], cgroup: SandboxCgroup | None) -> None:
        self.runtime = runtime
        self.cpus = cpus
        self.cgroup = cgroup
        self.rootdir: Path | None = None
        self._lock = threading.Lock()

    def release(self) -> None:
        """Remove the cgroups and the mountpoint directory, give the CPUs back (once)."""
        with self._lock:
            cgroup, self.cgroup = self.cgroup, None
            cpus, self.cpus = self.cpus, []
            rootdir, self.rootdir = self.rootdir, None
        if cgroup is not None:
            cgroup.remove()
        if cpus:
            self.runtime._cpus.give(cpus)
        if rootdir is not None:
            with contextlib.suppress(OSError):
                rootdir.rmdir()


class _Sandbox:
    """The state of an :class:`Environment`, what its helper and agent report, its hold on
    the host (pidfds of its helper and init, its PID namespace) with the kills that go
    through it, and how a process is set up in it."""

    spec: SandboxSpec
    """What it was booted from."""

    def __init__(self, runtime: Runtime, *, namespace: bool, userns: bool) -> None:
        self.sandbox_id = ""
        self.isolation = "namespace" if namespace else "process"
        self.init_pid = 0
        """The host pid of the sandbox's PID 1 (its agent)."""
        self.token = ""
        self._helper_id = uuid.uuid4().hex
        self._userns = userns
        self._runtime = runtime
        self._res = _Resources(runtime, [], None)
        self._on_end: Callable[[str | None], None] = lambda _reason: None
        self._archil_env: dict[str, str] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._procs: dict[str, RunningProcess] = {}
        self._seq = 0
        self._sock, self._agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._reader: threading.Thread | None = None
        self._zygote: _Zygote | None = None
        self._helper_fd: int | None = None
        self._init_fd: int | None = None
        self._ns_fd: int | None = None
        self._ns_link: str | None = None
        self._ready = False
        self._boot_sent = False
        self._send_failed = False
        self._init_lost = False
        self._setup_failed = False
        self._booted = False
        self._boot_error: str | None = None
        self._boot_event = threading.Event()
        self._acks: dict[str, threading.Event] = {}
        self._init_status: tuple[int | None, int | None] | None = None
        self._helper_ended = threading.Event()
        self._stopping = False
        self._frozen = False
        self._ended = threading.Event()
        self._finished = threading.Event()

    # -- boot

    def _dispatch(self, msg: dict[str, Any], sender: int | None) -> None:
        kind = msg.get("type")
        proc = self._procs.get(str(msg.get("id")))
        if kind == "init":
            self._on_init(int(msg["pid"]), sender)
        elif kind == "ready":
            self._ready = True
            if self.init_pid:
                self._boot_event.set()
        elif kind == "error":
            self._boot_error = str(msg.get("message"))
            self._setup_failed = self._boot_sent
            self._boot_event.set()
        elif kind == "spawned" and proc is not None:
            ns_pid = int(msg["pid"])
            proc.pid = (sender or 0) if msg.get("cred") else self._host_pid(ns_pid)
            proc._spawned.set()
        elif kind == "spawn_failed" and proc is not None:
            proc._spawn_error = str(msg.get("message"))
            proc._spawned.set()
        elif kind == "exited" and proc is not None:
            proc._exited(msg.get("code"), msg.get("signal"))
        elif kind == "ended":
            self._init_status = (msg.get("code"), msg.get("signal"))
            self._helper_ended.set()
        elif kind in ("frozen", "thawed") and kind in self._acks:
            self._acks[kind].set()
        elif kind == "protocol_error":
            logger.warning("sandbox %s agent: %s", self.sandbox_id, msg.get("message"))

    def _on_init(self, init_pid: int, helper_pid: int | None) -> None:
        """The helper reported the agent's pid: hold both (and the PID namespace) by fd."""
        # The kernel names the sender (SO_PASSCRED); each pid is checked to be the child
        # of the one before it (zygote -> helper -> init) before it is held by a pidfd.
        if helper_pid is not None and self._zygote is not None:
            self._helper_fd = _proc.pidfd_of_child(helper_pid, self._zygote.pid)
        if self._helper_fd is not None:
            self._init_fd = _proc.pidfd_of_child(init_pid, helper_pid)
        if self._init_fd is None:
            self._boot_error = "the sandbox's init exited at once"
            self._init_lost = True
            self._boot_event.set()
            return
        if self.isolation == "namespace":
            try:
                fd = os.open(f"/proc/{init_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                fd = -1
            link = os.readlink(f"/proc/self/fd/{fd}") if fd >= 0 else None
            if fd >= 0 and (link == os.readlink("/proc/self/ns/pid") or not self._init_alive()):
                os.close(fd)
                fd, link = -1, None
            self._ns_fd, self._ns_link = (fd, link) if fd >= 0 else (None, None)
        self.init_pid = init_pid
        if self._ready:
            self._boot_event.set()

    @property
    def _usable(self) -> bool:
        """A prepared sandbox that can still be booted."""
        return not self._ended.is_set() and not self._stopping and not self._zygote_dead

    @property
    def _zygote_dead(self) -> bool:
        return self._zygote is None or self._zygote.dead.is_set()

    def _init_alive(self) -> bool:
        return self._init_fd is not None and _proc.pidfd_alive(self._init_fd)

    def _host_pid(self, ns_pid: int) -> int:
        """The host pid of a child of the agent known by its pid in the sandbox."""
        if self.isolation == "process" or not self.init_pid:
            return ns_pid
        try:
            with open(f"/proc/{self.init_pid}/task/{self.init_pid}/children") as f:
                children = [int(x) for x in f.read().split()]
        except OSError:
            return 0
        for child in children:
            ns = (_proc.status_field(child, "NSpid") or "").split()
            if ns and ns[-1] == str(ns_pid):
                return child
        return 0

    # -- the end

    def _leftovers(self) -> set[int]:
        """Processes of this sandbox that are still there (by namespace, cgroup, marker)."""
        pids: set[int] = set()
        if self._ns_link is not None:
            pids |= _proc.pids_in_pid_namespace(self._ns_link)
        if self._res.cgroup is not None:
            pids |= self._res.cgroup.pids()
        if self.isolation == "process":
            pids |= _proc.pids_with_env_marker("ARCHIL_SANDBOX_TOKEN", self.token)
        pids.discard(os.getpid())
        if self._zygote is not None:
            pids.discard(self._zygote.pid)
        return pids

    def _hard_kill(self, *, scan: bool = True) -> None:
        """SIGKILL the agent and its helper (by pidfd) and (``scan``) whatever else is left."""
        if self.isolation == "process" and not self._ended.is_set():
            with contextlib.suppress(OSError, ValueError):
                _send(self._sock, self._send_lock, {"type": "signal_all", "signal": 9}, [])
        for fd in (self._init_fd, self._helper_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
        if scan:
            _proc.kill_pids(self._leftovers(), signal.SIGKILL)
        self._unfreeze_for_stop()

    def _unfreeze_for_stop(self) -> None:
        cg = self._res.cgroup
        if self._frozen and cg is not None and cg.can_freeze:
            with contextlib.suppress(CgroupError):
                cg.thaw()
        self._frozen = False

    # -- process set-up

    def _cwd(self, spec: ProcessSpec) -> str:
        has_disk = any(posixpath.normpath(m.target) == GUEST_DISK_PATH for m in self.spec.mounts)
        cwd = spec.cwd or (GUEST_DISK_PATH if has_disk else "/")
        if not cwd.startswith("/"):
            raise SpawnError(f"cwd must be an absolute path, not {cwd!r}")
        if self.isolation == "process":
            cwd = _to_host(self.spec, cwd)
        return cwd

    def _process_env(self, spec: ProcessSpec, pid_id: str) -> dict[str, str]:
        env = {"PATH": BASE_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        if spec.terminal is not None:
            env["TERM"] = "xterm-256color"
        env.update(self.spec.image.env)
        if self.isolation == "process" and self.spec.image.host_path:
            parts = [*self.spec.image.host_path, *env["PATH"].split(":")]
            env["PATH"] = ":".join(dict.fromkeys(p for p in parts if p))
        env.update(self.spec.env)
        env.update(spec.env)
        env.update(self._archil_env)
        env["ARCHIL_PROCESS_TOKEN"] = f"{self.token}.{pid_id}"
        return env

    def _process_fds(self, proc: RunningProcess, spec: ProcessSpec) -> list[int]:
        """Create the process's pipes (or pty); give ``proc`` the server ends, return the rest."""
        if spec.terminal is not None:
            master, slave = os.openpty()
            cols, rows = spec.terminal
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            proc._attach(master, [(master, 1)])
            return [slave]
        fds: list[int] = []
        try:
            for _ in range(3):
                fds.extend(os.pipe())
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        in_r, in_w, out_r, out_w, err_r, err_w = fds
        proc._attach(in_w, [(out_r, 1), (err_r, 2)])
        return [in_r, out_w, err_w]


def _to_host(spec: SandboxSpec, guest: str) -> str:
    """A guest path under a mount target, as the host path of the mount's source."""
    best = None
    for m in spec.mounts:
        t = posixpath.normpath(m.target)
        if (guest == t or guest.startswith(t + "/")) and (best is None or len(t) > len(best[0])):
            best = (t, str(m.source))
    if best is None:
        return guest
    return best[1] + guest[len(best[0]) :]


def _archil_env(spec: SandboxSpec, namespace: bool, token: str) -> dict[str, str]:
    env = {"ARCHIL_SANDBOX_ID": spec.sandbox_id}
    env["ARCHIL_ISOLATION"] = "namespace" if namespace else "process"
    others = [m for m in spec.mounts if posixpath.normpath(m.target) != GUEST_DISK_PATH]
    disk = next((m for m in spec.mounts if posixpath.normpath(m.target) == GUEST_DISK_PATH), None)
    if disk is not None:
        env["ARCHIL_DISK_PATH"] = GUEST_DISK_PATH if namespace else str(disk.source)
    env["ARCHIL_MOUNT_COUNT"] = str(len(others))
    for i, m in enumerate(others):
        target = posixpath.normpath(m.target)
        env[f"ARCHIL_MOUNT_{i}"] = target if namespace else str(m.source)
        env[f"ARCHIL_MOUNT_{i}_PATH"] = target
    if not namespace:
        env["ARCHIL_SANDBOX_TOKEN"] = token
    return env
