"""How the object API cuts a large transfer into parts, and the checks it shares.

The defaults and the tuning of a large transfer (threshold, part size, parts
in flight); the body of a part, made afresh for each attempt from a slice of
bytes or a range of a file; the parts of a body whose size is known or of a
stream read a few parts ahead; and the argument checks of the object modules.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass

from ..._files import aiter_file_range
from ..._models import validate_object_key
from ..._wire import MAX_CONCURRENCY, MAX_PARTS, check_count, check_part_size

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MULTIPART_THRESHOLD",
    "DEFAULT_PART_SIZE",
    "BodyFactory",
]

DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_PART_SIZE = 8 << 20
"""Bytes per part of a multipart upload or a parallel download."""
DEFAULT_MULTIPART_THRESHOLD = 16 << 20
"""Bodies and objects larger than this travel in parallel parts."""
DEFAULT_CONCURRENCY = 4
"""Parts in flight at once."""
_OCTET_STREAM = "application/octet-stream"

BodyFactory = Callable[[], AsyncIterable[bytes]]


def _check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, got {prefix!r}")
    if prefix:
        validate_object_key(prefix, "prefix")
    return prefix


def _check_upload_id(upload_id: str) -> str:
    if not isinstance(upload_id, str) or not upload_id.strip():
        raise ValueError(f"upload_id must be a non-empty string, got {upload_id!r}")
    if any(c.isspace() or ord(c) < 32 for c in upload_id):
        raise ValueError(f"upload_id {upload_id!r} contains whitespace or control characters")
    return upload_id


def _check_file_key(key: str, field: str = "key") -> str:
    validate_object_key(key, field)
    if key.endswith("/"):
        raise ValueError(f"{field} {key!r} ends with '/': that names a folder, not a file")
    return key


@dataclass(frozen=True)
class _Tuning:
    """How a large transfer is split: the threshold, the part size and the parts in flight."""

    threshold: int
    part_size: int
    concurrency: int

    @classmethod
    def of(cls, threshold: int | None, part_size: int | None, concurrency: int | None) -> _Tuning:
        part = DEFAULT_PART_SIZE if part_size is None else check_part_size(part_size)
        if threshold is None:
            limit = max(DEFAULT_MULTIPART_THRESHOLD, part)
        else:
            limit = check_count(threshold, "multipart_threshold", minimum=0)
        if concurrency is None:
            conc = DEFAULT_CONCURRENCY
        else:
            conc = check_count(concurrency, "concurrency", 1, MAX_CONCURRENCY)
        return cls(limit, part, conc)


@dataclass(frozen=True)
class _PartBody:
    """One part to send: its number, its length, and a fresh body for each attempt."""

    number: int
    length: int
    body: BodyFactory


async def _view_chunks(view: memoryview, chunk_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start : start + chunk_size])


def _view_body(view: memoryview, chunk_size: int) -> BodyFactory:
    return lambda: _view_chunks(view, chunk_size)


def _file_body(path: str | os.PathLike[str], offset: int, length: int, chunk: int) -> BodyFactory:
    return lambda: aiter_file_range(path, offset, length, chunk)


class _ChunkReader:
    """Reads an iterable of chunks in pieces of a chosen size."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._it = aiter(chunks)
        self._buf = bytearray()
        self._eof = False

    async def fill(self, n: int) -> int:
        """Buffer at least ``n`` bytes unless the stream ends first; the buffered length."""
        while len(self._buf) < n and not self._eof:
            chunk = await anext(self._it, None)
            if chunk is None:
                self._eof = True
            elif not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"data must yield bytes, not {type(chunk).__name__}")
            else:
                self._buf += chunk
        return len(self._buf)

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        await self.fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


class _RangeParts:
    """The parts of a body whose size is known: every part is produced at once."""

    def __init__(self, parts: list[_PartBody]) -> None:
        self._parts: list[_PartBody] | None = parts
        self.part_size = parts[0].length if parts else None

    async def next_batch(self) -> list[_PartBody]:
        parts, self._parts = self._parts or [], None
        return parts


class _StreamParts:
    """The parts of a stream: ``concurrency`` parts are read into memory at a time."""

    def __init__(self, reader: _ChunkReader, part_size: int, concurrency: int) -> None:
        self._reader = reader
        self.part_size = part_size
        self._concurrency = concurrency
        self._next = 1

    async def next_batch(self) -> list[_PartBody]:
        batch: list[_PartBody] = []
        while len(batch) < self._concurrency:
            data = await self._reader.read(self.part_size)
            if not data:
                break
            if self._next > MAX_PARTS:
                raise ValueError(
                    f"data is longer than {MAX_PARTS} parts of part_size={self.part_size} bytes: "
                    "raise part_size"
                )
            body = memoryview(data)
            batch.append(_PartBody(self._next, len(data), _view_body(body, DEFAULT_CHUNK_SIZE)))
            self._next += 1
        return batch
