"""``client.disks``: create, list, inspect, share and delete disks, and run commands on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from typing_extensions import Unpack

from ..._config import LONG_POLL_TIMEOUT
from ..._models import (
    AuthorizedUser,
    CreateDiskResult,
    DirectoryListing,
    Disk,
    DiskUserRequest,
    ExecDiskRequest,
    ExecResult,
    Mount,
)
from ..._retry import EXEC_RETRY_STATUSES
from ..._wire import (
    RequestOptions,
    check_limit,
    check_user_type,
    disk_create_request,
    disk_path,
    items_decoder,
    parse_model,
    query,
    with_created_users,
)
from .._transport import AsyncTransport
from ..pagers import AsyncCursorPager

__all__ = ["AsyncDisks"]


class AsyncDisks:
    """Disks: the storage that apps and containers live on."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def create(
        self,
        name: str,
        *,
        provider: str | None = None,
        region: str | None = None,
        mounts: Sequence[Mount | Mapping[str, Any]] | None = None,
        **options: Unpack[RequestOptions],
    ) -> Disk:
        """Create the disk ``name`` (or return it if it exists with the same configuration).

        ``mounts`` lists the bucket backing the disk (omit it for Archil-managed
        storage). ``provider`` and ``region`` are checked against the mounts on
        this side and are not sent. The returned disk's ``authorized_users``
        include the one-time token user made for it (its ``token`` is shown only here).
        """
        request = disk_create_request(name, provider, region, mounts)
        envelope = await self._transport.request_json(
            "POST", "/api/disks", json=request.to_wire(), **options
        )
        created = parse_model(CreateDiskResult, envelope.data, envelope.status_code)
        disk = await self.get(created.disk_id, **options)
        return with_created_users(disk, created)

    def list(
        self,
        *,
        name: str | None = None,
        limit: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncCursorPager[Disk]:
        """All disks of the account, or only the one named ``name``.

        ``limit`` is the page size (at most 100); the pager fetches every page.
        """
        params = query(name=name, limit=check_limit(limit))
        return AsyncCursorPager(
            self._transport, "/api/disks", params, items_decoder(Disk, "disks"), **options
        )

    async def get(self, disk_id: str, **options: Unpack[RequestOptions]) -> Disk:
        """The disk ``disk_id`` (``NotFoundError`` if there is none)."""
        envelope = await self._transport.request_json("GET", disk_path(disk_id), **options)
        return parse_model(Disk, envelope.data, envelope.status_code)

    async def delete(self, disk_id: str, **options: Unpack[RequestOptions]) -> None:
        """Delete the disk ``disk_id``."""
        await self._transport.request_json("DELETE", disk_path(disk_id), **options)

    async def add_user(
        self,
        disk_id: str,
        user_type: Literal["token", "awssts"] = "token",
        principal: str | None = None,
        nickname: str | None = None,
        token_suffix: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> AuthorizedUser:
        """Authorize a user to mount the disk: a token user (``nickname``) or an AWS STS ``principal``.

        For a token user made by the server, the returned ``token`` is shown only this once.
        """
        path = disk_path(disk_id, "users")
        check_user_type(user_type)
        request = DiskUserRequest(
            type=user_type, principal=principal, nickname=nickname, token_suffix=token_suffix
        )
        envelope = await self._transport.request_json(
            "POST", path, json=request.to_wire(), **options
        )
        return parse_model(AuthorizedUser, envelope.data, envelope.status_code)

    async def remove_user(
        self,
        disk_id: str,
        user_type: Literal["token", "awssts"],
        identifier: str,
        **options: Unpack[RequestOptions],
    ) -> None:
        """Remove an authorized user, named by the ``identifier`` the server gave it."""
        check_user_type(user_type)
        if not isinstance(identifier, str) or not identifier:
            raise ValueError(f"identifier must be a non-empty string, got {identifier!r}")
        path = disk_path(disk_id, "users", user_type)
        await self._transport.request_json(
            "DELETE", path, params={"identifier": identifier}, **options
        )

    async def read_directory(
        self, disk_id: str, inode_id: int = 1, **options: Unpack[RequestOptions]
    ) -> DirectoryListing:
        """The entries of the directory with inode ``inode_id`` (1 is the disk's root)."""
        path = disk_path(disk_id, "directory")
        if isinstance(inode_id, bool) or not isinstance(inode_id, int) or inode_id < 1:
            raise ValueError(f"inode_id must be a positive integer, got {inode_id!r}")
        envelope = await self._transport.request_json(
            "GET", path, params={"inode": inode_id}, **options
        )
        return parse_model(DirectoryListing, envelope.data, envelope.status_code)

    async def exec(
        self,
        disk_id: str,
        command: str,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> ExecResult:
        """Run a shell command in a short-lived container with the disk at ``/mnt/archil``.

        ``timeout`` bounds the wait for the answer (5 minutes by default). A
        command that runs out of server time answers 504, which is not retried.
        """
        path = disk_path(disk_id, "exec")
        request = ExecDiskRequest(command=command)
        transport = self._transport
        envelope = await transport.request_json(
            "POST",
            path,
            json=request.to_wire(),
            timeout=transport.timeout(timeout, read=None if timeout else LONG_POLL_TIMEOUT),
            max_retries=max_retries,
            retry_statuses=EXEC_RETRY_STATUSES,
        )
        return parse_model(ExecResult, envelope.data, envelope.status_code)
