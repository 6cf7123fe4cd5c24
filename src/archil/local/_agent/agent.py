"""The agent: PID 1 of a sandbox (or a subreaper in process mode) that spawns, signals and reaps."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import NoReturn

from .linux import PR_SET_PDEATHSIG, prctl, wait_status, write_all
from .wire import Msg, describe, recv, send

Table = dict[int, tuple[int, int]]


class _Proc:
    """A process the agent spawned."""

    def __init__(self, pid: int, pid_id: str, marker: str | None, err_fd: int) -> None:
        self.pid = pid
        self.id = pid_id
        self.marker = marker.encode() if marker else None
        self.err_fd: int | None = err_fd
        self.failed = False


def _proc_table() -> Table:
    """pid -> (parent pid, session id) of every live process in this ``/proc``."""
    out: Table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) > 3 and fields[0] not in (b"Z", b"X"):
            out[int(name)] = (int(fields[1]), int(fields[3]))
    return out


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


class Agent:
    """PID 1 of a sandbox (or a subreaper in process mode): spawns, signals, reaps."""

    def __init__(self, sock: socket.socket, cfg: Msg, user_cgroups: list[int]) -> None:
        self.sock = sock
        self.namespace = bool(cfg["namespace"])
        self.marker = str(cfg["marker"]).encode() if cfg.get("marker") else None
        self.user_cgroups = user_cgroups
        self.me = os.getpid()
        self.by_pid: dict[int, _Proc] = {}
        self.by_id: dict[str, _Proc] = {}
        self.deadline: float | None = None
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)
        # What each child resets before its execve, worked out once rather than per spawn.
        self.ignored_signals = [
            sig for sig in signal.valid_signals() if signal.getsignal(sig) == signal.SIG_IGN
        ]

    # -- finding processes

    def _mine(self, table: Table) -> set[int]:
        """Every process of this sandbox but the agent."""
        if self.namespace:
            return set(table) - {self.me}
        out = {p for p in table if self.marker and _has_marker(p, self.marker)}
        return self._descendants(table, out | {self.me}) - {self.me}

    @staticmethod
    def _descendants(table: Table, roots: set[int]) -> set[int]:
        out = set(roots)
        grew = True
        while grew:
            new = {p for p, (ppid, _) in table.items() if ppid in out and p not in out}
            out |= new
            grew = bool(new)
        return out

    def _tree(self, table: Table, p: _Proc) -> set[int]:
        """``p``, its session, the processes carrying its marker, and their descendants."""
        roots = {pid for pid, (_, sid) in table.items() if sid == p.pid}
        if p.pid in table:
            roots.add(p.pid)
        if p.marker:
            roots |= {pid for pid in table if _has_marker(pid, p.marker)}
        return self._descendants(table, roots) & self._mine(table)

    def _kill(self, pids: set[int], sig: int) -> None:
        for pid in pids:
            if pid > 1 and pid != self.me:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)

    def _signal_set(self, find: Callable[[Table], set[int]], sig: int) -> None:
        """Send ``sig`` to ``find(table)``; for SIGKILL, again until nothing is found."""
        self._kill(find(_proc_table()), sig)
        if sig != signal.SIGKILL:
            return
        quiet, deadline = 0, time.monotonic() + 2.0
        while quiet < 2 and time.monotonic() < deadline:
            time.sleep(0.002)
            self._reap()
            pids = find(_proc_table())
            quiet = 0 if pids else quiet + 1
            self._kill(pids, sig)

    # -- spawning

    def spawn(self, msg: Msg, fds: list[int]) -> None:
        """Fork and exec one process; its ``spawned``/``spawn_failed`` comes from the loop."""
        pid_id = str(msg["id"])
        try:
            if len(fds) != (1 if msg.get("tty") else 3) or pid_id in self.by_id:
                raise OSError(errno.EINVAL, "bad spawn request")
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
        except OSError as e:
            for fd in fds:
                os.close(fd)
            send(self.sock, {"type": "spawn_failed", "id": pid_id, "message": describe(e)})
            return
        if pid == 0:
            try:
                os.close(err_r)
                self._exec_child(msg, fds, err_w)
            except BaseException as e:
                with contextlib.suppress(BaseException):
                    os.write(err_w, describe(e).encode())
            os._exit(127)
        os.close(err_w)
        for fd in fds:
            os.close(fd)
        p = _Proc(pid, pid_id, msg.get("marker"), err_r)
        self.by_pid[pid] = p
        self.by_id[pid_id] = p

    def _exec_child(self, msg: Msg, fds: list[int], err_w: int) -> None:
        """In the child: session, cgroup, fds, directory, signals; then ``execve``."""
        signal.set_wakeup_fd(-1)
        os.setsid()
        if msg.get("tty"):
            fcntl.ioctl(fds[0], termios.TIOCSCTTY, 0)
        for fd in self.user_cgroups:
            os.write(fd, b"0")
        if not self.namespace:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        with contextlib.suppress(OSError):
            write_all("/proc/self/oom_score_adj", "0")
        std = [fds[0]] * 3 if msg.get("tty") else fds
        for i, fd in enumerate(std):
            os.dup2(fd, i)
        cwd = str(msg["cwd"])
        try:
            os.chdir(cwd)
        except OSError as e:
            raise OSError(e.errno, f"cannot change to the directory {cwd}: {e.strerror}") from None
        os.closerange(3, err_w)
        os.closerange(err_w + 1, 1 << 20)
        # The capabilities went from the agent's bounding set when it started (inherited).
        # execve resets handled signals; ignored ones (SIGPIPE, SIGXFSZ, SIGINT...) stay so.
        for sig in self.ignored_signals:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        argv = [str(a) for a in msg["argv"]]
        env = {str(k): str(v) for k, v in msg["env"].items()}
        try:
            os.execve(argv[0], argv, env)
        except OSError as e:
            raise OSError(e.errno, f"cannot run {argv[0]}: {e.strerror}") from None

    def _settle(self, p: _Proc) -> None:
        """Read a child's error pipe: report ``spawned`` or ``spawn_failed``."""
        fd, p.err_fd = p.err_fd, None
        if fd is None:
            return
        try:
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
        if data:
            p.failed = True
            msg = {"type": "spawn_failed", "id": p.id, "message": data.decode(errors="replace")}
            send(self.sock, msg)
            return
        if self.namespace:
            # As root of its PID namespace the agent may name the child in SCM_CREDENTIALS;
            # the kernel translates that pid into the runtime's namespace.
            body = json.dumps({"type": "spawned", "id": p.id, "pid": p.pid, "cred": True})
            creds = struct.pack("3i", p.pid, os.getuid(), os.getgid())
            anc = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)]
            try:
                self.sock.sendmsg([body.encode()], anc)
                return
            except OSError:
                pass
        send(self.sock, {"type": "spawned", "id": p.id, "pid": p.pid, "cred": False})

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            p = self.by_pid.pop(pid, None)
            if p is None:
                continue
            self.by_id.pop(p.id, None)
            self._settle(p)
            if not p.failed:
                code, sig = wait_status(status)
                send(self.sock, {"type": "exited", "id": p.id, "code": code, "signal": sig})

    # -- the loop

    def handle(self, msg: Msg, fds: list[int]) -> None:
        """Act on one message from the runtime."""
        kind = msg.get("type")
        if kind == "spawn":
            self.spawn(msg, fds)
            return
        for fd in fds:
            os.close(fd)
        if kind == "signal":
            p = self.by_id.get(str(msg.get("id")))
            if p is not None:
                sig = int(msg["signal"])
                if msg.get("tree"):
                    self._signal_set(lambda t: self._tree(t, p), sig)
                else:
                    self._kill({p.pid}, sig)
        elif kind == "signal_all":
            self._signal_set(self._mine, int(msg["signal"]))
        elif kind in ("freeze", "thaw"):
            sig = signal.SIGSTOP if kind == "freeze" else signal.SIGCONT
            self._signal_set(self._mine, sig)
            send(self.sock, {"type": "frozen" if kind == "freeze" else "thawed"})
        elif kind == "shutdown":
            self._signal_set(self._mine, signal.SIGTERM)
            self._signal_set(self._mine, signal.SIGCONT)
            self.deadline = time.monotonic() + max(0.0, float(msg.get("grace", 0)))
        else:
            send(self.sock, {"type": "protocol_error", "message": f"unknown message {kind!r}"})

    def run(self) -> None:
        """Serve until ``shutdown`` completes or the runtime closes the socket."""
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        watched: set[int] = set()
        while True:
            pending = {p.err_fd: p for p in self.by_pid.values() if p.err_fd is not None}
            for fd in watched - set(pending):
                poller.unregister(fd)
            for fd in set(pending) - watched:
                poller.register(fd, select.POLLIN)
            watched = set(pending)
            timeout = None if self.deadline is None else 20
            for fd, _ in poller.poll(timeout):
                if fd == self.wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self.wake_r, 4096)
                elif fd in pending and pending[fd].err_fd == fd:
                    self._settle(pending[fd])
                elif fd == self.sock.fileno():
                    msg, fds = recv(self.sock)
                    if msg is None:
                        self.finish()
                    self.handle(msg, fds)
            self._reap()
            if self.deadline is not None:
                table = _proc_table()
                if not self._mine(table) or time.monotonic() >= self.deadline:
                    self.finish()

    def finish(self) -> NoReturn:
        """Report the exits there are, kill what is left and exit (as PID 1, the kernel kills
        the rest of the namespace)."""
        self._reap()
        if not self.namespace:
            self._signal_set(self._mine, signal.SIGKILL)
            self._reap()
        os._exit(0)
