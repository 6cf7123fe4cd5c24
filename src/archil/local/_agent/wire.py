"""The runtime's messages: JSON objects over ``SOCK_SEQPACKET``, fds as ``SCM_RIGHTS``."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any

Msg = dict[str, Any]

MAX_MSG = 1 << 18
MAX_FDS = 16


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
