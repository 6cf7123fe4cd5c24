"""``archil shell DISK_ID``: an interactive shell in a sandbox with the disk at /mnt/archil.

The shell runs in the process protocol's terminal mode: this terminal is put in
raw mode and its keys sent as the process's input, its window size is sent at
the start and on every change (SIGWINCH), and the shell's exit code is this
command's. The sandbox is deleted when the shell ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from ._base import ArchilCommand, state
from ._output import progress
from .sandboxes import discard

if TYPE_CHECKING:
    from .._sync.resources.sandboxes import Process

__all__ = ["shell"]

_DEFAULT_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"
_SHELL_IDLE_TTL = 1800


def _window_size() -> tuple[int, int]:
    """``(cols, rows)`` of this terminal (80x24 when there is none)."""
    size = shutil.get_terminal_size((80, 24))
    return max(size.columns, 1), max(size.lines, 1)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """This terminal in raw mode (keys go through as they are typed), restored at the end.

    What was typed while the sandbox started is kept (``TCSADRAIN``, not ``TCSAFLUSH``).
    """
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSADRAIN)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _Input(threading.Thread):
    """Sends this terminal's keys (or piped stdin) to the process, and window size changes."""

    def __init__(self, process: Process, fd: int, terminal: bool) -> None:
        super().__init__(name="archil-shell-input", daemon=True)
        self.process = process
        self.fd = fd
        self.terminal = terminal
        self.done = threading.Event()
        self.resized = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                if self.resized.is_set():
                    self.resized.clear()
                    cols, rows = _window_size()
                    self.process.resize(cols, rows)
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self.fd, 65536)
                if not data:
                    self.process.close_stdin()
                    return
                self.process.send_input(data)
        except Exception:
            # The process ended (or its connection did) while we were sending: the main
            # thread sees how it ended.
            return


@click.command(
    cls=ArchilCommand,
    epilog=(
        "\b\nExamples:\n"
        "  archil shell dsk-0123456789abcdef\n"
        "  archil shell dsk-0123456789abcdef --image python:3.12-slim\n"
        "  archil shell dsk-0123456789abcdef --cmd 'python -q'"
    ),
)
@click.argument("disk_id")
@click.option(
    "--image",
    default="python:3.11-slim",
    show_default=True,
    help="OCI reference of the sandbox's image.",
)
@click.option("--cmd", default=None, help="Run this instead of bash (or sh).")
@click.option("--vcpu", type=click.IntRange(1, 64), default=1, show_default=True, help="vCPUs.")
@click.option(
    "--mem", type=click.IntRange(128), default=2048, show_default=True, help="Memory in MiB."
)
def shell(disk_id: str, image: str, cmd: str | None, vcpu: int, mem: int) -> int:
    """Open an interactive shell in a new sandbox with DISK_ID at /mnt/archil.

    The shell's exit code is this command's; the sandbox is deleted when the
    shell ends.
    """
    from .._models import SandboxMount

    client = state().client()
    with progress(f"starting a sandbox of {image} with disk {disk_id}", done="running"):
        sandbox = client.sandboxes.create(
            base_image=image,
            mounts=[SandboxMount(disk_id=disk_id, conditional=True)],
            vcpu_count=vcpu,
            mem_size_mib=mem,
            idle_ttl_seconds=_SHELL_IDLE_TTL,
        )
    try:
        return _interact(
            sandbox.run(
                cmd or _DEFAULT_SHELL,
                cwd="/mnt/archil",
                terminal=_window_size(),
                collect_output=False,
            )
        )
    finally:
        with progress(f"deleting sandbox {sandbox.id}", done="deleted"):
            discard(sandbox)


def _interact(process: Process) -> int:
    """Connect this terminal to ``process`` until it exits; its exit code."""
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    terminal = os.isatty(stdin)
    sender = _Input(process, stdin, terminal)
    previous = None
    if terminal:
        previous = signal.signal(signal.SIGWINCH, lambda signum, frame: sender.resized.set())
    raw = _raw(stdin) if terminal else contextlib.nullcontext()
    try:
        with process, raw:
            sender.start()
            for out in process:
                os.write(stdout, out.data)
            result = process.wait()
    finally:
        sender.done.set()
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
    if result.exit_code is not None:
        return result.exit_code
    reason = f": {result.exit_reason}" if result.exit_reason else ""
    click.echo(f"archil: the shell {result.status.replace('_', ' ')}{reason}", err=True)
    return 1
