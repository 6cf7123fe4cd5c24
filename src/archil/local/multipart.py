"""Multipart uploads staged on the filesystem, outside every disk's tree.

Each upload is a directory ``<staging>/<upload id>/`` (the staging directory
sits beside the disks, under a name no disk id can take, so neither the object
listing, the directory listing nor a container that mounts a disk ever sees
it). It holds ``upload.json`` (the disk, the key, the content type, when it
started and, if the client declared it, the part size) and the parts, in one
of two layouts:

- **in place**, when the client declared its part size ``S`` on creation and
  the part is at most ``S`` bytes: part ``n`` is written straight into one
  sparse file, ``data``, at offset ``(n - 1) * S``, and recorded by an empty
  marker ``<n:05d>.<md5>.<size>.at`` once complete. Completing parts
  ``1..K`` that are all ``S`` bytes (the last at most) then needs no copy: the
  file is truncated to size and renamed into the disk;
- **a file per part** otherwise: ``<n:05d>.<md5>``, streamed to a temporary
  file first and renamed once complete. Completion copies the parts (in the
  kernel, ``copy_file_range``) into a temporary file of the disk store that is
  renamed into place.

Either way the object appears atomically, and a part is either whole or
absent: a part rewritten in place loses its record when its rewrite starts.
Completion *seals* the upload under the same lock every in-place write takes,
so nothing can write into ``data`` once it may have become the object. After
completion only ``completed.json`` is left, a tombstone that lets a repeated
CompleteMultipartUpload with the same parts answer the same result; uploads
and tombstones with no activity for a day are swept. The server is a single
process (the data directory is locked), so thread locks are enough.

Every method does blocking file I/O: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ABANDONED_AFTER",
    "DEFAULT_MIN_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "AssemblyTarget",
    "CompletedUpload",
    "Destination",
    "MultipartError",
    "MultipartStore",
    "PartRecord",
    "PartWriter",
    "UploadRecord",
    "multipart_etag",
    "normalize_etag",
]

DEFAULT_MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's minimum size of every part but the last."""
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
ABANDONED_AFTER = 24 * 3600.0
"""Seconds without activity after which an upload is swept."""

_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_PART_FILE_RE = re.compile(r"^(\d{5})\.([0-9a-f]{32})$")
_PART_MARK_RE = re.compile(r"^(\d{5})\.([0-9a-f]{32})\.(\d+)\.at$")
_RECORD = "upload.json"
_TOMBSTONE = "completed.json"
_DATA = "data"
_TMP_PREFIX = ".tmp-"
_MAX_IN_PLACE_END = 4 * 1024**4
"""In-place parts must end below 4 TiB (ext4's file size limit is 16 TiB)."""

_NO_SUCH_UPLOAD = (
    "The specified multipart upload does not exist. The upload ID might be invalid, "
    "or the multipart upload might have been aborted or completed."
)


class MultipartError(Exception):
    """A multipart request that S3 refuses, with its S3 error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _no_such_upload() -> MultipartError:
    return MultipartError("NoSuchUpload", _NO_SUCH_UPLOAD)


def normalize_etag(etag: str) -> str:
    """An ETag without surrounding quotes (or ``&quot;``), in lower case."""
    return etag.strip().replace("&quot;", "").strip('"').lower()


def multipart_etag(part_etags: Sequence[str]) -> str:
    """S3's ETag of a multipart object: the MD5 of the parts' binary MD5s, ``-`` and the count."""
    digest = hashlib.md5(usedforsecurity=False)
    for etag in part_etags:
        digest.update(bytes.fromhex(normalize_etag(etag)))
    return f"{digest.hexdigest()}-{len(part_etags)}"


@dataclass(frozen=True)
class UploadRecord:
    """An upload in progress; ``part_size`` is the size the client declared for its parts."""

    upload_id: str
    disk_id: str
    key: str
    initiated: float
    content_type: str | None
    part_size: int | None = None


@dataclass(frozen=True)
class PartRecord:
    """A part that was uploaded completely (``in_place``: inside the upload's ``data`` file)."""

    number: int
    etag: str
    size: int
    mtime: float
    in_place: bool = False


@dataclass(frozen=True)
class CompletedUpload:
    """The result of a completion: the object's ETag and size, its content type and stat."""

    etag: str
    size: int
    content_type: str | None
    stat: os.stat_result | None


class AssemblyTarget(Protocol):
    """A new object being written by copying (the disk store's atomic upload)."""

    def copy_from(self, fd: int, length: int, offset: int = 0) -> None:
        """Append ``length`` bytes read from ``fd`` at ``offset``."""

    def commit(self) -> tuple[str, os.stat_result]:
        """Move the object into place; return its MD5 (unused here) and its stat."""

    def abort(self) -> None:
        """Discard what was written."""


class Destination(Protocol):
    """Where a completed upload goes: the key on its disk."""

    def begin(self) -> AssemblyTarget:
        """Start a new object to copy the parts into."""

    def adopt(self, dir_fd: int, name: str) -> os.stat_result:
        """Rename the finished file ``name`` (in ``dir_fd``) into place as the object."""


def _write_json(dir_fd: int, name: str, data: dict[str, Any]) -> None:
    """Write ``name`` in the directory atomically (a temporary file, then a rename)."""
    tmp = f"{_TMP_PREFIX}{secrets.token_hex(8)}.json"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _record_from(upload_id: str, data: dict[str, Any]) -> UploadRecord | None:
    try:
        part_size = data.get("partSize")
        return UploadRecord(
            upload_id=upload_id,
            disk_id=str(data["diskId"]),
            key=str(data["key"]),
            initiated=float(data["initiated"]),
            content_type=data.get("contentType"),
            part_size=int(part_size) if part_size is not None else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _parts_digest(parts: Sequence[tuple[int, str]]) -> str:
    text = ",".join(f"{n}:{normalize_etag(e)}" for n, e in parts)
    return hashlib.sha256(text.encode()).hexdigest()


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _no_such_upload() from None


class PartWriter:
    """One part being received, written in place or to a temporary file of its own."""

    def __init__(
        self, store: MultipartStore, record: UploadRecord, number: int, *, in_place: bool
    ) -> None:
        self._store = store
        self._record = record
        self.number = number
        self.in_place = in_place
        try:
            self._dir_fd = _open_dir(store.root / record.upload_id)
        except BaseException:
            store._release(record.upload_id, number, in_place)
            raise
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0
        self._done = False
        self._offset = (number - 1) * (record.part_size or 0)
        self._tmp = "" if in_place else f"{_TMP_PREFIX}{secrets.token_hex(12)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(
                _DATA if in_place else self._tmp,
                flags if in_place else flags | os.O_EXCL,
                0o644,
                dir_fd=self._dir_fd,
            )
        except BaseException:
            os.close(self._dir_fd)
            store._release(record.upload_id, number, in_place)
            raise

    def write(self, data: bytes | bytearray) -> None:
        """Append a chunk (hashed outside the upload's lock, written under it when in place)."""
        self._md5.update(data)
        if self.in_place:
            limit = self._record.part_size or 0
            if self.size + len(data) > limit:
                raise MultipartError("InvalidArgument", "the part is longer than declared")
            with self._store.lock(self._record.upload_id):
                if self._store.sealed(self._record.upload_id):
                    raise _no_such_upload()
                _pwrite_all(self._fd, data, self._offset + self.size)
        else:
            _pwrite_all(self._fd, data, self.size)
        self.size += len(data)

    def md5_hex(self) -> str:
        """The MD5 hex digest of what was written so far."""
        return self._md5.hexdigest()

    def commit(self) -> PartRecord:
        """Record the part (replacing an earlier part with its number)."""
        try:
            etag = self._md5.hexdigest()
            with self._store.lock(self._record.upload_id):
                try:
                    os.stat(_RECORD, dir_fd=self._dir_fd)
                except FileNotFoundError:
                    raise _no_such_upload() from None
                if self._store.sealed(self._record.upload_id):
                    raise _no_such_upload()
                if self.in_place:
                    name = f"{self.number:05d}.{etag}.{self.size}.at"
                    os.close(
                        os.open(
                            name,
                            os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                            0o600,
                            dir_fd=self._dir_fd,
                        )
                    )
                else:
                    name = f"{self.number:05d}.{etag}"
                    os.rename(self._tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
                self._done = True
                self._store._forget_others(self._dir_fd, self.number, keep=name)
                st = os.stat(name, dir_fd=self._dir_fd)
            return PartRecord(self.number, etag, self.size, st.st_mtime, self.in_place)
        finally:
            self.abort()

    def abort(self) -> None:
        """Discard the part (no-op after :meth:`commit`); an in-place region is left unrecorded."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if not self._done:
            if not self.in_place:
                with contextlib.suppress(OSError):
                    os.unlink(self._tmp, dir_fd=self._dir_fd)
            self._done = True
        if self._dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
            self._dir_fd = -1
            self._store._release(self._record.upload_id, self.number, self.in_place)


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class MultipartStore:
    """The staging directory of every multipart upload of a data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._writing: dict[str, set[int]] = {}
        self._sealed: set[str] = set()

    @contextlib.contextmanager
    def lock(self, upload_id: str) -> Iterator[None]:
        """Hold the lock of one upload."""
        with self._guard:
            lock = self._locks.setdefault(upload_id, threading.Lock())
        with lock:
            yield

    def sealed(self, upload_id: str) -> bool:
        """Whether completion has begun (no part may change any more)."""
        return upload_id in self._sealed

    def _dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID_RE.match(upload_id):
            raise _no_such_upload()
        return self.root / upload_id

    # -- lifecycle ---------------------------------------------------------------

    def create(
        self,
        disk_id: str,
        key: str,
        content_type: str | None,
        *,
        part_size: int | None = None,
        idempotency_key: str | None = None,
        now: float | None = None,
    ) -> UploadRecord:
        """Start an upload. The same ``idempotency_key`` for the same disk and key gives the same upload."""
        if idempotency_key:
            seed = f"{disk_id}\0{key}\0{idempotency_key}".encode()
            upload_id = hashlib.sha256(seed).hexdigest()[:32]
        else:
            upload_id = secrets.token_hex(16)
        started = time.time() if now is None else now
        record = UploadRecord(upload_id, disk_id, key, started, content_type, part_size)
        path = self.root / upload_id
        with self.lock(upload_id):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                existing = self._load(upload_id)
                if existing is not None and (existing.disk_id, existing.key) == (disk_id, key):
                    return existing
                # A reused idempotency key after completion, or a collision: start afresh.
                return self.create(disk_id, key, content_type, part_size=part_size, now=now)
            dir_fd = _open_dir(path)
            try:
                _write_json(
                    dir_fd,
                    _RECORD,
                    {
                        "uploadId": upload_id,
                        "diskId": disk_id,
                        "key": key,
                        "initiated": started,
                        "contentType": content_type,
                        "partSize": part_size,
                    },
                )
            finally:
                os.close(dir_fd)
        return record

    def _load(self, upload_id: str) -> UploadRecord | None:
        data = _read_json(self._dir(upload_id) / _RECORD)
        return None if data is None else _record_from(upload_id, data)

    def get(self, upload_id: str, disk_id: str, key: str) -> UploadRecord:
        """The upload ``upload_id`` of ``key`` on ``disk_id``; ``NoSuchUpload`` otherwise."""
        record = self._load(upload_id)
        if record is None or record.disk_id != disk_id or record.key != key:
            raise _no_such_upload()
        return record

    def begin_part(
        self, upload_id: str, disk_id: str, key: str, number: int, length: int | None = None
    ) -> PartWriter:
        """Start receiving part ``number`` (of ``length`` bytes, when the request says)."""
        record = self.get(upload_id, disk_id, key)
        stride = record.part_size
        with self.lock(upload_id):
            if self.sealed(upload_id):
                raise _no_such_upload()
            writing = self._writing.setdefault(upload_id, set())
            in_place = (
                stride is not None
                and length is not None
                and 0 < length <= stride
                and number * stride <= _MAX_IN_PLACE_END
                and number not in writing
            )
            if in_place:
                writing.add(number)
                # The region is about to be overwritten: the part it held is gone.
                dir_fd = _open_dir(self.root / upload_id)
                try:
                    self._forget_in_place(dir_fd, number)
                finally:
                    os.close(dir_fd)
        return PartWriter(self, record, number, in_place=in_place)

    def _release(self, upload_id: str, number: int, in_place: bool) -> None:
        if in_place:
            with self.lock(upload_id):
                self._writing.get(upload_id, set()).discard(number)

    def _forget_in_place(self, dir_fd: int, number: int) -> None:
        prefix = f"{number:05d}."
        for name in os.listdir(dir_fd):
            if name.startswith(prefix) and name.endswith(".at"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)

    def _forget_others(self, dir_fd: int, number: int, keep: str) -> None:
        prefix = f"{number:05d}."
        for name in os.listdir(dir_fd):
            if name.startswith(prefix) and name != keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)

    def abort(self, upload_id: str, disk_id: str, key: str) -> None:
        """Discard an upload and every part of it."""
        with self.lock(upload_id):
            self.get(upload_id, disk_id, key)
            self._remove(upload_id)

    def _remove(self, upload_id: str) -> None:
        shutil.rmtree(self.root / upload_id, ignore_errors=True)
        with self._guard:
            self._locks.pop(upload_id, None)
            self._writing.pop(upload_id, None)
            self._sealed.discard(upload_id)

    # -- listings ----------------------------------------------------------------

    def list_parts(self, record: UploadRecord) -> list[PartRecord]:
        """The parts of an upload, by part number."""
        parts: dict[int, PartRecord] = {}
        try:
            entries = list(os.scandir(self.root / record.upload_id))
        except FileNotFoundError:
            raise _no_such_upload() from None
        for entry in entries:
            mark = _PART_MARK_RE.match(entry.name)
            m = mark or _PART_FILE_RE.match(entry.name)
            if m is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            size = int(mark.group(3)) if mark else st.st_size
            part = PartRecord(int(m.group(1)), m.group(2), size, st.st_mtime, mark is not None)
            if part.number not in parts or parts[part.number].mtime < part.mtime:
                parts[part.number] = part
        return [parts[n] for n in sorted(parts)]

    def list_uploads(self, disk_id: str) -> list[UploadRecord]:
        """The uploads in progress on a disk, by key, then by start time."""
        out: list[UploadRecord] = []
        for _, record in self._records():
            if record is not None and record.disk_id == disk_id:
                out.append(record)
        out.sort(key=lambda r: (r.key, r.initiated, r.upload_id))
        return out

    def _records(self) -> Iterator[tuple[str, UploadRecord | None]]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            if _UPLOAD_ID_RE.match(name):
                yield name, self._load(name)

    # -- completion --------------------------------------------------------------

    def complete(
        self,
        upload_id: str,
        disk_id: str,
        key: str,
        requested: Sequence[tuple[int, str]],
        *,
        min_part_size: int,
        destination: Destination,
    ) -> CompletedUpload:
        """Assemble the listed parts into the object, atomically, and end the upload.

        Raises :class:`MultipartError` with S3's codes: ``InvalidPartOrder`` when
        the part numbers do not strictly increase, ``InvalidPart`` when a part is
        missing or its ETag differs, ``EntityTooSmall`` when a part other than the
        last is smaller than ``min_part_size``, ``NoSuchUpload`` when the upload
        is gone. Completing again with the same parts answers the same result.
        """
        with self.lock(upload_id):
            done = self._completed(upload_id, disk_id, key, requested)
            if done is not None:
                return done
            record = self.get(upload_id, disk_id, key)
            chosen = self._check_parts(record, requested, min_part_size)
            self._sealed.add(upload_id)
            try:
                st = self._assemble(record, chosen, destination)
            except BaseException:
                self._sealed.discard(upload_id)
                raise
            result = CompletedUpload(
                etag=multipart_etag([p.etag for p in chosen]),
                size=sum(p.size for p in chosen),
                content_type=record.content_type,
                stat=st,
            )
            self._leave_tombstone(record, requested, result)
            return result

    def _assemble(
        self, record: UploadRecord, chosen: list[PartRecord], destination: Destination
    ) -> os.stat_result:
        """Rename the in-place file into the disk when it is the object, else copy the parts."""
        stride = record.part_size or 0
        dir_fd = _open_dir(self.root / record.upload_id)
        try:
            if _is_in_place_layout(chosen, stride):
                total = sum(p.size for p in chosen)
                fd = os.open(_DATA, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    os.ftruncate(fd, total)
                finally:
                    os.close(fd)
                return destination.adopt(dir_fd, _DATA)
            target = destination.begin()
            try:
                for part in chosen:
                    name = _DATA if part.in_place else f"{part.number:05d}.{part.etag}"
                    offset = (part.number - 1) * stride if part.in_place else 0
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                    try:
                        target.copy_from(fd, part.size, offset)
                    finally:
                        os.close(fd)
                _, st = target.commit()
            except BaseException:
                target.abort()
                raise
            return st
        finally:
            os.close(dir_fd)

    def _check_parts(
        self, record: UploadRecord, requested: Sequence[tuple[int, str]], min_part_size: int
    ) -> list[PartRecord]:
        previous = 0
        for number, _ in requested:
            if number <= previous:
                raise MultipartError(
                    "InvalidPartOrder",
                    "The list of parts was not in ascending order. "
                    "The parts list must be specified in order by part number.",
                )
            previous = number
        have = {p.number: p for p in self.list_parts(record)}
        chosen: list[PartRecord] = []
        for number, etag in requested:
            part = have.get(number)
            if part is None or part.etag != normalize_etag(etag):
                raise MultipartError(
                    "InvalidPart",
                    f"One or more of the specified parts could not be found (part {number}). "
                    "The part might not have been uploaded, or the specified entity tag "
                    "might not have matched the part's entity tag.",
                )
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < min_part_size:
                raise MultipartError(
                    "EntityTooSmall",
                    f"Your proposed upload is smaller than the minimum allowed size: part "
                    f"{part.number} is {part.size} bytes, and every part but the last must be "
                    f"at least {min_part_size} bytes.",
                )
        return chosen

    def _leave_tombstone(
        self, record: UploadRecord, requested: Sequence[tuple[int, str]], result: CompletedUpload
    ) -> None:
        dir_fd = _open_dir(self.root / record.upload_id)
        try:
            _write_json(
                dir_fd,
                _TOMBSTONE,
                {
                    "diskId": record.disk_id,
                    "key": record.key,
                    "parts": _parts_digest(requested),
                    "etag": result.etag,
                    "size": result.size,
                    "contentType": result.content_type,
                    "completed": time.time(),
                },
            )
            for name in os.listdir(dir_fd):
                if name != _TOMBSTONE:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        with self._guard:
            self._writing.pop(record.upload_id, None)

    def _completed(
        self, upload_id: str, disk_id: str, key: str, requested: Sequence[tuple[int, str]]
    ) -> CompletedUpload | None:
        """The stored result of an upload already completed with exactly these parts."""
        data = _read_json(self._dir(upload_id) / _TOMBSTONE)
        if (
            data is None
            or data.get("parts") != _parts_digest(requested)
            or (data.get("diskId"), data.get("key")) != (disk_id, key)
        ):
            return None
        try:
            return CompletedUpload(
                etag=str(data["etag"]),
                size=int(data["size"]),
                content_type=data.get("contentType"),
                stat=None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    # -- housekeeping ------------------------------------------------------------

    def _last_activity(self, upload_id: str) -> float:
        path = self.root / upload_id
        latest = 0.0
        for data_name in (_RECORD, _TOMBSTONE):
            data = _read_json(path / data_name)
            if data is not None:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    latest = max(latest, float(data.get("completed") or data["initiated"]))
        with contextlib.suppress(OSError):
            latest = max(latest, path.stat().st_mtime)
            for entry in os.scandir(path):
                with contextlib.suppress(OSError):
                    latest = max(latest, entry.stat(follow_symlinks=False).st_mtime)
        return latest

    def sweep(self, *, now: float | None = None, max_age: float = ABANDONED_AFTER) -> int:
        """Remove uploads (and completion tombstones) with no activity for ``max_age`` seconds."""
        current = time.time() if now is None else now
        removed = 0
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        for name in names:
            if not _UPLOAD_ID_RE.match(name):
                continue
            with self.lock(name):
                if current - self._last_activity(name) > max_age:
                    self._remove(name)
                    removed += 1
        return removed

    def drop_disk(self, disk_id: str) -> None:
        """Discard every upload (and completion tombstone) of a disk that is being deleted."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            if not _UPLOAD_ID_RE.match(name):
                continue
            data = _read_json(self.root / name / _RECORD) or _read_json(
                self.root / name / _TOMBSTONE
            )
            if data is not None and data.get("diskId") == disk_id:
                with self.lock(name):
                    self._remove(name)


def _is_in_place_layout(parts: list[PartRecord], stride: int) -> bool:
    """Whether the parts are ``1..K`` in place, each ``stride`` bytes but the last (at most)."""
    if not stride:
        return False
    for i, part in enumerate(parts, 1):
        if not part.in_place or part.number != i:
            return False
        if i < len(parts) and part.size != stride:
            return False
    return True
