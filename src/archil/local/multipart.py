"""Multipart uploads staged on the filesystem, outside every disk's tree.

Each upload is a directory ``<staging>/<upload id>/`` (the staging directory
sits beside the disks, under a name no disk id can take, so neither the object
listing, the directory listing nor a container that mounts a disk ever sees
it). It holds:

- ``upload.json``: the disk, the key, the content type and when it started;
- one file per part, named ``<number:05d>.<md5 hex>``: a part is streamed to a
  temporary file first and renamed in place once complete, so its ETag is in
  its name and a part is either whole or absent;
- after completion, ``completed.json`` alone: a tombstone that lets a repeated
  CompleteMultipartUpload with the same parts answer the same result.

Completion copies the parts (``copy_file_range``, in the kernel) into a
temporary file of the disk store that is renamed into place, so the object
appears atomically. An upload with no activity for a day is swept. One lock per
upload serializes part commits, completion and abort; the server is a single
process (the data directory is locked), so a thread lock is enough.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ABANDONED_AFTER",
    "DEFAULT_MIN_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "CompletedUpload",
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
_PART_RE = re.compile(r"^(\d{5})\.([0-9a-f]{32})$")
_RECORD = "upload.json"
_TOMBSTONE = "completed.json"
_TMP_PREFIX = ".tmp-"
_COPY_CHUNK = 64 * 1024 * 1024

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
    """An upload in progress."""

    upload_id: str
    disk_id: str
    key: str
    initiated: float
    content_type: str | None


@dataclass(frozen=True)
class PartRecord:
    """A part that was uploaded completely."""

    number: int
    etag: str
    size: int
    mtime: float


@dataclass(frozen=True)
class CompletedUpload:
    """The result of a completion: the object's ETag and size, its content type and stat."""

    etag: str
    size: int
    content_type: str | None
    stat: os.stat_result | None


class AssemblyTarget(Protocol):
    """Where completion writes the object (the disk store's atomic upload)."""

    def copy_from(self, fd: int, length: int) -> None:
        """Append ``length`` bytes read from the file descriptor ``fd``."""

    def commit(self) -> tuple[str, os.stat_result]:
        """Move the object into place; return its MD5 (unused here) and its stat."""

    def abort(self) -> None:
        """Discard what was written."""


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
        return UploadRecord(
            upload_id=upload_id,
            disk_id=str(data["diskId"]),
            key=str(data["key"]),
            initiated=float(data["initiated"]),
            content_type=data.get("contentType"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _parts_digest(parts: Sequence[tuple[int, str]]) -> str:
    text = ",".join(f"{n}:{normalize_etag(e)}" for n, e in parts)
    return hashlib.sha256(text.encode()).hexdigest()


class PartWriter:
    """One part being received: bytes go to a temporary file in the upload's directory."""

    def __init__(self, store: MultipartStore, record: UploadRecord, number: int) -> None:
        self._store = store
        self._record = record
        self.number = number
        self._dir_fd = os.open(
            store.root / record.upload_id, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        )
        self._tmp = f"{_TMP_PREFIX}{secrets.token_hex(12)}"
        try:
            fd = os.open(
                self._tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self._dir_fd,
            )
        except BaseException:
            os.close(self._dir_fd)
            raise
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0
        self._done = False

    def write(self, data: bytes | bytearray) -> None:
        """Append a chunk."""
        self._md5.update(data)
        view = memoryview(data)
        while view:
            n = self._file.write(view)
            if n is None:  # pragma: no cover - only for non-blocking files
                continue
            view = view[n:]
        self.size += len(data)

    def md5_hex(self) -> str:
        """The MD5 hex digest of what was written so far."""
        return self._md5.hexdigest()

    def commit(self) -> PartRecord:
        """Rename the part in place (replacing an earlier part with its number)."""
        try:
            self._file.close()
            etag = self._md5.hexdigest()
            name = f"{self.number:05d}.{etag}"
            with self._store.lock(self._record.upload_id):
                try:
                    os.stat(_RECORD, dir_fd=self._dir_fd)
                except FileNotFoundError:
                    raise _no_such_upload() from None
                os.rename(self._tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
                self._done = True
                prefix = f"{self.number:05d}."
                for other in os.listdir(self._dir_fd):
                    if other.startswith(prefix) and other != name:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(other, dir_fd=self._dir_fd)
                st = os.stat(name, dir_fd=self._dir_fd)
            return PartRecord(self.number, etag, st.st_size, st.st_mtime)
        finally:
            self.abort()

    def abort(self) -> None:
        """Discard the part (no-op after :meth:`commit`)."""
        if not self._file.closed:
            self._file.close()
        if not self._done:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp, dir_fd=self._dir_fd)
            self._done = True
        if self._dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
            self._dir_fd = -1


class MultipartStore:
    """The staging directory of every multipart upload of a data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def lock(self, upload_id: str) -> Iterator[None]:
        """Hold the lock of one upload."""
        with self._guard:
            lock = self._locks.setdefault(upload_id, threading.Lock())
        with lock:
            yield

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
        idempotency_key: str | None = None,
        now: float | None = None,
    ) -> UploadRecord:
        """Start an upload. The same ``idempotency_key`` for the same disk and key gives the same upload."""
        if idempotency_key:
            seed = f"{disk_id}\0{key}\0{idempotency_key}".encode()
            upload_id = hashlib.sha256(seed).hexdigest()[:32]
        else:
            upload_id = secrets.token_hex(16)
        record = UploadRecord(
            upload_id, disk_id, key, time.time() if now is None else now, content_type
        )
        path = self.root / upload_id
        with self.lock(upload_id):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                existing = self._load(upload_id)
                if existing is not None and (existing.disk_id, existing.key) == (disk_id, key):
                    return existing
                # A reused idempotency key after completion or a collision: start afresh.
                return self.create(disk_id, key, content_type, now=now)
            dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _write_json(
                    dir_fd,
                    _RECORD,
                    {
                        "uploadId": upload_id,
                        "diskId": disk_id,
                        "key": key,
                        "initiated": record.initiated,
                        "contentType": content_type,
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

    def begin_part(self, upload_id: str, disk_id: str, key: str, number: int) -> PartWriter:
        """Start receiving part ``number`` of an upload."""
        record = self.get(upload_id, disk_id, key)
        try:
            return PartWriter(self, record, number)
        except FileNotFoundError:
            raise _no_such_upload() from None

    def abort(self, upload_id: str, disk_id: str, key: str) -> None:
        """Discard an upload and every part of it."""
        with self.lock(upload_id):
            self.get(upload_id, disk_id, key)
            self._remove(upload_id)

    def _remove(self, upload_id: str) -> None:
        shutil.rmtree(self.root / upload_id, ignore_errors=True)
        with self._guard:
            self._locks.pop(upload_id, None)

    # -- listings ----------------------------------------------------------------

    def list_parts(self, record: UploadRecord) -> list[PartRecord]:
        """The parts of an upload, by part number."""
        parts: list[PartRecord] = []
        try:
            entries = list(os.scandir(self.root / record.upload_id))
        except FileNotFoundError:
            raise _no_such_upload() from None
        for entry in entries:
            m = _PART_RE.match(entry.name)
            if m is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            parts.append(PartRecord(int(m.group(1)), m.group(2), st.st_size, st.st_mtime))
        parts.sort(key=lambda p: p.number)
        return parts

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
        open_target: Callable[[], AssemblyTarget],
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
            target = open_target()
            try:
                for part in chosen:
                    fd = os.open(
                        self.root / upload_id / f"{part.number:05d}.{part.etag}",
                        os.O_RDONLY | os.O_CLOEXEC,
                    )
                    try:
                        target.copy_from(fd, part.size)
                    finally:
                        os.close(fd)
                _, st = target.commit()
            except BaseException:
                target.abort()
                raise
            result = CompletedUpload(
                etag=multipart_etag([p.etag for p in chosen]),
                size=sum(p.size for p in chosen),
                content_type=record.content_type,
                stat=st,
            )
            self._leave_tombstone(record, requested, result)
            return result

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
        path = self.root / record.upload_id
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
