"""One sandbox: :class:`Environment`, what :meth:`Runtime.boot` returns.

Its life: the zygote forks its helper ahead of time, and its agent waits; a boot sends
the configuration and waits for ``ready``; a thread of its own reads the agent's messages
until the socket closes, then cleans up what is left and calls ``on_end``.
:meth:`Environment.stop` has the agent SIGTERM every process and SIGKILL what is left
after the grace, and kills the sandbox itself when it has not ended two seconds later;
:meth:`Environment.kill` kills at once.
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
from archil.local.mounts import BootError, check_env
from archil.local.runtime._process import BASE_PATH, RunningProcess, SpawnError
from archil.local.runtime._zygote import _recv, _send, _Zygote
from archil.local.spec import GUEST_DISK_PATH, ExitInfo, ProcessSpec, SandboxSpec

if TYPE_CHECKING:
    from archil.local.runtime import Runtime

logger = logging.getLogger("archil")

_SPAWN_TIMEOUT = 15.0
_FREEZE_TIMEOUT = 10.0


class _PreparedGone(BootError):
    """A sandbox prepared ahead ended before it could take its configuration."""


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


class Environment:
    """One booted sandbox (from :meth:`Runtime.boot`).

    The runtime prepares one ahead of time (its helper forked, its namespaces made, its
    agent waiting): :meth:`Runtime.boot` then only sends it the sandbox's configuration.
    """

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

    # -- public API

    @property
    def alive(self) -> bool:
        """True from boot until the sandbox is gone."""
        return self._booted and not self._ended.is_set()

    @property
    def memory_limit_mib(self) -> int | None:
        """The memory limit in force, or None."""
        cg = self._res.cgroup
        return cg.limit_mib if cg is not None else None

    def spawn(
        self,
        spec: ProcessSpec,
        *,
        on_output: Callable[[int, bytes], None],
        on_exit: Callable[[ExitInfo], None],
    ) -> RunningProcess:
        """Start ``spec``; raises :class:`SpawnError` when it cannot start.

        ``on_output(stream, data)`` comes from pump threads, in order per stream;
        ``on_exit(info)`` exactly once, after the exit and the end of the output (it may
        run before this method returns, for a process that ends at once). A process that
        fails to start raises and never calls ``on_exit``.
        """
        check_env("env", spec.env)
        cwd = self._cwd(spec)
        with self._lock:
            if not self.alive or self._stopping:
                raise SpawnError("the sandbox is not running")
            if self._frozen:
                raise SpawnError("the sandbox is paused")
            self._seq += 1
            proc = RunningProcess(self, f"p{self._seq}", spec, on_output, on_exit)
            self._procs[proc.id] = proc
        proc._oom_base = self._oom_kills()
        env = self._process_env(spec, proc.id)
        msg: dict[str, Any] = {
            "type": "spawn",
            "id": proc.id,
            "argv": ["/bin/sh", "-c", spec.command],
            "env": env,
            "cwd": cwd,
            "tty": spec.terminal is not None,
            "marker": f"ARCHIL_PROCESS_TOKEN={env['ARCHIL_PROCESS_TOKEN']}",
        }
        try:
            child = self._process_fds(proc, spec)
        except OSError as e:
            self._forget(proc)
            raise SpawnError(f"cannot create the process's pipes: {e.strerror}") from e
        try:
            _send(self._sock, self._send_lock, msg, child)
        except (OSError, ValueError) as e:
            proc._spawn_error = f"cannot reach the sandbox's agent: {e}"
        finally:
            for fd in child:
                os.close(fd)
        if not proc._spawn_error and not proc._spawned.wait(_SPAWN_TIMEOUT):
            proc._spawn_error = "the sandbox's agent did not answer"
        if proc._spawn_error:
            proc._abandon()
            raise SpawnError(proc._spawn_error)
        proc._arm_timeout()
        return proc

    def freeze(self) -> None:
        """Pause every user process (the freezer cgroup, else SIGSTOP through the agent)."""
        self._set_frozen(True)

    def thaw(self) -> None:
        """Resume what :meth:`freeze` paused."""
        self._set_frozen(False)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every process, SIGKILL what is left after ``grace`` seconds (default: the
        runtime's ``stop_grace``); returns once nothing of the sandbox is left and ``on_end``
        has run (at once when called from one of this sandbox's callbacks)."""
        grace = self._runtime.stop_grace if grace is None else max(0.0, grace)
        with self._lock:
            if self._finished.is_set():
                return
            self._stopping = True
        self._unfreeze_for_stop()
        try:
            _send(self._sock, self._send_lock, {"type": "shutdown", "grace": grace}, [])
        except (OSError, ValueError):
            self._hard_kill()
        if self._on_own_thread():
            threading.Thread(target=self._enforce_stop, args=(grace,), daemon=True).start()
            return
        self._enforce_stop(grace)

    def kill(self) -> None:
        """Kill every process of the sandbox at once; returns once it is gone."""
        with self._lock:
            if self._finished.is_set():
                return
            self._stopping = True
        self._hard_kill()
        if not self._on_own_thread():
            self._wait_finished(self._runtime.stop_grace)

    def _on_own_thread(self) -> bool:
        """True in one of this sandbox's callbacks (where waiting for its end would hang)."""
        return threading.current_thread() is self._reader or self._runtime._on_runtime_thread()

    # -- internals used by RunningProcess

    def _request(self, msg: dict[str, Any]) -> None:
        if self._ended.is_set():
            return
        try:
            _send(self._sock, self._send_lock, msg, [])
        except (OSError, ValueError) as e:
            raise SpawnError(f"cannot reach the sandbox's agent: {e}") from e

    def _forget(self, proc: RunningProcess) -> None:
        with self._lock:
            if self._procs.get(proc.id) is proc:
                del self._procs[proc.id]

    def _oom_kills(self) -> int:
        cg = self._res.cgroup
        return cg.oom_kills() if cg is not None else 0

    # -- boot

    def _prepare(self, zygote: _Zygote) -> None:
        """Have the zygote fork this sandbox's helper; its agent then waits for ``boot``."""
        self._zygote = zygote
        self._runtime._track_helper(self)
        self._reader = threading.Thread(target=self._read_loop, name="archil-sbx", daemon=True)
        self._reader.start()
        config = {"namespace": self.isolation == "namespace", "userns": self._userns}
        try:
            zygote.create(self._helper_id, config, [self._agent_end.fileno()])
        except (OSError, ValueError) as e:
            self._discard()
            raise BootError(f"cannot reach the sandbox zygote: {e}") from e
        finally:
            self._agent_end.close()

    def _send_boot(
        self,
        spec: SandboxSpec,
        token: str,
        res: _Resources,
        on_end: Callable[[str | None], None],
        config: dict[str, Any],
        fds: list[int],
    ) -> None:
        """Make this prepared sandbox ``spec`` (it owns ``res`` from here on)."""
        self.spec, self.sandbox_id, self.token = spec, spec.sandbox_id, token
        self._res, self._on_end = res, on_end
        self._archil_env = _archil_env(spec, self.isolation == "namespace", token)
        if self._reader is not None:
            self._reader.name = f"archil-sbx-{spec.sandbox_id[:24]}"
        self._boot_sent = True
        try:
            _send(self._sock, self._send_lock, {"type": "boot", "config": config}, fds)
        except (OSError, ValueError) as e:
            self._boot_error = f"the prepared sandbox is gone: {e}"
            self._send_failed = True
            self._boot_event.set()

    def _discard(self) -> None:
        """End a prepared sandbox that will not be booted."""
        with self._lock:
            self._stopping = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._hard_kill()

    def _wait_boot(self, timeout: float) -> None:
        """Block until the agent is ready; raise :class:`BootError` otherwise."""
        if self._boot_event.wait(timeout) and self._ready and self.init_pid:
            with self._lock:
                if not self._ended.is_set():
                    self._booted = True
                    return
        error = self._boot_error
        if error is None:
            if self._ended.is_set():
                error = self._end_reason() or "the sandbox ended while booting"
            else:
                error = f"the sandbox did not start within {timeout:g} s"
        lost = self._ended.is_set() or self._send_failed or self._init_lost
        gone = lost and not self._setup_failed
        self._stopping = True
        self._hard_kill()
        self._wait_finished(5.0)
        self._res.release()  # also when the sandbox ended before it was handed them
        raise (_PreparedGone if gone else BootError)(error)

    def _read_loop(self) -> None:
        try:
            while True:
                msg, pid = _recv(self._sock)
                if msg is None:
                    break
                try:
                    self._dispatch(msg, pid)
                except Exception:
                    logger.exception("sandbox %s: bad message %r", self.sandbox_id, msg)
        finally:
            self._finalize()

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

    def _end_reason(self) -> str | None:
        if self._stopping:
            return None
        status = self._init_status
        if status is None:
            if self._zygote_dead:
                return "the runtime's zygote process died"
            return "the sandbox's helper process died"
        code, sig = status
        if sig is not None:
            if sig == signal.SIGKILL and self._oom_kills() > 0:
                return f"out of memory (limit {self.memory_limit_mib} MiB)"
            return f"the sandbox's init was killed by signal {_proc.signal_name(sig)}"
        if code == 125 and self._boot_error:
            return self._boot_error
        return f"the sandbox's init exited with status {code}"

    def _finalize(self) -> None:
        """The socket closed: the helper and the agent are gone. Clean up, report."""
        if self._init_status is None and not self._zygote_dead:
            self._helper_ended.wait(0.5)
        with self._lock:
            self._ended.set()
            booted = self._booted
        self._boot_event.set()
        self._hard_kill(scan=False)
        _proc.sweep(self._leftovers, quiet_scans=1 if self._ns_link else 2)
        reason = self._end_reason()
        with self._lock:
            procs = list(self._procs.values())
        started = []
        for p in procs:
            if p._spawned.is_set() and not p._spawn_error:
                started.append(p)
                p._lost("the sandbox stopped" if reason is None else f"the sandbox ended: {reason}")
            elif not p._spawned.is_set():
                p._spawn_error = "the sandbox ended before the process started"
                p._spawned.set()
        for p in started:
            p.done.wait(2.0)
        for fd in (self._helper_fd, self._init_fd, self._ns_fd):
            if fd is not None:
                os.close(fd)
        self._helper_fd = self._init_fd = self._ns_fd = None
        self._sock.close()
        self._res.release()
        self._runtime._forget(self)
        try:
            if booted:
                self._on_end(reason)
        except Exception:
            logger.exception("on_end of sandbox %s failed", self.sandbox_id)
        finally:
            self._finished.set()

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

    def _enforce_stop(self, grace: float) -> None:
        if not self._ended.wait(grace + 2.0):
            logger.warning("sandbox %s did not stop in %g s: killing it", self.sandbox_id, grace)
            self._hard_kill()
        self._wait_finished(10.0)

    def _wait_finished(self, timeout: float) -> None:
        if not self._finished.wait(timeout):
            logger.warning("sandbox %s: still cleaning up after %g s", self.sandbox_id, timeout)

    # -- pause

    def _set_frozen(self, frozen: bool) -> None:
        with self._lock:
            if not self.alive or self._stopping:
                raise SpawnError("the sandbox is not running")
            if self._frozen == frozen:
                return
        cg = self._res.cgroup
        if cg is not None and cg.can_freeze:
            try:
                cg.freeze(_FREEZE_TIMEOUT) if frozen else cg.thaw(_FREEZE_TIMEOUT)
            except CgroupError as e:
                if frozen:  # not left half-frozen
                    with contextlib.suppress(CgroupError):
                        cg.thaw(_FREEZE_TIMEOUT)
                raise SpawnError(str(e)) from e
        else:
            ack = "frozen" if frozen else "thawed"
            self._acks[ack] = event = threading.Event()
            self._request({"type": "freeze" if frozen else "thaw"})
            if not event.wait(5.0):
                raise SpawnError(f"the sandbox's agent did not report {ack}")
        self._frozen = frozen

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
