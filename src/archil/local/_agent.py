"""The zygote and the in-sandbox agent of the archil local runtime (standard library only).

The runtime runs ``python -S -I _agent.py zygote <socket fd> <parent pid>`` once; nothing
here imports ``archil``, and everything it needs is imported before any ``pivot_root``.

Processes
---------
- **zygote** (one per runtime): forks a helper **C** for each ``create`` request that
  arrives on its socket, reaps the helpers and reports their end.
- **C** (host PID namespace): sets ``PR_SET_PDEATHSIG``, ``unshare``\\ s the mount, PID
  and UTS namespaces (and the user namespace when asked, mapping uid and gid 0 to its own),
  makes every mount private, forks **P**, reports P's pid, waits for it and exits with its
  status.
- **P** (the agent; PID 1 of the sandbox): waits for ``boot`` (so that the runtime can
  prepare a sandbox before it is asked for one), joins the sandbox's cgroups and CPUs,
  mounts the root from the plan it was given, mounts ``/proc``, ``pivot_root``\\ s into it,
  sets the hostname, reports ``ready`` (or ``error`` and exits 125), then spawns processes
  on request, reaps every child, orphans included, and reports the exits. In process mode
  (no namespaces) P mounts nothing and is a child subreaper instead.

The death of the server kills the zygote (its ``PDEATHSIG``), whose death kills every C,
whose death kills its P, whose death (PID 1) makes the kernel kill the whole sandbox.

Messages
--------
JSON objects, one per ``SOCK_SEQPACKET`` message; file descriptors ride along as
``SCM_RIGHTS``.

Runtime to zygote (zygote socket): ``create`` {``id``, ``config``: {``namespace``: bool,
``userns``: bool}} with fds ``[sandbox socket]``. Zygote to runtime: ``ready`` {``pid``}
once, ``ended`` {``id``, ``pid``, ``code``, ``signal``} for each helper it reaps.

Sandbox socket, helper and agent to runtime: ``init`` {``pid``: P's host pid} from C;
``ready`` or ``error`` {``message``} from P; ``spawned`` {``id``, ``pid``, ``cred``} (with
``cred`` true, the pid in the message's ``SCM_CREDENTIALS`` is the process's pid in the
receiver's namespace); ``spawn_failed`` {``id``, ``message``}; ``exited`` {``id``,
``code``, ``signal``} (one of them null); ``ended`` {``code``, ``signal``} from C when P is
gone; ``protocol_error`` {``message``}.

Runtime to agent: ``boot`` {``config``: {``hostname``, ``root`` (host directory of the new
root), ``plan`` (mounts, below), ``cpus`` (list or null), ``agent_cgroups``: n, ``marker``
("NAME=value" in every process of a process-mode sandbox, or null)}} with fds
``[*n cgroup files the agent joins, *cgroup files each user process joins]``, once;
``spawn`` {``id``, ``argv``, ``env``, ``cwd``, ``tty``: bool, ``marker``
("NAME=value" or null)} with fds ``[stdin, stdout, stderr]`` or ``[tty slave]``;
``signal`` {``id``, ``signal``, ``tree``: bool}; ``signal_all`` {``signal``};
``freeze`` / ``thaw`` (SIGSTOP / SIGCONT to every process but the agent, for machines
without a freezer cgroup; answered ``frozen`` / ``thawed``); ``shutdown`` {``grace``}:
SIGTERM to everything, SIGKILL to what is left after ``grace`` seconds, then exit.

A mount plan is a list of {``kind``, ``target`` (a path inside the sandbox, resolved
without leaving the new root), ``what`` (for error messages), ...}: ``overlay``
{``lower``: [dirs], ``upper``, ``work``, ``options``: [str]}, ``bind`` {``source``,
``recursive``, ``readonly``}, ``tmpfs`` {``data``}, ``proc``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
import termios
import time
from collections.abc import Callable
from typing import Any, NoReturn

Msg = dict[str, Any]
Table = dict[int, tuple[int, int]]

MAX_MSG = 1 << 18
MAX_FDS = 16

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_DROP = 24
# The capabilities a sandbox's processes keep (the common container default): enough for
# package managers and servers run as root, not enough to mount, load modules, change the
# network, the clock or the kernel's settings, or to trace processes they do not own.
KEPT_CAPABILITIES = frozenset(
    {
        0,  # CAP_CHOWN
        1,  # CAP_DAC_OVERRIDE
        3,  # CAP_FOWNER
        4,  # CAP_FSETID
        5,  # CAP_KILL
        6,  # CAP_SETGID
        7,  # CAP_SETUID
        8,  # CAP_SETPCAP
        10,  # CAP_NET_BIND_SERVICE
        13,  # CAP_NET_RAW
        18,  # CAP_SYS_CHROOT
        27,  # CAP_MKNOD
        29,  # CAP_AUDIT_WRITE
        31,  # CAP_SETFCAP
    }
)
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_KEEP_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, call: str, path: str = "") -> None:
    """Raise ``OSError`` naming ``call`` (and ``path``) when a libc call returned -1."""
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}", path or None)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    """mount(2)."""
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, "mount", target)


def umount2(target: str, flags: int) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), "umount2", target)


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def drop_capabilities() -> None:
    """Remove every capability but :data:`KEPT_CAPABILITIES` from the bounding set.

    Called by the agent before it boots: the processes it forks inherit the bounding
    set, so what they run (and any set-user-ID program after it) can never hold a
    dropped capability. A process without ``CAP_SETPCAP``
    (an ordinary user on the host, in process mode) has none of them to lose.
    """
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        if cap in KEPT_CAPABILITIES:
            continue
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as e:
            if e.errno == errno.EINVAL:
                continue
            if e.errno == errno.EPERM and os.geteuid() != 0:
                return
            raise


def prctl(option: int, arg: int) -> None:
    """prctl(2) with one argument."""
    z = ctypes.c_ulong(0)
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), z, z, z), "prctl")


def pivot_root(new: str, old: str) -> None:
    """pivot_root(2) (glibc has no wrapper)."""
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown machine {os.uname().machine}")
    _check(_libc.syscall(ctypes.c_long(nr), _b(new), _b(old)), "pivot_root", new)


def send(sock: socket.socket, msg: Msg, fds: list[int] | None = None) -> None:
    """Send one message (errors are ignored: the peer may be gone)."""
    data = json.dumps(msg).encode()
    with contextlib.suppress(OSError):
        if fds:
            socket.send_fds(sock, [data], fds)
        else:
            sock.send(data)


def recv(sock: socket.socket) -> tuple[Msg | None, list[int]]:
    """One message and its fds; ``(None, [])`` at the end of the stream."""
    try:
        data, fds, flags, _ = socket.recv_fds(sock, MAX_MSG, MAX_FDS)
    except ConnectionResetError:
        return None, []
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            os.close(fd)
        return {"type": "truncated"}, []
    try:
        msg = json.loads(data)
    except ValueError:
        msg = None
    return (msg if isinstance(msg, dict) else {"type": "invalid"}), fds


def describe(e: BaseException) -> str:
    """The message of an exception, without the ``[Errno N]`` prefix."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror if not e.filename else f"{e.strerror}: {e.filename}"
    return str(e) or type(e).__name__


def _die_with_parent(alive_fd: int | None = None, parent: int | None = None) -> None:
    """``PR_SET_PDEATHSIG=SIGKILL``, then exit at once if the parent is already gone.

    ``alive_fd`` is the read end of a pipe whose write end only the parent holds (it reads
    as end-of-file once the parent is dead); ``parent`` is its pid where it is visible.
    """
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    if alive_fd is not None and select.select([alive_fd], [], [], 0)[0]:
        os._exit(1)


def _status(status: int) -> tuple[int | None, int | None]:
    """(exit code, signal) of a wait status."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status), None


def _write_all(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


# -- the root filesystem -----------------------------------------------------------------


def resolve(root: str, path: str, create: str | None) -> str:
    """``path`` inside ``root`` with every symlink followed as if ``root`` were ``/``.

    ``create`` is ``"dir"`` or ``"file"`` to create what is missing (the last component as
    that kind, the others as directories). The result has no symlink below ``root``.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    cur, hops = root, 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            cur = cur if cur == root else os.path.dirname(cur)
            continue
        nxt = f"{cur}/{name}"
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            if create is None:
                raise
            if parts or create == "dir":
                os.mkdir(nxt, 0o755)
            else:
                os.close(os.open(nxt, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
            cur = nxt
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            link = os.readlink(nxt)
            cur = root if link.startswith("/") else cur
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        cur = nxt
    return cur


def _mount_one(root: str, op: Msg) -> None:
    kind = op["kind"]
    if kind == "overlay":
        target = resolve(root, op["target"], "dir")
        opts = [
            "lowerdir=" + ":".join(op["lower"]),
            "upperdir=" + op["upper"],
            "workdir=" + op["work"],
            *op.get("options", []),
        ]
        mount("overlay", target, "overlay", 0, ",".join(opts))
    elif kind == "bind":
        source = op["source"]
        target = resolve(root, op["target"], "dir" if os.path.isdir(source) else "file")
        mount(source, target, None, MS_BIND | (MS_REC if op.get("recursive") else 0), None)
        if op.get("readonly"):
            # Keep the flags a user namespace may not drop (statvfs's ST_* bits match
            # MS_* ones, but for ST_RELATIME).
            have = os.statvfs(target).f_flag
            keep = (have & _KEEP_FLAGS) | (MS_RELATIME if have & os.ST_RELATIME else 0)
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, None)
    elif kind == "tmpfs":
        target = resolve(root, op["target"], "dir")
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, op.get("data"))
    elif kind == "proc":
        target = resolve(root, op["target"], "dir")
        mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    else:
        raise OSError(errno.EINVAL, f"unknown mount kind {kind!r}")


def build_root(root: str, plan: list[Msg]) -> None:
    """Mount ``plan`` under ``root``, then make ``root`` the process's ``/``."""
    for op in plan:
        try:
            _mount_one(root, op)
        except OSError as e:
            raise OSError(e.errno, f"{op['what']}: {e.strerror}") from None
    try:
        os.chdir(root)
        pivot_root(".", ".")
        umount2(".", MNT_DETACH)
        os.chdir("/")
    except OSError as e:
        raise OSError(e.errno, f"cannot switch to the new root: {e.strerror}") from None


# -- the agent -----------------------------------------------------------------------------


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
            _write_all("/proc/self/oom_score_adj", "0")
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
                code, sig = _status(status)
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


# -- the helper (C) and the zygote ---------------------------------------------------------


def _enter_namespaces(cfg: Msg) -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS
    if cfg.get("userns"):
        flags |= CLONE_NEWUSER
    unshare(flags)
    if cfg.get("userns"):
        _write_all("/proc/self/setgroups", "deny")
        _write_all("/proc/self/uid_map", f"0 {uid} 1")
        _write_all("/proc/self/gid_map", f"0 {gid} 1")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)


def _setup(sock: socket.socket, cfg: Msg, fds: list[int]) -> Agent:
    """P, on ``boot``: cgroups, CPUs, the root filesystem and hostname (or subreaping)."""
    n_agent = int(cfg.get("agent_cgroups", 0))
    for fd in fds[:n_agent]:
        os.write(fd, b"0")
        os.close(fd)
    if cfg.get("cpus"):
        os.sched_setaffinity(0, [int(c) for c in cfg["cpus"]])
    if cfg["namespace"]:
        build_root(str(cfg["root"]), list(cfg["plan"]))
        socket.sethostname(str(cfg["hostname"]))
    else:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    return Agent(sock, cfg, fds[n_agent:])


def _agent_main(sock: socket.socket, cfg: Msg, alive_r: int) -> None:
    """P: wait for ``boot``, set the sandbox up, report ``ready`` (or ``error``), serve."""
    _die_with_parent(alive_fd=alive_r)
    os.close(alive_r)
    # P never runs a program itself: dropping the capabilities from its bounding set (in
    # its user namespace, which starts with a full one) leaves P's own intact, and every
    # process it forks inherits the drop. Done while the sandbox is prepared, before boot.
    dropped: OSError | None = None
    try:
        drop_capabilities()
    except OSError as e:
        dropped = e
    msg, fds = recv(sock)
    if msg is None or msg.get("type") != "boot":
        os._exit(0)  # a prepared sandbox that was not used
    try:
        if dropped is not None:
            raise dropped
        agent = _setup(sock, {**cfg, **dict(msg["config"])}, fds)
    except Exception as e:
        send(sock, {"type": "error", "message": describe(e)})
        os._exit(125)
    send(sock, {"type": "ready"})
    agent.run()


def _helper_main(cfg: Msg, fds: list[int], zygote: int) -> None:
    """C: namespaces, then fork P (PID 1 of the sandbox) and wait for it."""
    _die_with_parent(parent=zygote)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sock = socket.socket(fileno=fds[0])
    for fd in fds[1:]:
        os.close(fd)
    try:
        with contextlib.suppress(OSError):
            _write_all("/proc/self/oom_score_adj", "-1000")
        if cfg["namespace"]:
            _enter_namespaces(cfg)
        alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
    except OSError as e:
        send(sock, {"type": "error", "message": f"cannot create the sandbox: {describe(e)}"})
        os._exit(125)
    if pid == 0:
        os.close(alive_w)
        try:
            _agent_main(sock, cfg, alive_r)
        finally:
            os._exit(125)
    os.close(alive_r)
    send(sock, {"type": "init", "pid": pid})
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code, sig = _status(status)
    send(sock, {"type": "ended", "code": code, "signal": sig})
    os._exit(code if code is not None else 128 + (sig or 0))


def _reap_helpers(sock: socket.socket, children: dict[int, str]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code, sig = _status(status)
        ended = {"type": "ended", "id": children.pop(pid, ""), "pid": pid}
        send(sock, {**ended, "code": code, "signal": sig})


def _create(sock: socket.socket, msg: Msg, fds: list[int], closing: list[int]) -> int:
    """Fork the helper of one sandbox; its pid, or -1."""
    me = os.getpid()
    try:
        pid = os.fork()
    except OSError as e:
        reply = socket.socket(fileno=fds[0])
        send(reply, {"type": "error", "message": f"cannot fork: {describe(e)}"})
        reply.detach()
        pid = -1
    if pid == 0:
        try:
            sock.close()
            for fd in closing:
                os.close(fd)
            _helper_main(dict(msg["config"]), fds, me)
        finally:
            os._exit(126)
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    return pid


def zygote(sock_fd: int, parent: int) -> None:
    """Fork a helper for each ``create``; report each helper's end; exit at end of stream."""
    _die_with_parent(parent=parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=sock_fd)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    children: dict[int, str] = {}
    send(sock, {"type": "ready", "pid": os.getpid()})
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(wake_r, 4096)
        _reap_helpers(sock, children)
        if sock.fileno() not in ready:
            continue
        msg, fds = recv(sock)
        if msg is None:
            os._exit(0)
        if msg.get("type") != "create" or not fds:
            for fd in fds:
                os.close(fd)
            send(sock, {"type": "protocol_error", "message": "expected create"})
            continue
        pid = _create(sock, msg, fds, [wake_r, wake_w])
        if pid > 0:
            children[pid] = str(msg.get("id", ""))


def main(argv: list[str]) -> int:
    """``zygote <socket fd> <parent pid>``."""
    if len(argv) == 3 and argv[0] == "zygote":
        zygote(int(argv[1]), int(argv[2]))
        return 0
    print("usage: _agent.py zygote <socket fd> <parent pid>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
