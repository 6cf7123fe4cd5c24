"""The object API (S3-compatible): object metadata, listings, bulk deletes and multipart uploads."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from .base import _Response


class ObjectInfo(_Response):
    """An object's metadata (from HEAD or a listing)."""

    key: str
    size: int
    etag: str | None = None
    last_modified: datetime | None = None


class ObjectListing(_Response):
    """One page of ListObjectsV2."""

    objects: list[ObjectInfo] = Field(default_factory=list)
    common_prefixes: list[str] = Field(default_factory=list)
    is_truncated: bool = False
    next_continuation_token: str | None = None


class DeleteError(_Response):
    """A key that DeleteObjects could not delete, with S3's error code."""

    key: str
    code: str | None = None
    message: str | None = None


class DeleteResult(_Response):
    """What ``objects.delete_many`` did: the keys deleted (a missing key counts) and the failures."""

    deleted: list[str] = Field(default_factory=list)
    errors: list[DeleteError] = Field(default_factory=list)


class MultipartUpload(_Response):
    """A multipart upload in progress: its parts are invisible until it is completed."""

    upload_id: str
    key: str
    disk_id: str | None = None
    initiated: datetime | None = None


class UploadedPart(_Response):
    """One part of a multipart upload: pass the parts to ``multipart.complete``."""

    part_number: int = Field(ge=1, le=10_000)
    etag: str
    size: int | None = None
    last_modified: datetime | None = None


class PartListing(_Response):
    """One page of ListParts."""

    parts: list[UploadedPart] = Field(default_factory=list)
    is_truncated: bool = False
    next_part_number_marker: int | None = None


class MultipartUploadListing(_Response):
    """One page of ListMultipartUploads."""

    uploads: list[MultipartUpload] = Field(default_factory=list)
    common_prefixes: list[str] = Field(default_factory=list)
    is_truncated: bool = False
    next_key_marker: str | None = None
    next_upload_id_marker: str | None = None
