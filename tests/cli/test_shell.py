"""``archil shell``: a shell through the process protocol's terminal mode, driven by a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import termios
import time
import uuid

from .helpers import ARCHIL, Cli


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """The console script on the far side of a pseudo-terminal."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the console script, its terminal the pty
            os.execve(str(ARCHIL), [str(ARCHIL), *args], env)
        self.output = b""

    def read_until(self, needle: bytes, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # the child is gone
                    break
                if not data:
                    break
                self.output += data
        assert needle in self.output, self.output
        return self.output

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                with _quiet():
                    while True:
                        data = os.read(self.fd, 65536)
                        if not data:
                            break
                        self.output += data
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            with _quiet():
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if ready:
                    self.output += os.read(self.fd, 65536)
        os.kill(self.pid, 9)
        raise AssertionError(f"the shell did not end: {self.output!r}")


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def test_shell_through_a_terminal(cli: Cli) -> None:
    with cli.client() as client:
        disk = client.disks.create(f"cli-shell-{uuid.uuid4().hex[:8]}")
        client.objects.put(disk.id, "marker.txt", b"on the disk\n")
    term = Terminal(["shell", disk.id], cli.env)
    _set_size(term.fd, 100, 30)
    # Typed while the sandbox starts: kept, and run once the shell is up.
    term.send("stty size; cat /mnt/archil/marker.txt; pwd\r")
    term.read_until(b"30 100\r\n")
    term.read_until(b"on the disk\r\n/mnt/archil\r\n")
    _set_size(term.fd, 120, 40)  # SIGWINCH: the new size goes to the sandbox's terminal
    time.sleep(0.5)
    term.send("stty size; echo hi; exit 3\r")
    assert term.wait() == 3
    lines = term.output.replace(b"\r\n", b"\n").split(b"\n")
    assert any(line.endswith(b"\r40 120") for line in lines), lines
    assert b"hi" in lines, lines
    assert b"deleted in" in term.output
    with cli.client() as client:
        assert client.sandboxes.list(disk_id=disk.id) == []
    assert cli.server.api_key.encode() not in term.output
