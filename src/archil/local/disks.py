"""Disks as directories: the object store and the directory listing.

Each disk is a directory ``<root>/<disk id>``. Object keys map to paths inside
it. Writes walk the key one component at a time with ``O_NOFOLLOW`` directory
descriptors, so no symbolic link is ever followed and nothing is written
outside the disk; reads resolve the key and check that the result stays inside
the disk. Uploads stream to a temporary file that is atomically renamed into
place once complete. Multipart uploads are staged beside the disks (see
:mod:`.multipart`), under a name that no disk id can take.

Every method does blocking file I/O: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._models import validate_object_key
from .multipart import MultipartStore

__all__ = [
    "DirectoryNotFound",
    "DiskStore",
    "NoSuchKey",
    "NotADirectory",
    "ObjectListingPage",
    "ObjectStat",
    "PathEscapeError",
    "Upload",
]

_DISK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_UPLOADS = ".uploads"
_MULTIPART = ".multipart"
_APPEND_LOCKS = 64
_INODE_CACHE_MAX = 200_000
_WALK_LIMIT = 200_000
_CHUNK = 1024 * 1024
_COPY_CHUNK = 256 * 1024 * 1024


class PathEscapeError(ValueError):
    """A key or path that would leave the disk directory, or is otherwise unusable."""


class NoSuchKey(LookupError):
    """No object with that key."""


class DirectoryNotFound(LookupError):
    """No directory entry with that inode."""


class NotADirectory(ValueError):
    """The inode names something that is not a directory."""


@dataclass(frozen=True)
class ObjectStat:
    """What the object API reports about an object."""

    key: str
    size: int
    mtime: float
    mtime_ns: int
    ino: int


@dataclass
class ObjectListingPage:
    """One page of ListObjectsV2, in lexicographic key order."""

    contents: list[ObjectStat] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    is_truncated: bool = False
    next_marker: str | None = None


def _check_disk_id(disk_id: str) -> str:
    if not _DISK_ID_RE.match(disk_id):
        raise PathEscapeError(f"invalid disk id {disk_id!r}")
    return disk_id


def split_key(key: str, field_name: str = "key") -> tuple[list[str], bool]:
    """Validate an object key and split it into path components.

    Returns the components and whether the key ends with ``/`` (a directory marker).
    """
    try:
        validate_object_key(key, field_name)
    except ValueError as exc:
        raise PathEscapeError(str(exc)) from None
    is_dir = key.endswith("/")
    parts = key.rstrip("/").split("/") if is_dir else key.split("/")
    if any(p == "" for p in parts):
        raise PathEscapeError(f"{field_name} {key!r} must not contain empty segments ('//')")
    return parts, is_dir


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _md5_of_fd(fd: int, size: int) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
        if not chunk:
            break
        md5.update(chunk)
        offset += len(chunk)
    return md5.hexdigest()


class Upload:
    """An object being written: bytes go to a temporary file, then ``commit`` renames it in place."""

    def __init__(self, parent_fd: int, name: str, tmp_dir_fd: int) -> None:
        self._parent_fd = parent_fd
        self._name = name
        self._tmp_dir_fd = tmp_dir_fd
        self._tmp_name = f"upload-{secrets.token_hex(12)}"
        fd = os.open(
            self._tmp_name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=tmp_dir_fd,
        )
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

    def copy_from(self, fd: int, length: int, offset: int = 0) -> None:
        """Append ``length`` bytes of the file ``fd`` from ``offset``, copied in the kernel where possible.

        The MD5 of the content is not tracked for copied bytes (a multipart
        object's ETag is made from its parts' MD5s instead).
        """
        out = self._file.fileno()
        end = offset + length
        copy_range = getattr(os, "copy_file_range", None)
        while offset < end:
            want = min(end - offset, _COPY_CHUNK)
            n = 0
            if copy_range is not None:
                try:
                    n = copy_range(fd, out, want, offset_src=offset)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    copy_range = None
            if copy_range is None:
                chunk = os.pread(fd, min(want, _CHUNK), offset)
                n = len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            if n == 0:
                raise OSError(errno.EIO, "a staged part is shorter than recorded")
            offset += n
        self.size += length

    def commit(self) -> tuple[str, os.stat_result]:
        """Flush and atomically move the file into place; return the MD5 hex digest and its stat."""
        try:
            self._file.flush()
            self._file.close()
            try:
                st = os.stat(self._name, dir_fd=self._parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise PathEscapeError("the key names a directory on the disk")
            os.rename(
                self._tmp_name,
                self._name,
                src_dir_fd=self._tmp_dir_fd,
                dst_dir_fd=self._parent_fd,
            )
            self._done = True
            final = os.stat(self._name, dir_fd=self._parent_fd, follow_symlinks=False)
            return self._md5.hexdigest(), final
        finally:
            self.abort()

    def abort(self) -> None:
        """Discard the upload (no-op after ``commit``)."""
        if not self._file.closed:
            self._file.close()
        if not self._done:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp_name, dir_fd=self._tmp_dir_fd)
            self._done = True
        for fd in (self._parent_fd, self._tmp_dir_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._parent_fd = self._tmp_dir_fd = -1


class ObjectDestination:
    """A key on a disk as the destination of a multipart upload (see :class:`.multipart.Destination`)."""

    def __init__(self, store: DiskStore, disk_id: str, key: str) -> None:
        self._store = store
        self._disk_id = disk_id
        self._key = key

    def begin(self) -> Upload:
        """A new object to copy the parts into."""
        return self._store.begin_upload(self._disk_id, self._key)

    def adopt(self, dir_fd: int, name: str) -> os.stat_result:
        """Rename the finished file into place."""
        return self._store.adopt(self._disk_id, self._key, dir_fd, name)


class DiskStore:
    """The directories that hold the local disks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads = self.root / _UPLOADS
        self.uploads.mkdir(exist_ok=True)
        for leftover in self.uploads.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        self._inodes: dict[str, OrderedDict[int, str]] = {}
        self.multipart = MultipartStore(self.root / _MULTIPART)
        self.multipart.sweep()
        self._append_locks = [threading.Lock() for _ in range(_APPEND_LOCKS)]

    # -- disks ------------------------------------------------------------------

    def path(self, disk_id: str) -> Path:
        """The directory of a disk."""
        return self.root / _check_disk_id(disk_id)

    def create(self, disk_id: str) -> Path:
        """Create a disk's directory (no error if it exists)."""
        p = self.path(disk_id)
        p.mkdir(mode=0o755, exist_ok=True)
        return p

    def exists(self, disk_id: str) -> bool:
        """Whether the disk's directory exists."""
        try:
            return self.path(disk_id).is_dir()
        except PathEscapeError:
            return False

    def delete(self, disk_id: str) -> None:
        """Remove a disk's directory and everything in it (symbolic links are not followed)."""
        p = self.path(disk_id)
        self._inodes.pop(disk_id, None)
        self.multipart.drop_disk(disk_id)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)

    def data_size(self, disk_id: str) -> int:
        """Total size in bytes of the regular files on a disk (bounded walk)."""
        size = self._walk_size(disk_id, _WALK_LIMIT, partial=True)
        assert size is not None
        return size

    def small_data_size(self, disk_id: str, max_entries: int) -> int | None:
        """:meth:`data_size` of a disk of at most ``max_entries`` entries, else None.

        Cheap enough to run on the event loop, which spares a request for a small
        disk the hop to a worker thread.
        """
        return self._walk_size(disk_id, max_entries, partial=False)

    def _walk_size(self, disk_id: str, limit: int, *, partial: bool) -> int | None:
        total = 0
        seen = 0
        stack = [str(self.path(disk_id))]
        while stack:
            if seen >= limit:
                return total if partial else None
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    for e in it:
                        seen += 1
                        if not partial and seen > limit:
                            return None
                        try:
                            if e.is_dir(follow_symlinks=False):
                                stack.append(e.path)
                            elif e.is_file(follow_symlinks=False):
                                total += e.stat(follow_symlinks=False).st_size
                        except OSError:
                            continue
            except OSError:
                continue
        return total

    def resolve_subdirectory(self, disk_id: str, relpath: str) -> Path:
        """A directory inside a disk by relative path; must exist and stay inside the disk."""
        root = os.path.realpath(self.path(disk_id))
        target = os.path.realpath(os.path.join(root, relpath))
        if target != root and not target.startswith(root + os.sep):
            raise PathEscapeError(f"{relpath!r} leaves the disk")
        if not os.path.isdir(target):
            raise DirectoryNotFound(f"{relpath!r} is not a directory on the disk")
        return Path(target)

    # -- objects: writes ---------------------------------------------------------

    def _open_parent(self, disk_id: str, parts: list[str], *, create: bool) -> int:
        """An ``O_NOFOLLOW`` descriptor of the directory that holds ``parts[-1]``."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path(disk_id), flags)
        try:
            for comp in parts[:-1]:
                try:
                    nfd = os.open(comp, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, flags, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise PathEscapeError(
                            f"the key goes through a symbolic link ({comp!r})"
                        ) from None
                    if exc.errno == errno.ENOTDIR:
                        raise PathEscapeError(
                            f"{comp!r} is a file on the disk, not a directory"
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def begin_upload(self, disk_id: str, key: str) -> Upload:
        """Start writing an object; raises :class:`PathEscapeError` before writing anything on a bad key."""
        parts, is_dir = split_key(key)
        if is_dir:
            raise PathEscapeError("use make_directory for keys that end with '/'")
        parent = self._open_parent(disk_id, parts, create=True)
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except BaseException:
            os.close(parent)
            raise
        if st is not None and stat.S_ISDIR(st.st_mode):
            os.close(parent)
            raise PathEscapeError(f"the key {key!r} names a directory on the disk")
        tmp = os.open(self.uploads, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return Upload(parent, parts[-1], tmp)
        except BaseException:
            os.close(parent)
            os.close(tmp)
            raise

    def append_object(
        self, disk_id: str, key: str, data: bytes
    ) -> tuple[str, os.stat_result, bool]:
        """Append ``data`` to an object, creating it if needed.

        Returns the MD5 hex digest of the whole object, its stat and whether it
        was created. A failed write is truncated away, so the object is either
        as before or has all of ``data`` appended.
        """
        parts, is_dir = split_key(key)
        if is_dir:
            raise PathEscapeError(
                "a key that ends with '/' names a folder and cannot be appended to"
            )
        parent = self._open_parent(disk_id, parts, create=True)
        lock = self._append_locks[hash((disk_id, key)) % _APPEND_LOCKS]
        try:
            with lock:
                fd, created = self._open_for_append(parent, parts[-1], key)
                try:
                    before = os.fstat(fd)
                    if not stat.S_ISREG(before.st_mode):
                        raise PathEscapeError(f"the key {key!r} names something that is not a file")
                    try:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view) :]
                    except BaseException:
                        with contextlib.suppress(OSError):
                            os.ftruncate(fd, before.st_size)
                        raise
                    final = os.fstat(fd)
                    return _md5_of_fd(fd, final.st_size), final, created
                finally:
                    os.close(fd)
        finally:
            os.close(parent)

    def _open_for_append(self, parent: int, name: str, key: str) -> tuple[int, bool]:
        flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            try:
                return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=parent), True
            except FileExistsError:
                return os.open(name, flags, dir_fd=parent), False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PathEscapeError(f"the key {key!r} is a symbolic link") from None
            if exc.errno in (errno.EISDIR, errno.ENXIO):
                raise PathEscapeError(
                    f"the key {key!r} names something that is not a file"
                ) from None
            raise

    def destination(self, disk_id: str, key: str) -> ObjectDestination:
        """Where a completed multipart upload of ``key`` goes."""
        return ObjectDestination(self, disk_id, key)

    def adopt(self, disk_id: str, key: str, src_dir_fd: int, src_name: str) -> os.stat_result:
        """Rename a finished file into place as the object ``key`` (atomically, never through a link)."""
        parts, is_dir = split_key(key)
        if is_dir:
            raise PathEscapeError("a key that ends with '/' names a folder, not an object")
        parent = self._open_parent(disk_id, parts, create=True)
        try:
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise PathEscapeError(f"the key {key!r} names a directory on the disk")
            os.rename(src_name, parts[-1], src_dir_fd=src_dir_fd, dst_dir_fd=parent)
            return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    def make_directory(self, disk_id: str, key: str) -> None:
        """Create the directory named by a key that ends with ``/`` (an S3 folder marker)."""
        parts, _ = split_key(key)
        parent = self._open_parent(disk_id, parts, create=True)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(parts[-1], 0o755, dir_fd=parent)
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise PathEscapeError(f"{key!r} is a file on the disk, not a directory")
        finally:
            os.close(parent)

    def delete_object(self, disk_id: str, key: str) -> None:
        """Remove an object; no error when it does not exist."""
        parts, is_dir = split_key(key)
        try:
            parent = self._open_parent(disk_id, parts, create=False)
        except (FileNotFoundError, PathEscapeError):
            return
        try:
            if is_dir:
                with contextlib.suppress(OSError):
                    os.rmdir(parts[-1], dir_fd=parent)
                return
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode):
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=parent)
        finally:
            os.close(parent)

    # -- objects: reads ----------------------------------------------------------

    def _resolve_read(self, disk_id: str, key: str) -> str:
        parts, is_dir = split_key(key)
        if is_dir:
            raise NoSuchKey(key)
        root = os.path.realpath(self.path(disk_id))
        target = os.path.realpath(os.path.join(root, *parts))
        if not target.startswith(root + os.sep):
            raise PathEscapeError(f"the key {key!r} resolves outside the disk")
        return target

    def open_object(self, disk_id: str, key: str) -> tuple[int, ObjectStat]:
        """Open an object for reading: a file descriptor and the stat of what was opened."""
        target = self._resolve_read(disk_id, key)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NoSuchKey(key) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PathEscapeError(f"the key {key!r} is a symbolic link") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NoSuchKey(key)
        return fd, ObjectStat(key, st.st_size, st.st_mtime, st.st_mtime_ns, st.st_ino)

    def md5_of(self, disk_id: str, key: str) -> str:
        """The MD5 hex digest of an object's content."""
        fd, _ = self.open_object(disk_id, key)
        md5 = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(_CHUNK):
                md5.update(chunk)
        return md5.hexdigest()

    # -- objects: listing --------------------------------------------------------

    def _has_file(self, path: str) -> bool:
        stack = [path]
        seen = 0
        while stack and seen < _WALK_LIMIT:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    for e in it:
                        seen += 1
                        try:
                            if e.is_file(follow_symlinks=False):
                                return True
                            if e.is_dir(follow_symlinks=False):
                                stack.append(e.path)
                        except OSError:
                            continue
            except OSError:
                continue
        return False

    def _walk(
        self, path: str, base: str, prefix: str, delimiter: str, marker: str
    ) -> Iterator[tuple[str, ObjectStat | None]]:
        """Keys (with stats) and common prefixes (stat ``None``) under ``path`` in key order."""
        entries: list[tuple[str, bool, str, os.stat_result]] = []
        try:
            with os.scandir(path) as it:
                for e in it:
                    name = e.name
                    try:
                        name.encode("utf-8")
                    except UnicodeEncodeError:
                        continue
                    if "\\" in name:
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        entries.append((name + "/", True, e.path, st))
                    elif stat.S_ISREG(st.st_mode):
                        entries.append((name, False, e.path, st))
        except OSError:
            return
        entries.sort(key=lambda x: x[0])
        for sortkey, is_dir, epath, st in entries:
            key = base + sortkey
            if is_dir:
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if key < marker and not marker.startswith(key):
                    continue
                if delimiter and key.startswith(prefix):
                    rest = key[len(prefix) :]
                    idx = rest.find(delimiter)
                    if idx != -1:
                        cp = prefix + rest[: idx + len(delimiter)]
                        if self._has_file(epath):
                            yield cp, None
                        continue
                yield from self._walk(epath, key, prefix, delimiter, marker)
            elif key.startswith(prefix):
                yield key, ObjectStat(key, st.st_size, st.st_mtime, st.st_mtime_ns, st.st_ino)

    def list_objects(
        self,
        disk_id: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        marker: str = "",
        max_keys: int = 1000,
    ) -> ObjectListingPage:
        """ListObjectsV2 over a disk: keys after ``marker``, grouped by ``delimiter``."""
        page = ObjectListingPage()
        if max_keys <= 0:
            return page
        root = str(self.path(disk_id))
        last_cp: str | None = None
        count = 0
        last_item: str | None = None
        for key, st in self._walk(root, "", prefix, delimiter, marker):
            cp: str | None
            if st is None:
                cp = key
            elif delimiter:
                rest = key[len(prefix) :]
                idx = rest.find(delimiter)
                cp = prefix + rest[: idx + len(delimiter)] if idx != -1 else None
            else:
                cp = None
            if cp is not None:
                if cp <= marker or cp == last_cp:
                    continue
            elif key <= marker:
                continue
            if count >= max_keys:
                page.is_truncated = True
                page.next_marker = last_item
                break
            if cp is not None:
                page.common_prefixes.append(cp)
                last_cp = cp
                last_item = cp
            else:
                assert st is not None
                page.contents.append(st)
                last_item = key
            count += 1
        return page

    # -- directory listing ---------------------------------------------------------

    def _remember(self, disk_id: str, ino: int, rel: str) -> None:
        table = self._inodes.setdefault(disk_id, OrderedDict())
        table[ino] = rel
        table.move_to_end(ino)
        while len(table) > _INODE_CACHE_MAX:
            table.popitem(last=False)

    def _find_inode(self, disk_id: str, inode: int) -> str | None:
        root = str(self.path(disk_id))
        rel = self._inodes.get(disk_id, OrderedDict()).get(inode)
        if rel is not None:
            try:
                if os.lstat(os.path.join(root, rel)).st_ino == inode:
                    return rel
            except OSError:
                pass
        queue = [""]
        seen = 0
        while queue and seen < _WALK_LIMIT:
            cur = queue.pop(0)
            try:
                with os.scandir(os.path.join(root, cur) if cur else root) as it:
                    for e in it:
                        seen += 1
                        child = f"{cur}/{e.name}" if cur else e.name
                        try:
                            ino = e.inode()
                            self._remember(disk_id, ino, child)
                            if ino == inode:
                                return child
                            if e.is_dir(follow_symlinks=False):
                                queue.append(child)
                        except OSError:
                            continue
            except OSError:
                continue
        return None

    def list_directory(self, disk_id: str, inode: int) -> dict[str, Any]:
        """The ``DirectoryListing`` of the directory with that inode (1 is the disk root)."""
        root = str(self.path(disk_id))
        if inode == 1:
            rel = ""
        else:
            found = self._find_inode(disk_id, inode)
            if found is None:
                raise DirectoryNotFound(f"no entry with inode {inode} on disk {disk_id!r}")
            rel = found
        full = os.path.join(root, rel) if rel else root
        try:
            st = os.lstat(full)
        except OSError:
            raise DirectoryNotFound(f"no entry with inode {inode} on disk {disk_id!r}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectory(f"inode {inode} is not a directory")
        entries: list[dict[str, Any]] = []
        with os.scandir(full) as it:
            for e in it:
                try:
                    est = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                mode = est.st_mode
                if stat.S_ISREG(mode):
                    kind = "file"
                elif stat.S_ISDIR(mode):
                    kind = "directory"
                elif stat.S_ISLNK(mode):
                    kind = "symlink"
                else:
                    kind = "other"
                name = e.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                child = f"{rel}/{e.name}" if rel else e.name
                self._remember(disk_id, est.st_ino, child)
                entries.append(
                    {
                        "name": name,
                        "inodeId": est.st_ino,
                        "type": kind,
                        "size": est.st_size if kind == "file" else 0,
                        "modifiedAt": _iso(est.st_mtime),
                    }
                )
        entries.sort(key=lambda x: x["name"])
        shown = "/" + rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return {"inodeId": inode, "path": shown, "entries": entries}
