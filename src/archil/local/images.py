"""The local control plane's images: OCI references built into cached layers on this machine.

``POST /api/images {"source": "python:3.11-slim"}`` is :meth:`ImageStore.request`: the
reference is parsed and normalized (:mod:`archil.local.imageref`), its image id is
``img-`` and 16 hex digits of the SHA-256 of the normalized source, so requesting the same
image again, however it is spelled, returns the same image. A new image, or one that
failed, starts building in a background thread (:mod:`archil.local.buildrun`) and the
call returns at once with ``status: building``; a reference this machine cannot run
(``alpine:3.20``) fails at once with ``failure_reason: invalid_source``.

Each image lives in ``<root>/<image_id>/``: ``manifest.json`` (its status, the one place
it is kept, written atomically), ``build.log`` and ``layer/`` (what sandboxes see beneath
their own layers). A lock file (``.lock``, ``flock``) is held for the length of a build,
so threads and processes sharing ``root`` build an image once; a manifest that says
``building`` while nobody holds the lock was left by a crash, and reads as ``failed``
with ``failure_reason: interrupted`` (requesting the image builds it again). A ready
image is reused across restarts as long as its interpreter is still on this machine;
one whose interpreter is gone reads as ``failed``/``invalid_source`` and builds again
when requested.

``digest`` is ``sha256:`` of what the layer was built from (the normalized source, the
kind of base, the interpreter's path and version, the builder version): the same inputs
give the same digest on every rebuild and restart. ``canonical_source`` is the
repository with that digest (``docker.io/library/python@sha256:...``). Both are set only
while a successful build's layer is on disk: a rebuild rewrites ``layer/`` in place, so
they are cleared when it starts.

Private images: the local control plane pulls nothing from any registry, so registry
credentials (``registry_auth``) are of no use to it. The server drops them without
reading, storing or logging them (this module never receives them) and every image is
reported with ``private: false``; a private registry's image fails with
``invalid_source`` like any other reference this machine cannot run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from archil.local import buildrun
from archil.local.imageref import ImageRef, LocalBase, local_base, parse_reference
from archil.local.spec import ImageEnv

__all__ = [
    "FailureReason",
    "ImageRecord",
    "ImageStatus",
    "ImageStore",
    "ImageUnavailable",
    "image_id_for",
]

logger = logging.getLogger("archil")

ImageStatus = Literal["building", "ready", "failed"]
FailureReason = Literal["invalid_source", "interrupted"]

_ID_RE = re.compile(r"^img-[0-9a-f]{16}$")
_LOCK_POLL = 0.05


def image_id_for(normalized_source: str) -> str:
    """The image id of a normalized reference: ``img-`` and 16 hex digits of its SHA-256."""
    return "img-" + hashlib.sha256(normalized_source.encode("utf-8")).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ImageRecord:
    """What ``GET /api/images/{image_id}`` reports (the live API's ``Image``, snake_case).

    ``failure_message`` is this control plane's addition: the sentence saying why a
    ``failed`` image failed. ``created_at``/``updated_at`` are RFC 3339 in UTC.
    """

    image_id: str
    source: str
    private: bool
    status: ImageStatus
    failure_reason: FailureReason | None
    failure_message: str | None
    digest: str | None
    canonical_source: str | None
    created_at: str
    updated_at: str

    def to_wire(self) -> dict[str, Any]:
        """The API's JSON object: fields that are not set are left out."""
        data: dict[str, Any] = {
            "image_id": self.image_id,
            "source": self.source,
            "private": self.private,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        for key in ("digest", "canonical_source", "failure_reason", "failure_message"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


class ImageUnavailable(Exception):
    """An image that is not ready was asked for its environment; ``record`` says why."""

    def __init__(self, record: ImageRecord, message: str | None = None) -> None:
        self.record = record
        text = message or record.failure_message or f"image {record.image_id} is {record.status}"
        super().__init__(text)


@dataclass
class _Build:
    image_id: str
    source: str
    ref: ImageRef
    base: LocalBase
    created_at: str
    requested_at: str
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class ImageStore:
    """The images of one local control plane, kept under ``root`` (see the module docs)."""

    def __init__(self, root: Path) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        # Absolute and free of symlinks: layers and host_path are handed on as host paths.
        self._root = root.resolve()
        self._mu = threading.Lock()
        self._builds: dict[str, _Build] = {}
        self._stop = threading.Event()
        self._closed = False
        self.builds_run = 0
        """How many builds this store ran (one that found the image built by another
        store or process does not count)."""

    @property
    def root(self) -> Path:
        """The directory holding the images."""
        return self._root

    # -- files ----------------------------------------------------------------------------

    def _dir(self, image_id: str) -> Path:
        return self._root / image_id

    def _read(self, image_id: str) -> dict[str, Any] | None:
        try:
            with open(self._dir(image_id) / "manifest.json", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("image_id") == image_id else None

    def _write(self, data: dict[str, Any]) -> None:
        directory = self._dir(str(data["image_id"]))
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".manifest.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / "manifest.json")

    def _open_lock(self, image_id: str) -> int:
        directory = self._dir(image_id)
        directory.mkdir(parents=True, exist_ok=True)
        return os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @contextlib.contextmanager
    def _try_lock(self, image_id: str) -> Iterator[bool]:
        """Hold the build lock if nobody does; yields whether it is held."""
        try:
            fd = self._open_lock(image_id)
        except OSError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                yield False
                return
            yield True
        finally:
            os.close(fd)

    # -- records ----------------------------------------------------------------------------

    @staticmethod
    def _record(m: dict[str, Any]) -> ImageRecord:
        return ImageRecord(
            image_id=str(m["image_id"]),
            source=str(m["source"]),
            private=False,
            status=m["status"],
            failure_reason=m.get("failure_reason"),
            failure_message=m.get("failure_message"),
            digest=m.get("digest"),
            canonical_source=m.get("canonical_source"),
            created_at=str(m["created_at"]),
            updated_at=str(m["updated_at"]),
        )

    def _fail_manifest(
        self, m: dict[str, Any], reason: FailureReason, message: str
    ) -> dict[str, Any]:
        m = dict(m)
        m.update(
            status="failed",
            failure_reason=reason,
            failure_message=message,
            digest=None,
            canonical_source=None,
            updated_at=_now(),
        )
        return m

    def _broken(self, m: dict[str, Any]) -> str | None:
        """Why a ready image can no longer be used (cheap checks), or None."""
        built = m.get("build") or {}
        interpreter = built.get("interpreter")
        if interpreter and not os.path.exists(interpreter):
            version = built.get("python_version")
            what = f"Python {version} ({interpreter})" if version else str(interpreter)
            return (
                f"{what} is no longer on this machine; request the image again to build it "
                "from another interpreter"
            )
        if not (self._dir(str(m["image_id"])) / "layer").is_dir():
            return "the image's files are gone from the cache; request the image again"
        return None

    def _load(self, image_id: str) -> dict[str, Any] | None:
        """The manifest, with a crashed build read as interrupted and a broken image as failed."""
        m = self._read(image_id)
        if m is None:
            return None
        status = m.get("status")
        if status == "building":
            with self._try_lock(image_id) as held:
                if not held:
                    return m
                m = self._read(image_id) or m
                if m.get("status") == "building":
                    m = self._fail_manifest(
                        m,
                        "interrupted",
                        "the build did not finish (the local control plane stopped during "
                        "it); request the image again to build it",
                    )
                    self._write(m)
        elif status == "ready":
            why = self._broken(m)
            if why is not None:
                with self._try_lock(image_id) as held:
                    if held:
                        m = self._fail_manifest(m, "invalid_source", why)
                        self._write(m)
        return m

    def _pending_record(self, build: _Build) -> ImageRecord:
        m = self._read(build.image_id)
        if m is not None and m.get("status") == "building":
            return self._record(m)
        return ImageRecord(
            image_id=build.image_id,
            source=build.source,
            private=False,
            status="building",
            failure_reason=None,
            failure_message=None,
            digest=None,
            canonical_source=None,
            created_at=build.created_at,
            updated_at=build.requested_at,
        )

    # -- the API ------------------------------------------------------------------------------

    def request(self, source: str) -> ImageRecord:
        """``POST /api/images``: the image of ``source``, building it if new or failed.

        Returns at once. ``ValueError("source: ...")`` for a malformed reference; a
        reference this machine cannot run is returned ``failed``/``invalid_source``.
        """
        ref = parse_reference(source)
        normalized = ref.normalized
        image_id = image_id_for(normalized)
        base = local_base(ref)
        with self._mu:
            if self._closed:
                raise RuntimeError("the image store is closed")
            pending = self._builds.get(image_id)
            if pending is not None and not pending.done.is_set():
                return self._pending_record(pending)
            m = self._load(image_id)
            if isinstance(base, str):
                return self._reject(image_id, normalized, base, m)
            if m is not None and m.get("status") == "building":
                return self._record(m)
            if (
                m is not None
                and m.get("status") == "ready"
                and m.get("builder_version") == buildrun.BUILDER_VERSION
            ):
                return self._record(m)
            now = _now()
            created = str(m["created_at"]) if m is not None else now
            build = _Build(image_id, normalized, ref, base, created_at=created, requested_at=now)
            build.thread = threading.Thread(
                target=self._run, args=(build,), name=f"archil-image-{image_id}", daemon=True
            )
            self._builds[image_id] = build
            build.thread.start()
            return self._pending_record(build)

    def _reject(
        self, image_id: str, source: str, reason: str, m: dict[str, Any] | None
    ) -> ImageRecord:
        if m is not None and m.get("status") == "failed" and m.get("failure_message") == reason:
            return self._record(m)
        now = _now()
        data = {
            "image_id": image_id,
            "source": source,
            "private": False,
            "created_at": str(m["created_at"]) if m is not None else now,
            "updated_at": now,
        }
        data = self._fail_manifest(data, "invalid_source", reason)
        with self._try_lock(image_id) as held:
            if held:
                self._write(data)
                with contextlib.suppress(OSError):
                    (self._dir(image_id) / "build.log").write_text(reason + "\n", "utf-8")
        return self._record(data)

    def get(self, image_id: str) -> ImageRecord | None:
        """``GET /api/images/{image_id}``; None for an unknown image."""
        if not isinstance(image_id, str) or not _ID_RE.match(image_id):
            return None
        with self._mu:
            pending = self._builds.get(image_id)
        if pending is not None and not pending.done.is_set():
            return self._pending_record(pending)
        m = self._load(image_id)
        return self._record(m) if m is not None else None

    def list(self) -> list[ImageRecord]:
        """Every image this store knows (built, building or failed), oldest first."""
        try:
            names = [e.name for e in os.scandir(self._root) if _ID_RE.match(e.name)]
        except OSError:
            return []
        records = [r for r in (self.get(n) for n in names) if r is not None]
        return sorted(records, key=lambda r: (r.created_at, r.image_id))

    def wait(self, image_id: str, timeout: float) -> ImageRecord:
        """Block until the image is not ``building`` or ``timeout`` seconds pass; its record.

        ``LookupError`` for an unknown image.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            record = self.get(image_id)
            if record is None:
                raise LookupError(f"image_id: no image {image_id!r}")
            remaining = deadline - time.monotonic()
            if record.status != "building" or remaining <= 0:
                return record
            with self._mu:
                pending = self._builds.get(image_id)
            if pending is not None and not pending.done.is_set():
                pending.done.wait(min(remaining, 0.5))
            else:
                time.sleep(min(remaining, _LOCK_POLL))

    def environment(self, image_id: str) -> ImageEnv:
        """What a sandbox of a ready image gets; ``ImageUnavailable`` if it is not ready.

        ``LookupError`` for an unknown image.
        """
        record = self.get(image_id)
        if record is None:
            raise LookupError(f"image_id: no image {image_id!r}")
        if record.status != "ready":
            raise ImageUnavailable(record)
        m = self._read(image_id) or {}
        built: dict[str, Any] = m.get("build") or {}
        return ImageEnv(
            image_id=image_id,
            source=record.source,
            layer=self._dir(image_id) / "layer",
            binds=tuple(Path(p) for p in built.get("binds", [])),
            env={str(k): str(v) for k, v in (built.get("env") or {}).items()},
            host_path=tuple(str(p) for p in built.get("host_path", [])),
            python_version=built.get("python_version"),
            digest=record.digest,
        )

    def resolve(self, source: str, timeout: float = 600.0) -> ImageEnv:
        """Request ``source``, wait for it, and return its environment (``ImageUnavailable``)."""
        record = self.wait(self.request(source).image_id, timeout)
        if record.status == "building":
            raise ImageUnavailable(
                record, f"image {record.image_id} ({record.source}) is still building"
            )
        return self.environment(record.image_id)

    def build_output(self, image_id: str) -> str:
        """The build log of the image (its last build), or ``""``."""
        if not isinstance(image_id, str) or not _ID_RE.match(image_id):
            return ""
        try:
            return (self._dir(image_id) / "build.log").read_text("utf-8", errors="replace")
        except OSError:
            return ""

    def close(self, timeout: float = 10.0) -> None:
        """Stop builds in progress (they read as interrupted) and wait for their threads."""
        with self._mu:
            self._closed = True
            builds = list(self._builds.values())
        self._stop.set()
        deadline = time.monotonic() + timeout
        for b in builds:
            if b.thread is not None:
                b.thread.join(max(0.0, deadline - time.monotonic()))

    # -- building ---------------------------------------------------------------------------

    def _acquire(self, image_id: str) -> int | None:
        """Take the build lock, waiting for another builder; None if the store closes first."""
        fd = self._open_lock(image_id)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
            if self._stop.wait(_LOCK_POLL):
                os.close(fd)
                return None

    def _run(self, build: _Build) -> None:
        fd: int | None = None
        try:
            fd = self._acquire(build.image_id)
            if fd is None:
                return
            m = self._read(build.image_id)
            if (
                m is not None
                and m.get("status") == "ready"
                and m.get("builder_version") == buildrun.BUILDER_VERSION
                and self._broken(m) is None
            ):
                return
            with self._mu:
                self.builds_run += 1
            self._build_locked(build)
        except Exception as e:
            logger.exception("image build %s crashed", build.image_id)
            with contextlib.suppress(Exception):
                self._write(self._failed_data(build, "interrupted", f"the build crashed: {e}"))
        finally:
            if fd is not None:
                os.close(fd)
            build.done.set()

    def _base_data(self, build: _Build) -> dict[str, Any]:
        return {
            "image_id": build.image_id,
            "source": build.source,
            "private": False,
            "created_at": build.created_at,
            "base": {"kind": build.base.kind, "python_version": build.base.python_version},
        }

    def _failed_data(self, build: _Build, reason: FailureReason, message: str) -> dict[str, Any]:
        return self._fail_manifest(self._base_data(build), reason, message)

    def _digest(self, build: _Build, built: dict[str, Any]) -> str:
        inputs = {
            "source": build.source,
            "kind": build.base.kind,
            "interpreter": built.get("interpreter"),
            "python_full_version": built.get("python_full_version"),
            "userland": built.get("userland"),
            "builder_version": buildrun.BUILDER_VERSION,
        }
        blob = json.dumps(inputs, sort_keys=True).encode("utf-8")
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def _build_locked(self, build: _Build) -> None:
        directory = self._dir(build.image_id)
        data = self._base_data(build)
        data.update(
            status="building",
            failure_reason=None,
            failure_message=None,
            digest=None,
            canonical_source=None,
            updated_at=_now(),
        )
        self._write(data)
        started = time.monotonic()
        with open(directory / "build.log", "w", encoding="utf-8") as log_file:

            def log(line: str) -> None:
                log_file.write(line.rstrip("\n") + "\n")
                log_file.flush()

            log(f"building {build.source}")
            try:
                built = buildrun.build_layer(
                    build.base, directory / "layer", log, should_stop=self._stop.is_set
                )
            except buildrun.BuildError as e:
                log(f"failed: {e}")
                self._write(self._failed_data(build, "invalid_source", str(e)))
                return
            except buildrun.BuildInterrupted as e:
                log(f"interrupted: {e}")
                self._write(self._failed_data(build, "interrupted", str(e)))
                return
            digest = self._digest(build, built)
            log(f"ready in {time.monotonic() - started:.1f}s: {digest}")
        data.update(
            status="ready",
            digest=digest,
            canonical_source=f"{build.ref.name}@{digest}",
            builder_version=buildrun.BUILDER_VERSION,
            build=built,
            updated_at=_now(),
        )
        self._write(data)
        logger.info("image %s (%s) is ready", build.image_id, build.source)
