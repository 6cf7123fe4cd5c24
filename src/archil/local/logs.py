"""Per-container append-only logs for the local control plane.

Each container's log is one JSON-lines file, ``<root>/<container_id>.jsonl``, one entry a
line: ``{"stream": ..., "offset": ..., "data": ...}``. ``offset`` is the entry's 0-based
sequence number within its container; ``stream`` is one of ``build``, ``stdout``,
``stderr`` or ``system``.

The store keeps, per container, the byte position of every entry in memory, so a reader
that follows a log (``read(cid, offset=n)`` again and again) seeks straight to its entry
instead of rescanning the file. After a restart the index is rebuilt by scanning the file
once, on first use; a half-written last line (a crash in the middle of a write) is cut off.

:class:`LineChunker` turns a byte stream into log chunks: one chunk per line, or 64 KiB
pieces of a long line without a newline, decoded as UTF-8 with ``errors="replace"`` (a
character split across reads is kept whole).
"""

from __future__ import annotations

import codecs
import json
import os
import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["STREAMS", "LineChunker", "LogStore"]

STREAMS = frozenset({"build", "stdout", "stderr", "system"})
"""The streams a log entry can belong to."""

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_READ_BLOCK = 1 << 20
DEFAULT_CHUNK = 64 * 1024


class LineChunker:
    """Split a byte stream into text chunks: lines, or ``max_chunk``-byte pieces of long lines.

    Feed it bytes as they arrive with :meth:`feed` and call :meth:`flush` at the end of the
    stream. No byte is lost: the concatenation of all chunks is the whole stream decoded
    with ``errors="replace"``. A chunk keeps its trailing newline.
    """

    def __init__(self, max_chunk: int = DEFAULT_CHUNK) -> None:
        if max_chunk < 4:
            raise ValueError("max_chunk must be at least 4 bytes")
        self._max = max_chunk
        self._buf = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> list[str]:
        """Add ``data`` and return the chunks it completes."""
        self._buf += data
        out: list[str] = []
        start = 0
        buf = self._buf
        size = len(buf)
        while start < size:
            nl = buf.find(b"\n", start, start + self._max)
            if nl != -1:
                end = nl + 1
            elif size - start >= self._max:
                end = start + self._max
            else:
                break
            text = self._decoder.decode(bytes(buf[start:end]))
            if text:
                out.append(text)
            start = end
        if start:
            del buf[:start]
        return out

    def flush(self) -> list[str]:
        """Return what is left at the end of the stream (at most one chunk)."""
        text = self._decoder.decode(bytes(self._buf), final=True)
        self._buf.clear()
        return [text] if text else []


class _Log:
    """In-memory state of one container's log file."""

    __slots__ = ("cond", "fd", "index", "lock", "path", "size")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.index = array("q")
        self.size = 0
        self.fd: int | None = None


def _encode(entry: dict[str, Any]) -> bytes:
    text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (text + "\n").encode("utf-8", "replace")


def _decode(raw: bytes, offset: int) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
        return {"stream": str(obj["stream"]), "offset": offset, "data": str(obj["data"])}
    except (ValueError, KeyError, TypeError):
        return {"stream": "system", "offset": offset, "data": "<unreadable log entry>\n"}


class LogStore:
    """Append-only JSON-lines logs, one file per container, safe to use from many threads.

    ``root`` is created if missing. ``max_open_files`` bounds the number of file
    descriptors kept open for appending (least recently used ones are closed).
    """

    def __init__(self, root: Path, *, max_open_files: int = 64) -> None:
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        self._logs: dict[str, _Log] = {}
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _Log] = OrderedDict()
        self._max_open = max(1, max_open_files)

    @property
    def root(self) -> Path:
        """The directory holding the log files."""
        return self._root

    def path_for(self, container_id: str) -> Path:
        """The log file of ``container_id`` (it may not exist)."""
        if not isinstance(container_id, str) or not _ID_RE.match(container_id):
            raise ValueError(f"invalid container id for a log: {container_id!r}")
        return self._root / f"{container_id}.jsonl"

    # -- internal state -------------------------------------------------------

    def _get(self, container_id: str) -> _Log:
        path = self.path_for(container_id)
        with self._lock:
            log = self._logs.get(container_id)
            if log is not None:
                return log
            log = _Log(path)
            log.lock.acquire()
            self._logs[container_id] = log
        try:
            self._scan(log)
        finally:
            log.lock.release()
        return log

    @staticmethod
    def _scan(log: _Log) -> None:
        """Rebuild the index of ``log`` from its file (after a restart)."""
        try:
            f = open(log.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return
        index = array("q")
        pos = 0
        line_start = 0
        with f:
            while True:
                block = f.read(_READ_BLOCK)
                if not block:
                    break
                i = 0
                while True:
                    nl = block.find(b"\n", i)
                    if nl == -1:
                        break
                    index.append(line_start)
                    line_start = pos + nl + 1
                    i = nl + 1
                pos += len(block)
        if line_start != pos:
            os.truncate(log.path, line_start)
        log.index = index
        log.size = line_start

    def _fd(self, container_id: str, log: _Log) -> int:
        """An append descriptor for ``log`` (caller holds ``log.lock``)."""
        if log.fd is not None:
            with self._lock:
                if container_id in self._open:
                    self._open.move_to_end(container_id)
            return log.fd
        fd = os.open(log.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        log.fd = fd
        evict: list[tuple[str, _Log]] = []
        with self._lock:
            self._open[container_id] = log
            while len(self._open) > self._max_open:
                evict.append(self._open.popitem(last=False))
        for other_id, other in evict:
            if other is log or not other.lock.acquire(blocking=False):
                with self._lock:
                    self._open[other_id] = other
                continue
            try:
                if other.fd is not None:
                    os.close(other.fd)
                    other.fd = None
            finally:
                other.lock.release()
        return fd

    # -- public API -------------------------------------------------------------

    def append(self, container_id: str, stream: str, data: str) -> int:
        """Append one entry and return its offset."""
        return self.extend(container_id, [(stream, data)])

    def extend(self, container_id: str, entries: Iterable[tuple[str, str]]) -> int:
        """Append ``(stream, data)`` entries in one write; return the offset of the first.

        When ``entries`` is empty, returns the offset the next entry will get.
        """
        items = list(entries)
        for stream, data in items:
            if stream not in STREAMS:
                raise ValueError(f"unknown log stream {stream!r}")
            if not isinstance(data, str):
                raise TypeError("log data must be str")
        log = self._get(container_id)
        with log.lock:
            first = len(log.index)
            if not items:
                return first
            fd = self._fd(container_id, log)
            payload = bytearray()
            starts: list[int] = []
            for n, (stream, data) in enumerate(items):
                starts.append(log.size + len(payload))
                payload += _encode({"stream": stream, "offset": first + n, "data": data})
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            log.index.extend(starts)
            log.size += len(payload)
            log.cond.notify_all()
            return first

    def count(self, container_id: str) -> int:
        """The number of entries in the log (0 for an unknown container)."""
        log = self._get(container_id)
        with log.lock:
            return len(log.index)

    def read(
        self, container_id: str, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Entries ``{"stream", "offset", "data"}`` with an offset ``>= offset``, oldest first."""
        offset = max(0, int(offset))
        if limit is not None and limit <= 0:
            return []
        log = self._get(container_id)
        with log.lock:
            n = len(log.index)
            if offset >= n:
                return []
            stop = n if limit is None else min(n, offset + limit)
            positions = log.index[offset:stop]
            end = log.index[stop] if stop < n else log.size
        return self._read_range(log.path, offset, positions, end)

    @staticmethod
    def _read_range(
        path: Path, first: int, positions: array[int], end: int
    ) -> list[dict[str, Any]]:
        if not positions:
            return []
        start = positions[0]
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(end - pos, 8 << 20), pos)
                if not chunk:
                    break
                chunks.append(chunk)
                pos += len(chunk)
        finally:
            os.close(fd)
        blob = b"".join(chunks)
        out: list[dict[str, Any]] = []
        for i, p in enumerate(positions):
            a = p - start
            b = (positions[i + 1] - start) if i + 1 < len(positions) else len(blob)
            out.append(_decode(blob[a:b], first + i))
        return out

    def wait(self, container_id: str, offset: int, timeout: float | None = None) -> bool:
        """Block until the log has an entry at ``offset`` (or the timeout runs out).

        Returns True when ``count(container_id) > offset``.
        """
        log = self._get(container_id)
        with log.cond:
            return log.cond.wait_for(lambda: len(log.index) > offset, timeout)

    def tail_text(self, container_id: str, max_lines: int = 50) -> str:
        """The last ``max_lines`` lines of the container's stdout and stderr, as one string."""
        if max_lines <= 0:
            return ""
        log = self._get(container_id)
        with log.lock:
            n = len(log.index)
            size = log.size
            index = log.index[:]
        texts: list[str] = []
        lines = 0
        stop = n
        batch = max(64, max_lines * 2)
        while stop > 0 and lines <= max_lines:
            begin = max(0, stop - batch)
            end = index[stop] if stop < n else size
            entries = self._read_range(log.path, begin, index[begin:stop], end)
            for e in reversed(entries):
                if e["stream"] in ("stdout", "stderr"):
                    texts.append(e["data"])
                    lines += e["data"].count("\n") or 1
            stop = begin
        text = "".join(reversed(texts))
        return "\n".join(text.splitlines()[-max_lines:])

    def delete(self, container_id: str) -> None:
        """Delete the container's log (a no-op when there is none)."""
        path = self.path_for(container_id)
        with self._lock:
            log = self._logs.pop(container_id, None)
            self._open.pop(container_id, None)
        if log is not None:
            with log.lock:
                if log.fd is not None:
                    os.close(log.fd)
                    log.fd = None
                log.index = array("q")
                log.size = 0
                log.cond.notify_all()
        path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close every open file descriptor (the store stays usable)."""
        with self._lock:
            logs = list(self._open.values())
            self._open.clear()
        for log in logs:
            with log.lock:
                if log.fd is not None:
                    os.close(log.fd)
                    log.fd = None
