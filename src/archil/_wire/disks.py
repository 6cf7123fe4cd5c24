"""Disks: the body that creates one, the users it answers with, and disk user types."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args

from .._models.disks import (
    AuthorizedUser,
    CreateDiskRequest,
    CreateDiskResult,
    Disk,
    Mount,
    MountProvider,
)


def check_user_type(user_type: str) -> str:
    """A disk user type: ``token`` or ``awssts``."""
    if user_type not in ("token", "awssts"):
        raise ValueError(f"user_type must be 'token' or 'awssts', got {user_type!r}")
    return user_type


def disk_create_request(
    name: str,
    provider: str | None,
    region: str | None,
    mounts: Sequence[Mount | Mapping[str, Any]] | None,
) -> CreateDiskRequest:
    """The body of ``POST /api/disks``, with the client-side ``provider``/``region`` checks."""
    if provider is not None and provider not in get_args(MountProvider):
        raise ValueError(
            f"provider must be one of {', '.join(get_args(MountProvider))}, got {provider!r}"
        )
    if isinstance(mounts, (Mount, Mapping)):
        raise ValueError("mounts must be a list of archil.Mount")
    request = CreateDiskRequest.model_validate(
        {"name": name, "mounts": None if mounts is None else list(mounts)}
    )
    if request.mounts is not None:
        for mount in request.mounts:
            if provider is not None and mount.provider != provider:
                raise ValueError(
                    f"provider {provider!r} does not match the mount's provider {mount.provider!r}"
                )
            if region is not None and mount.region is not None and mount.region != region:
                raise ValueError(
                    f"region {region!r} does not match the mount's region {mount.region!r}"
                )
    return request


def _same_user(a: AuthorizedUser, b: AuthorizedUser) -> bool:
    if a.identifier and b.identifier:
        return a.identifier == b.identifier
    return (a.type, a.nickname, a.token_suffix, a.principal) == (
        b.type,
        b.nickname,
        b.token_suffix,
        b.principal,
    )


def with_created_users(disk: Disk, created: CreateDiskResult) -> Disk:
    """``disk`` with the users of the create answer (and their one-time tokens) merged in."""
    users = list(disk.authorized_users)
    for new in created.authorized_users:
        for i, old in enumerate(users):
            if _same_user(old, new):
                update = {k: v for k, v in new.__dict__.items() if v is not None}
                users[i] = old.model_copy(update=update)
                break
        else:
            users.append(new)
    return disk.model_copy(update={"authorized_users": users})
