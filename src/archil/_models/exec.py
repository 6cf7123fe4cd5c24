"""Exec: a shell command run once with one or more disks mounted, and its result."""

from __future__ import annotations

from typing import Union

from pydantic import Field, field_validator

from .base import _Request, _Response
from .validators import validate_disk_id, validate_relative_path


class ExecDiskRequest(_Request):
    """``POST /api/disks/{id}/exec``: a shell command run with the disk at ``/mnt/archil``."""

    command: str = Field(min_length=1)


class ExecMount(_Request):
    """A disk mounted at a relative path under ``/mnt/archil`` for ``POST /api/exec``."""

    disk: str
    subdirectory: str | None = None
    read_only: bool = False

    @field_validator("disk")
    @classmethod
    def _disk(cls, v: str) -> str:
        return validate_disk_id(v, "disk")

    @field_validator("subdirectory")
    @classmethod
    def _sub(cls, v: str | None) -> str | None:
        return None if v is None else validate_relative_path(v, "subdirectory")


class ExecRequest(_Request):
    """``POST /api/exec`` (``disks`` maps relative paths to disk ids or :class:`ExecMount`)."""

    disks: dict[str, Union[str, ExecMount]] = Field(min_length=1)  # noqa: UP007
    command: str = Field(min_length=1)

    @field_validator("disks")
    @classmethod
    def _disks(cls, v: dict[str, str | ExecMount]) -> dict[str, str | ExecMount]:
        out: dict[str, str | ExecMount] = {}
        for path, target in v.items():
            rel = validate_relative_path(path, "disks key")
            if rel in out:
                raise ValueError(f"disks: two disks are mounted at {rel!r}")
            if isinstance(target, str):
                validate_disk_id(target, f"disks[{path!r}]")
            out[rel] = target
        return out


class ExecTiming(_Response):
    """Server-measured timings of an exec request, in milliseconds."""

    total_ms: int
    queue_ms: int
    execute_ms: int


class ExecResult(_Response):
    """The result of an exec request."""

    exit_code: int
    stdout: str
    stderr: str
    timing: ExecTiming
