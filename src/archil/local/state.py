"""Persistent state of the local control plane, in SQLite (WAL mode).

One connection is shared by every thread and guarded by a lock: each call is a
short statement or transaction, so contention stays negligible. The schema is
versioned with ``PRAGMA user_version`` and upgraded in place on open.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "IdempotentResult", "State", "StateError", "utcnow"]

IDEMPOTENCY_TTL = 24 * 3600.0

_MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE disks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        provider TEXT NOT NULL,
        mounts TEXT NOT NULL,
        config_digest TEXT NOT NULL,
        auto_created INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        last_accessed TEXT
    );
    CREATE TABLE disk_users (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        disk_id TEXT NOT NULL,
        type TEXT NOT NULL,
        identifier TEXT NOT NULL,
        nickname TEXT,
        principal TEXT,
        token_suffix TEXT,
        token_digest TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (disk_id, type, identifier)
    );
    CREATE TABLE api_tokens (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        description TEXT,
        token_digest TEXT NOT NULL UNIQUE,
        token_suffix TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_used_at TEXT
    );
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        dockerfile TEXT NOT NULL,
        status TEXT NOT NULL,
        failure_reason TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE containers (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        disk_id TEXT NOT NULL,
        request TEXT NOT NULL,
        exit_code INTEGER,
        failure_reason TEXT,
        ports TEXT NOT NULL DEFAULT '[]',
        limits TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE INDEX containers_disk ON containers (disk_id);
    CREATE INDEX containers_status ON containers (status);
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE object_meta (
        disk_id TEXT NOT NULL,
        key TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        etag TEXT NOT NULL,
        content_type TEXT,
        PRIMARY KEY (disk_id, key)
    );
    """,
    # version 2: sandboxes and their checkpoints
    """
    CREATE TABLE sandboxes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        spec TEXT NOT NULL,
        disks TEXT NOT NULL DEFAULT '[]',
        image_digest TEXT,
        layers TEXT NOT NULL DEFAULT '[]',
        checkpoint TEXT,
        previous_checkpoint TEXT,
        parent_id TEXT,
        ports TEXT NOT NULL DEFAULT '[]',
        exit_reason TEXT,
        created_at TEXT NOT NULL,
        running_at TEXT,
        finished_at TEXT,
        last_active_at TEXT NOT NULL
    );
    CREATE INDEX sandboxes_parent ON sandboxes (parent_id);
    CREATE TABLE checkpoints (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        layers TEXT NOT NULL,
        committed INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE INDEX checkpoints_sandbox ON checkpoints (sandbox_id);
    """,
    # version 3: compute lives in sandboxes; the records of the retired container API go
    """
    DROP TABLE IF EXISTS containers;
    DROP TABLE IF EXISTS images;
    """,
]

SCHEMA_VERSION = len(_MIGRATIONS)


class StateError(RuntimeError):
    """The state database cannot be used (for example it was written by a newer version)."""


def utcnow() -> str:
    """The current UTC time as an RFC 3339 string with millisecond precision."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class IdempotentResult:
    """A stored response for an ``Idempotency-Key``."""

    __slots__ = ("body", "fingerprint", "headers", "status")

    def __init__(
        self, fingerprint: str, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self.fingerprint = fingerprint
        self.status = status
        self.headers = headers
        self.body = body


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return None if row is None else dict(row)


class State:
    """The SQLite-backed store of disks, users, API tokens, images, containers and idempotency keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    # -- plumbing -------------------------------------------------------------

    def _migrate(self) -> None:
        with self._lock:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} was written by a newer archil (schema {version}, "
                    f"this one knows {SCHEMA_VERSION}); upgrade archil or use another data dir"
                )
            for number in range(version, SCHEMA_VERSION):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _MIGRATIONS[number].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {number + 1}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        with self._lock:
            return _row(self._db.execute(sql, args).fetchone())

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def close(self) -> None:
        """Checkpoint the WAL and close the connection."""
        with self._lock:
            with suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    # -- meta -----------------------------------------------------------------

    def set_meta_default(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is already there; return the stored value."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return str(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    # -- disks ----------------------------------------------------------------

    def insert_disk(
        self,
        *,
        disk_id: str,
        name: str,
        provider: str,
        mounts: list[dict[str, Any]],
        config_digest: str,
        auto_created: bool = False,
    ) -> dict[str, Any]:
        """Insert a disk (raises ``sqlite3.IntegrityError`` when the id or name is taken)."""
        now = utcnow()
        with self._tx() as db:
            db.execute(
                "INSERT INTO disks (id, name, status, provider, mounts, config_digest, auto_created, created_at)"
                " VALUES (?, ?, 'available', ?, ?, ?, ?, ?)",
                (
                    disk_id,
                    name,
                    provider,
                    json.dumps(mounts),
                    config_digest,
                    int(auto_created),
                    now,
                ),
            )
            row = db.execute("SELECT * FROM disks WHERE id = ?", (disk_id,)).fetchone()
        return dict(row)

    def get_disk(self, disk_id: str) -> dict[str, Any] | None:
        """A disk row by id."""
        return self._one("SELECT * FROM disks WHERE id = ?", (disk_id,))

    def get_disk_by_name(self, name: str) -> dict[str, Any] | None:
        """A disk row by name."""
        return self._one("SELECT * FROM disks WHERE name = ?", (name,))

    def list_disks(self, *, after: int, limit: int, name: str | None) -> list[dict[str, Any]]:
        """Disks in creation order after sequence number ``after``."""
        if name is not None:
            return self._all(
                "SELECT * FROM disks WHERE seq > ? AND name = ? ORDER BY seq LIMIT ?",
                (after, name, limit),
            )
        return self._all("SELECT * FROM disks WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))

    def touch_disk(self, disk_id: str) -> None:
        """Record an access to a disk."""
        self._exec("UPDATE disks SET last_accessed = ? WHERE id = ?", (utcnow(), disk_id))

    def delete_disk(self, disk_id: str) -> bool:
        """Delete a disk and its users and object metadata."""
        with self._tx() as db:
            n = db.execute("DELETE FROM disks WHERE id = ?", (disk_id,)).rowcount
            db.execute("DELETE FROM disk_users WHERE disk_id = ?", (disk_id,))
            db.execute("DELETE FROM object_meta WHERE disk_id = ?", (disk_id,))
        return n > 0

    # -- disk users -----------------------------------------------------------

    def insert_user(
        self,
        *,
        disk_id: str,
        type: str,
        identifier: str,
        nickname: str | None,
        principal: str | None,
        token_suffix: str | None,
        token_digest: str | None,
    ) -> dict[str, Any]:
        """Add a user to a disk (raises ``sqlite3.IntegrityError`` on a duplicate identifier)."""
        now = utcnow()
        with self._tx() as db:
            db.execute(
                "INSERT INTO disk_users (disk_id, type, identifier, nickname, principal, token_suffix,"
                " token_digest, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (disk_id, type, identifier, nickname, principal, token_suffix, token_digest, now),
            )
            row = db.execute(
                "SELECT * FROM disk_users WHERE disk_id = ? AND type = ? AND identifier = ?",
                (disk_id, type, identifier),
            ).fetchone()
        return dict(row)

    def list_users(self, disk_id: str) -> list[dict[str, Any]]:
        """A disk's users in the order they were added."""
        return self._all("SELECT * FROM disk_users WHERE disk_id = ? ORDER BY seq", (disk_id,))

    def delete_user(self, disk_id: str, type: str, identifier: str) -> bool:
        """Remove a user; ``False`` when there was none."""
        return (
            self._exec(
                "DELETE FROM disk_users WHERE disk_id = ? AND type = ? AND identifier = ?",
                (disk_id, type, identifier),
            )
            > 0
        )

    # -- API tokens -----------------------------------------------------------

    def insert_token(
        self,
        *,
        token_id: str,
        name: str,
        description: str | None,
        token_digest: str,
        token_suffix: str,
    ) -> dict[str, Any]:
        """Store an API token's public record and the digest of its secret."""
        now = utcnow()
        with self._tx() as db:
            db.execute(
                "INSERT INTO api_tokens (id, name, description, token_digest, token_suffix, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (token_id, name, description, token_digest, token_suffix, now),
            )
            row = db.execute("SELECT * FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
        return dict(row)

    def token_by_digest(self, digest: str) -> dict[str, Any] | None:
        """The API token whose secret has this digest."""
        return self._one("SELECT * FROM api_tokens WHERE token_digest = ?", (digest,))

    def touch_token(self, token_id: str, when: str) -> None:
        """Record that an API token was used."""
        self._exec("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (when, token_id))

    def list_tokens(self, *, after: int, limit: int) -> list[dict[str, Any]]:
        """API tokens in creation order."""
        return self._all(
            "SELECT * FROM api_tokens WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )

    def delete_token(self, token_id: str) -> bool:
        """Revoke an API token."""
        return self._exec("DELETE FROM api_tokens WHERE id = ?", (token_id,)) > 0

    # -- sandboxes ------------------------------------------------------------

    _SANDBOX_COLUMNS = frozenset(
        {
            "status",
            "spec",
            "disks",
            "image_digest",
            "layers",
            "checkpoint",
            "previous_checkpoint",
            "ports",
            "exit_reason",
            "running_at",
            "finished_at",
            "last_active_at",
        }
    )

    def insert_sandbox(
        self,
        *,
        sandbox_id: str,
        name: str,
        status: str,
        spec: dict[str, Any],
        disks: list[str],
        layers: list[str],
        parent_id: str | None = None,
    ) -> dict[str, Any]:
        """Insert a sandbox (``sqlite3.IntegrityError`` when its id or name is taken)."""
        now = utcnow()
        with self._tx() as db:
            db.execute(
                "INSERT INTO sandboxes (id, name, status, spec, disks, layers, parent_id,"
                " created_at, last_active_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sandbox_id,
                    name,
                    status,
                    json.dumps(spec),
                    json.dumps(disks),
                    json.dumps(layers),
                    parent_id,
                    now,
                    now,
                ),
            )
            row = db.execute("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return dict(row)

    def get_sandbox(self, sandbox_id: str) -> dict[str, Any] | None:
        """A sandbox row by id."""
        return self._one("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,))

    def get_sandbox_by_name(self, name: str) -> dict[str, Any] | None:
        """A sandbox row by name."""
        return self._one("SELECT * FROM sandboxes WHERE name = ?", (name,))

    def list_sandboxes(self) -> list[dict[str, Any]]:
        """Every sandbox, oldest first."""
        return self._all("SELECT * FROM sandboxes ORDER BY seq")

    def update_sandbox(self, sandbox_id: str, **fields: Any) -> dict[str, Any] | None:
        """Set columns of a sandbox row (lists and dicts are stored as JSON); the new row."""
        unknown = set(fields) - self._SANDBOX_COLUMNS
        if unknown:
            raise ValueError(f"unknown sandbox columns: {sorted(unknown)}")
        if not fields:
            return self.get_sandbox(sandbox_id)
        names = sorted(fields)
        values = [
            json.dumps(fields[n]) if isinstance(fields[n], (list, dict)) else fields[n]
            for n in names
        ]
        assignments = ", ".join(f"{n} = ?" for n in names)
        with self._tx() as db:
            db.execute(f"UPDATE sandboxes SET {assignments} WHERE id = ?", (*values, sandbox_id))
            row = db.execute("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return None if row is None else dict(row)

    def delete_sandbox(self, sandbox_id: str) -> bool:
        """Remove a sandbox and its checkpoints."""
        with self._tx() as db:
            n = db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,)).rowcount
            db.execute("DELETE FROM checkpoints WHERE sandbox_id = ?", (sandbox_id,))
        return n > 0

    def children_of(self, sandbox_id: str) -> list[dict[str, Any]]:
        """The sandboxes forked from ``sandbox_id``."""
        return self._all("SELECT * FROM sandboxes WHERE parent_id = ? ORDER BY seq", (sandbox_id,))

    def insert_checkpoint(
        self, checkpoint_id: str, sandbox_id: str, layers: list[str], *, committed: bool
    ) -> None:
        """Record a checkpoint: the layers (newest first) a fork of it boots on."""
        self._exec(
            "INSERT INTO checkpoints (id, sandbox_id, layers, committed, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (checkpoint_id, sandbox_id, json.dumps(layers), int(committed), utcnow()),
        )

    def get_checkpoint(self, checkpoint_id: str) -> dict[str, Any] | None:
        """A checkpoint row."""
        return self._one("SELECT * FROM checkpoints WHERE id = ?", (checkpoint_id,))

    def checkpoints_of(self, sandbox_id: str) -> list[str]:
        """The ids of a sandbox's checkpoints."""
        rows = self._all("SELECT id FROM checkpoints WHERE sandbox_id = ?", (sandbox_id,))
        return [str(r["id"]) for r in rows]

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Forget a checkpoint (its layers are collected by the caller)."""
        self._exec("DELETE FROM checkpoints WHERE id = ?", (checkpoint_id,))

    def layers_in_use(self) -> set[str]:
        """Every layer id some sandbox or kept checkpoint still needs."""
        used: set[str] = set()
        with self._lock:
            for (text,) in self._db.execute("SELECT layers FROM sandboxes"):
                used.update(json.loads(text))
            for (text,) in self._db.execute("SELECT layers FROM checkpoints"):
                used.update(json.loads(text))
        return used

    # -- idempotency ----------------------------------------------------------

    def get_idempotent(self, key: str) -> IdempotentResult | None:
        """The stored result for ``key`` if it is younger than 24 hours."""
        row = self._one(
            "SELECT * FROM idempotency WHERE key = ? AND created_at > ?",
            (key, time.time() - IDEMPOTENCY_TTL),
        )
        if row is None:
            return None
        headers = [(str(k), str(v)) for k, v in json.loads(row["headers"])]
        return IdempotentResult(row["fingerprint"], int(row["status"]), headers, bytes(row["body"]))

    def put_idempotent(self, key: str, result: IdempotentResult) -> None:
        """Store the result of the first request made with ``key``."""
        self._exec(
            "INSERT OR REPLACE INTO idempotency (key, fingerprint, status, headers, body, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                key,
                result.fingerprint,
                result.status,
                json.dumps(result.headers),
                result.body,
                time.time(),
            ),
        )

    def purge_idempotent(self) -> int:
        """Forget idempotency keys older than 24 hours."""
        return self._exec(
            "DELETE FROM idempotency WHERE created_at <= ?", (time.time() - IDEMPOTENCY_TTL,)
        )

    # -- object metadata cache ------------------------------------------------

    def get_object_meta(self, disk_id: str, key: str) -> dict[str, Any] | None:
        """Cached ETag and content type of an object."""
        return self._one("SELECT * FROM object_meta WHERE disk_id = ? AND key = ?", (disk_id, key))

    def put_object_meta(
        self,
        disk_id: str,
        key: str,
        *,
        size: int,
        mtime_ns: int,
        ino: int,
        etag: str,
        content_type: str | None,
    ) -> None:
        """Cache an object's ETag and content type for its current size, mtime and inode."""
        self._exec(
            "INSERT OR REPLACE INTO object_meta (disk_id, key, size, mtime_ns, ino, etag, content_type)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (disk_id, key, size, mtime_ns, ino, etag, content_type),
        )

    def delete_object_meta(self, disk_id: str, key: str) -> None:
        """Forget an object's cached metadata."""
        self._exec("DELETE FROM object_meta WHERE disk_id = ? AND key = ?", (disk_id, key))
