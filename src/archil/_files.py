"""Local file streaming pairs that ``scripts/unasync.py`` maps onto each other.

``aiter_file``/``awrite_file`` do their disk I/O in a worker thread so the
event loop keeps running; ``iter_file``/``write_file`` are the blocking twins.
Both read and write in chunks, so memory stays constant whatever the size.

For parallel transfers: ``aiter_file_range``/``iter_file_range`` read one
byte range of a file (a part of a multipart upload), and a :class:`PartialFile`
is a download target written at offsets (``awrite_at``/``write_at``) by
several ranged GETs at once, renamed into place only once complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

__all__ = [
    "PartialFile",
    "aiter_file",
    "aiter_file_range",
    "awrite_at",
    "awrite_file",
    "iter_file",
    "iter_file_range",
    "write_at",
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


async def awrite_file(path: StrPath, chunks: AsyncIterable[bytes | bytearray]) -> int:
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


def write_file(path: StrPath, chunks: Iterable[bytes | bytearray]) -> int:
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


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


async def awrite_at(fd: int, offset: int, data: bytes | bytearray) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (in a worker thread)."""
    await asyncio.to_thread(_pwrite_all, fd, data, offset)


def write_at(fd: int, offset: int, data: bytes | bytearray) -> None:
    """Write all of ``data`` at ``offset`` of ``fd``."""
    _pwrite_all(fd, data, offset)
