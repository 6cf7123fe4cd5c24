"""The output of sandbox processes, addressed by the process protocol's byte offsets.

Each process's output is a file under the data directory whose position *is*
the offset of the protocol (``docs/process-protocol.md``): the number of output
bytes, both streams together, before a byte. So a client that reconnects and
attaches from the offset it reached reads the rest from the file, however long
ago it was written, and memory holds only where each stream's runs begin.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["OutputLog"]


class OutputLog:
    """The output of one sandbox process: bytes of both streams, addressed by offset.

    The bytes go to a file whose position *is* the protocol offset (the count of
    output bytes before them, both streams together); a small in-memory list of
    ``(offset, stream)`` runs says which stream each byte came from. Writers (pump
    threads) call :meth:`append`; readers call :meth:`frames` to get
    ``(stream, offset, payload)`` pieces from an offset. ``notify`` is called (on the
    writer's thread) after every change; the owner uses it to wake readers on its loop.
    """

    def __init__(self, path: Path, notify: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()
        self._runs: list[tuple[int, int]] = []
        self._size = 0
        self._closed = False
        self._notify = notify

    @property
    def size(self) -> int:
        """The number of output bytes so far (the cursor of an ``exit`` event)."""
        return self._size

    @property
    def closed(self) -> bool:
        """True once no more output will come."""
        return self._closed

    def append(self, stream: int, data: bytes) -> None:
        """Add ``data`` from ``stream`` (1 stdout, 2 stderr) at the end."""
        if not data:
            return
        with self._lock:
            if self._closed or self._fd < 0:
                return
            os.pwrite(self._fd, data, self._size)
            if not self._runs or self._runs[-1][1] != stream:
                self._runs.append((self._size, stream))
            self._size += len(data)
        if self._notify is not None:
            self._notify()

    def close(self) -> None:
        """No more output: readers get what is there, then the end."""
        with self._lock:
            self._closed = True
        if self._notify is not None:
            self._notify()

    def frames(self, offset: int, limit: int = 64 * 1024) -> list[tuple[int, int, bytes]]:
        """The output from ``offset`` to the current end, as ``(stream, offset, payload)`` pieces.

        Each piece holds bytes of one stream and at most ``limit`` of them; an offset
        past the end gives nothing.
        """
        with self._lock:
            size = self._size
            runs = list(self._runs)
            fd = self._fd
        if offset >= size or fd < 0:
            return []
        out: list[tuple[int, int, bytes]] = []
        starts = [start for start, _ in runs]
        i = max(0, bisect.bisect_right(starts, offset) - 1)
        pos = max(offset, 0)
        while pos < size and i < len(runs):
            run_end = runs[i + 1][0] if i + 1 < len(runs) else size
            stream = runs[i][1]
            while pos < run_end:
                n = min(limit, run_end - pos)
                out.append((stream, pos, os.pread(fd, n, pos)))
                pos += n
            i += 1
        return out

    def discard(self) -> None:
        """Close the file and remove it."""
        with self._lock:
            fd, self._fd = self._fd, -1
            self._closed = True
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
