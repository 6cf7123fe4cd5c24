"""The zygote, which forks a helper for each sandbox, and the helper, which forks its agent."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys

from .agent import Agent
from .linux import (
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MS_PRIVATE,
    MS_REC,
    PR_SET_CHILD_SUBREAPER,
    die_with_parent,
    drop_capabilities,
    mount,
    prctl,
    unshare,
    wait_status,
    write_all,
)
from .rootfs import build_root
from .wire import Msg, describe, recv, send


def _enter_namespaces(cfg: Msg) -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS
    if cfg.get("userns"):
        flags |= CLONE_NEWUSER
    unshare(flags)
    if cfg.get("userns"):
        write_all("/proc/self/setgroups", "deny")
        write_all("/proc/self/uid_map", f"0 {uid} 1")
        write_all("/proc/self/gid_map", f"0 {gid} 1")
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
    die_with_parent(alive_fd=alive_r)
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
    die_with_parent(parent=zygote)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sock = socket.socket(fileno=fds[0])
    for fd in fds[1:]:
        os.close(fd)
    try:
        with contextlib.suppress(OSError):
            write_all("/proc/self/oom_score_adj", "-1000")
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
    code, sig = wait_status(status)
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
        code, sig = wait_status(status)
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
    die_with_parent(parent=parent)
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
    print("usage: zygote <socket fd> <parent pid>", file=sys.stderr)
    return 2
