"""Local file streaming pairs that ``scripts/unasync.py`` maps onto each other.

``aiter_file``/``awrite_file`` do their disk I/O in a worker thread so the
event loop keeps running; ``iter_file``/``write_file`` are the blocking twins.
Both read and write in chunks, so memory stays constant whatever the size.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

__all__ = ["aiter_file", "awrite_file", "iter_file", "write_file"]

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
