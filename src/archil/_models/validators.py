"""Argument validators usable on their own: ids, paths, object keys, list and mapping arguments.

The client checks arguments with these before anything is sent; the wire
models call them from their field validators.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

from archil._constants import SANDBOX_DISK_PATH

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORBIDDEN_MOUNT_ROOTS = ("/proc", "/sys", "/dev", SANDBOX_DISK_PATH)


def validate_disk_id(value: str, field: str = "disk_id") -> str:
    """Return ``value`` if it is a well-formed disk id, else raise ``ValueError`` naming ``field``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    if not _ID_RE.match(value):
        raise ValueError(
            f"{field} {value!r} is not a valid disk id "
            "(letters, digits, '-', '_' and '.', at most 128 characters, e.g. 'dsk-0123456789abcdef')"
        )
    return value


def validate_container_id(value: str, field: str = "container_id") -> str:
    """Return ``value`` if it is a well-formed container id, else raise ``ValueError``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    if not _CONTAINER_ID_RE.match(value):
        raise ValueError(
            f"{field} {value!r} is not a valid container id (e.g. 'cntr-0123456789abcdef')"
        )
    return value


def validate_mount_path(value: str, field: str = "path") -> str:
    """An absolute container path for an additional mount: no ``..``, not a system directory."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty absolute path")
    if not value.startswith("/"):
        raise ValueError(f"{field} {value!r} must be an absolute path (start with '/')")
    if "\x00" in value:
        raise ValueError(f"{field} {value!r} contains a NUL byte")
    parts = value.split("/")
    if any(p in ("..", ".") for p in parts):
        raise ValueError(f"{field} {value!r} must not contain '.' or '..' segments")
    norm = posixpath.normpath(value)
    if norm == "/":
        raise ValueError(f"{field} must not be '/'")
    for root in _FORBIDDEN_MOUNT_ROOTS:
        if norm == root or norm.startswith(root + "/"):
            raise ValueError(
                f"{field} {value!r} is reserved ({root} cannot be used as a mount path)"
            )
    return norm


def validate_relative_path(value: str, field: str = "path", *, allow_empty: bool = False) -> str:
    """A relative path with no ``.``/``..`` segments and no leading ``/`` (exec mounts, subdirectories)."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    if value == "":
        if allow_empty:
            return value
        raise ValueError(f"{field} must not be empty")
    if value.startswith("/"):
        raise ValueError(f"{field} {value!r} must be relative (no leading '/')")
    if "\x00" in value or "\\" in value:
        raise ValueError(f"{field} {value!r} contains a forbidden character")
    parts = [p for p in value.split("/") if p != ""]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"{field} {value!r} must not contain '.' or '..' segments")
    return "/".join(parts)


def as_list(value: Any, field: str) -> list[Any] | None:
    """``value`` (any iterable but a string or a mapping) as a list; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"{field} must be a list, got {type(value).__name__}")
    return list(value)


def as_dict(value: Any, field: str) -> dict[Any, Any] | None:
    """``value`` (a mapping) as a dict; ``None`` stays ``None``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{field} must be a mapping of names to values, got {type(value).__name__}"
        )
    return dict(value)


def validate_object_key(value: str, field: str = "key") -> str:
    """An object key inside a disk: relative, no ``.``/``..`` or empty segments, no control
    characters (NUL, newlines...), at most 1024 bytes."""
    if not isinstance(value, str) or value == "":
        raise ValueError(f"{field} must be a non-empty string")
    if len(value.encode("utf-8")) > 1024:
        raise ValueError(f"{field} is longer than 1024 bytes")
    if value.startswith("/"):
        raise ValueError(f"{field} {value!r} must not start with '/'")
    if "\\" in value:
        raise ValueError(f"{field} {value!r} contains a forbidden character")
    if any(c < " " or c == "\x7f" for c in value):
        # XML 1.0 (the object API's listings) cannot carry them, nor can a URL path safely.
        raise ValueError(f"{field} {value!r} contains a control character")
    if any(p in (".", "..") for p in value.split("/")):
        raise ValueError(f"{field} {value!r} must not contain '.' or '..' segments")
    if "//" in value:
        # A disk is a file system: 'a//b' names no file (the gateway refuses it too).
        raise ValueError(f"{field} {value!r} must not contain empty segments ('//')")
    return value
