"""The zygote, the thread that starts it, and the messages of the runtime's sockets.

The zygote (:mod:`archil.local._agent.zygote`) runs once per runtime and forks a helper for
each sandbox. It is started from a long-lived thread, since its ``PR_SET_PDEATHSIG`` follows
the thread that forked it: the death of the server takes the zygote with it (and in
namespace mode every sandbox after it). Messages are JSON objects, one per
``SOCK_SEQPACKET`` message, with the sender's pid attached by the kernel (see
:mod:`archil.local._agent` for the protocol).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archil.local.mounts import BootError
from archil.local.runtime._process import BASE_PATH

logger = logging.getLogger("archil")

# The agent package runs as a top-level ``_agent`` loaded from its directory (it imports
# nothing of archil, and nothing beside it can shadow a module it imports).
_AGENT_DIR = str(Path(__file__).parents[1] / "_agent")
_AGENT_MAIN = (
    "import sys, importlib.util as u; "
    "s = u.spec_from_file_location('_agent', sys.argv[1] + '/__init__.py', "
    "submodule_search_locations=[sys.argv[1]]); "
    "m = sys.modules['_agent'] = u.module_from_spec(s); "
    "s.loader.exec_module(m); "
    "import _agent.zygote; "
    "sys.exit(_agent.zygote.main(sys.argv[2:]))"
)
_MAX_MSG = 1 << 18


# -- messages --------------------------------------------------------------------------------


def _recv(sock: socket.socket) -> tuple[dict[str, Any] | None, int | None]:
    """One message from a helper or agent and the sender pid the kernel attached."""
    try:
        data, anc, _flags, _ = sock.recvmsg(_MAX_MSG, socket.CMSG_SPACE(12))
    except (ConnectionResetError, OSError):
        return None, None
    if not data:
        return None, None
    pid = None
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(value) >= 12:
            pid = struct.unpack("3i", value[:12])[0]
    try:
        msg = json.loads(data)
    except ValueError:
        return {"type": "invalid"}, pid
    return (msg if isinstance(msg, dict) else {"type": "invalid"}), pid


def _send(sock: socket.socket, lock: threading.Lock, msg: dict[str, Any], fds: list[int]) -> None:
    data = json.dumps(msg).encode()
    if len(data) > _MAX_MSG:
        raise ValueError(f"the request is too large ({len(data)} bytes)")
    with lock:
        if fds:
            socket.send_fds(sock, [data], fds)
        else:
            sock.send(data)


# -- the zygote -------------------------------------------------------------------------------


class _Spawner:
    """One long-lived thread that starts zygotes: ``PR_SET_PDEATHSIG`` follows the thread
    that forked, so a short-lived one would take the zygote with it when it ends."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="archil-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._queue.get()()

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen(argv, **kwargs)`` on the spawner thread."""
        done = threading.Event()
        result: list[subprocess.Popen[bytes] | BaseException] = []

        def job() -> None:
            try:
                result.append(subprocess.Popen(argv, **kwargs))
            except BaseException as e:
                result.append(e)
            done.set()

        self._queue.put(job)
        done.wait()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]


class _Zygote:
    """The runtime's end of one zygote process."""

    def __init__(
        self,
        spawner: _Spawner,
        log_path: Path,
        on_ended: Callable[[str, int | None, int | None], None],
    ) -> None:
        self._on_ended = on_ended
        self._lock = threading.Lock()
        self.dead = threading.Event()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        argv = [sys.executable, "-S", "-I", "-c", _AGENT_MAIN, _AGENT_DIR, "zygote"]
        argv.append(str(theirs.fileno()))
        argv.append(str(os.getpid()))
        try:
            with open(log_path, "ab") as log:
                self.proc = spawner.popen(
                    argv,
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    cwd="/",
                    env={"PATH": BASE_PATH, "LANG": "C.UTF-8"},
                )
        finally:
            theirs.close()
        ours.settimeout(10.0)
        msg, _ = _recv(ours)
        ours.settimeout(None)
        if msg is None or msg.get("type") != "ready":
            self.proc.kill()
            self.proc.wait()
            ours.close()
            raise BootError(f"the sandbox zygote did not start (see {log_path})")
        self.pid = self.proc.pid
        threading.Thread(target=self._read, name="archil-zygote", daemon=True).start()

    def _read(self) -> None:
        while True:
            msg, _ = _recv(self.sock)
            if msg is None:
                break
            if msg.get("type") == "ended":
                self._on_ended(str(msg.get("id")), msg.get("code"), msg.get("signal"))
            elif msg.get("type") == "protocol_error":
                logger.warning("sandbox zygote: %s", msg.get("message"))
        self.sock.close()
        self.dead.set()

    @property
    def alive(self) -> bool:
        """False once the zygote has exited."""
        return not self.dead.is_set() and self.proc.poll() is None

    def create(self, token: str, config: dict[str, Any], fds: list[int]) -> None:
        """Ask for a new sandbox helper."""
        _send(self.sock, self._lock, {"type": "create", "id": token, "config": config}, fds)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the zygote (every helper it forked dies with it)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.dead.wait(timeout)
