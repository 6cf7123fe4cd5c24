"""Local file streaming pairs that ``scripts/unasync.py`` maps onto each other.

``aiter_file``/``awrite_file`` do their disk I/O in a worker thread so the
event loop keeps running; ``iter_file``/``write_file`` are the blocking twins.
Both read and write in chunks, so memory stays constant whatever the size.

For parallel transfers: ``aiter_file_range``/``iter_file_range`` read one
byte range of a file (a part of a multipart upload), and a :class:`PartialFile`
is a download target written at offsets by several ranged GETs at once, each
through an :class:`AsyncRangeWriter` / :class:`RangeWriter`, and renamed into
place only once complete. The async writer gathers the body into one reused
buffer and writes it in a worker thread a MiB at a time (a thread hop per
network read would cost more than the write); the blocking one writes each
chunk as it comes, which is cheapest without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

__all__ = [
    "AsyncRangeWriter",
    "PartialFile",
    "RangeWriter",
    "aiter_file",
    "aiter_file_range",
    "awrite_file",
    "iter_file",
    "iter_file_range",
    "write_file",
]

StrPath = str | os.PathLike[str]


async def aiter_file(path: StrPath, chunk_size: int) -> AsyncIterator[bytes]:
    """Yield the bytes of the file at ``path`` in chunks of ``chunk_size``."""
    f = await asyncio.to_thread(open, os.fspath(path), "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, chunk_size):
            yield chunk
    finally:
        f.close()


def iter_file(path: StrPath, chunk_size: int) -> Iterator[bytes]:
    """Yield the bytes of the file at ``path`` in chunks of ``chunk_size``."""
    with open(os.fspath(path), "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


def _partial_path(path: StrPath) -> str:
    return f"{os.fspath(path)}.{uuid.uuid4().hex[:12]}.partial"


async def awrite_file(path: StrPath, chunks: AsyncIterable[bytes]) -> int:
    """Write ``chunks`` to ``path`` atomically (a partial file, then a rename); return the size."""
    partial = _partial_path(path)
    f = await asyncio.to_thread(open, partial, "xb")
    size = 0
    try:
        with f:
            async for chunk in chunks:
                await asyncio.to_thread(f.write, chunk)
                size += len(chunk)
        os.replace(partial, os.fspath(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return size


def write_file(path: StrPath, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``path`` atomically (a partial file, then a rename); return the size."""
    partial = _partial_path(path)
    size = 0
    try:
        with open(partial, "xb") as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
        os.replace(partial, os.fspath(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return size


async def aiter_file_range(
    path: StrPath, offset: int, length: int, chunk_size: int
) -> AsyncIterator[bytes]:
    """Yield ``length`` bytes of the file at ``path`` from ``offset``, in chunks of ``chunk_size``."""
    fd = await asyncio.to_thread(os.open, os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        end = offset + length
        while offset < end:
            chunk = await asyncio.to_thread(os.pread, fd, min(chunk_size, end - offset), offset)
            if not chunk:
                raise OSError(f"{os.fspath(path)!r} is shorter than expected (changed while read?)")
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)


def iter_file_range(path: StrPath, offset: int, length: int, chunk_size: int) -> Iterator[bytes]:
    """Yield ``length`` bytes of the file at ``path`` from ``offset``, in chunks of ``chunk_size``."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        end = offset + length
        while offset < end:
            chunk = os.pread(fd, min(chunk_size, end - offset), offset)
            if not chunk:
                raise OSError(f"{os.fspath(path)!r} is shorter than expected (changed while read?)")
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)


class PartialFile:
    """A file being downloaded in ranges: ``<path>.<random>.partial`` until :meth:`commit`.

    The partial file is created exclusively and sized up front; :meth:`discard`
    (or a failed :meth:`commit`) removes it, so ``path`` is either untouched or
    complete. Use it as a context manager to discard it on any error.
    """

    def __init__(self, path: StrPath, size: int) -> None:
        self.path = os.fspath(path)
        self.partial = _partial_path(path)
        self.fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        if size:
            # Never truncate a new file to 0: ext4 would then flush all of it on close.
            try:
                os.ftruncate(self.fd, size)
            except BaseException:
                self.discard()
                raise

    def commit(self) -> None:
        """Close the file and rename it over ``path``."""
        try:
            os.close(self.fd)
            self.fd = -1
            os.replace(self.partial, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and remove the partial file (no-op once committed)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.discard()


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class AsyncRangeWriter:
    """Writes bytes ``start`` to ``end`` of the file ``fd`` from chunks as they arrive.

    Chunks are gathered in one reused buffer and written in a worker thread
    when it is full and on :meth:`flush`. ``position`` is the next byte to
    write: everything before it is in the file. Bytes past ``end`` are dropped.
    """

    def __init__(self, fd: int, start: int, end: int, buffer_size: int = 1 << 20) -> None:
        self.fd = fd
        self.position = start
        self.end = end
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._used = 0

    async def write(self, chunk: bytes) -> None:
        """Take a chunk (written once the buffer is full)."""
        data = memoryview(chunk)[: max(0, self.end - self.position - self._used)]
        while data:
            n = min(len(data), len(self._buf) - self._used)
            self._view[self._used : self._used + n] = data[:n]
            self._used += n
            data = data[n:]
            if self._used == len(self._buf):
                await self.flush()

    async def flush(self) -> None:
        """Write what is buffered."""
        if self._used:
            await asyncio.to_thread(_pwrite_all, self.fd, self._view[: self._used], self.position)
            self.position += self._used
            self._used = 0


class RangeWriter:
    """Writes bytes ``start`` to ``end`` of the file ``fd`` from chunks as they arrive.

    Each chunk is written at once. ``position`` is the next byte to write:
    everything before it is in the file. Bytes past ``end`` are dropped.
    """

    def __init__(self, fd: int, start: int, end: int, buffer_size: int = 1 << 20) -> None:
        self.fd = fd
        self.position = start
        self.end = end

    def write(self, chunk: bytes) -> None:
        """Write a chunk."""
        data = memoryview(chunk)[: max(0, self.end - self.position)]
        if data:
            _pwrite_all(self.fd, data, self.position)
            self.position += len(data)

    def flush(self) -> None:
        """Nothing to do: every chunk is written at once."""
