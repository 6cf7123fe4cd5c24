"""``/api/disks``: create, list, get and delete disks, their users and directory listing."""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..._models import CreateDiskRequest, DirectoryListing, DiskUserRequest
from ..disks import DirectoryNotFound, NotADirectory
from ..errors import ApiError
from ..plane import ControlPlane, digest
from .common import decode_cursor, int_query, ok, page, plane, read_json, shape, validated

__all__ = ["routes"]

_INLINE_WALK = 256
"""A disk of at most this many entries has its size summed on the event loop."""


async def list_disks(request: Request) -> Response:
    """``GET /api/disks``."""
    p = plane(request)
    limit = int_query(request, "limit", 50, minimum=1, maximum=100)
    after = decode_cursor(request, "disk")
    name = request.query_params.get("name") or None
    rows, cursor = page(p.state.list_disks(after=after, limit=limit + 1, name=name), limit, "disk")
    sizes = await anyio.to_thread.run_sync(lambda: [p.disks.data_size(r["id"]) for r in rows])
    return ok([p.disk_wire(r, s) for r, s in zip(rows, sizes, strict=True)], nextCursor=cursor)


def _new_token_user(p: ControlPlane, disk_id: str, nickname: str) -> dict[str, Any]:
    token = "dtk-" + secrets.token_hex(20)
    token_digest = digest(token)
    row = p.state.insert_user(
        disk_id=disk_id,
        type="token",
        identifier="tok-" + token_digest[:16],
        nickname=nickname,
        principal=None,
        token_suffix=token[-4:],
        token_digest=token_digest,
    )
    user = p.user_wire(row)
    user["token"] = token
    return user


async def create_disk(request: Request) -> Response:
    """``POST /api/disks``: idempotent by name."""
    p = plane(request)
    req: CreateDiskRequest = validated(CreateDiskRequest, await read_json(request))
    fingerprint = p.config_digest(req)
    existing = p.state.get_disk_by_name(req.name)
    if existing is not None:
        if existing["config_digest"] != fingerprint:
            raise ApiError(
                409,
                f"name: a disk named {req.name!r} already exists with a different configuration",
                "disk_exists",
            )
        users = [p.user_wire(u) for u in p.state.list_users(existing["id"])]
        return ok({"diskId": existing["id"], "authorizedUsers": users}, 200)
    mounts: list[dict[str, Any]] = []
    provider = "archil"
    for m in req.mounts or []:
        provider = m.provider
        config = {
            "bucketName": m.bucket or m.container_name,
            "bucketEndpoint": m.bucket_endpoint or m.endpoint,
            "bucketPrefix": m.bucket_prefix,
        }
        mounts.append(
            {
                "type": m.provider,
                "name": m.bucket or m.container_name,
                "accessMode": "rw",
                "config": {k: v for k, v in config.items() if v is not None},
                "authorizationType": "accessKeys" if (m.access_key_id or m.client_id) else "iam",
            }
        )
    disk_id = "dsk-" + secrets.token_hex(8)
    try:
        p.state.insert_disk(
            disk_id=disk_id,
            name=req.name,
            provider=provider,
            mounts=mounts,
            config_digest=fingerprint,
        )
    except sqlite3.IntegrityError:
        raise ApiError(
            409, f"name: a disk named {req.name!r} already exists", "disk_exists"
        ) from None
    await anyio.to_thread.run_sync(p.disks.create, disk_id)
    user = _new_token_user(p, disk_id, "default")
    return ok({"diskId": disk_id, "authorizedUsers": [user]}, 201)


async def get_disk(request: Request) -> Response:
    """``GET /api/disks/{id}``."""
    p = plane(request)
    row = p.disk(request.path_params["disk_id"])
    size = p.disks.small_data_size(row["id"], _INLINE_WALK)
    if size is None:
        size = await anyio.to_thread.run_sync(p.disks.data_size, row["id"])
    return ok(p.disk_wire(row, size))


async def delete_disk(request: Request) -> Response:
    """``DELETE /api/disks/{id}``: the disk's files go with it."""
    p = plane(request)
    disk_id = request.path_params["disk_id"]
    if p.state.get_disk(disk_id) is None:
        raise ApiError(404, f"disk {disk_id!r} not found", "disk_not_found")
    busy = [
        r for r in p.sandboxes.rows(disk_id) if r["status"] not in ("stopped", "exited", "failed")
    ]
    if busy:
        raise ApiError(
            409,
            f"disk {disk_id!r} is mounted by {len(busy)} live sandbox(es); stop them first",
            "disk_in_use",
        )
    p.state.delete_disk(disk_id)
    await anyio.to_thread.run_sync(p.disks.delete, disk_id)
    return ok({"message": f"Disk {disk_id} deleted"})


async def add_disk_user(request: Request) -> Response:
    """``POST /api/disks/{id}/users``."""
    p = plane(request)
    disk = p.disk(request.path_params["disk_id"])
    req: DiskUserRequest = validated(DiskUserRequest, await read_json(request))
    if req.type == "awssts":
        assert req.principal is not None
        try:
            row = p.state.insert_user(
                disk_id=disk["id"],
                type="awssts",
                identifier=req.principal,
                nickname=req.nickname,
                principal=req.principal,
                token_suffix=None,
                token_digest=None,
            )
        except sqlite3.IntegrityError:
            raise ApiError(
                409, "principal: this principal is already authorized", "user_exists"
            ) from None
        return ok(p.user_wire(row), 201)
    assert req.nickname is not None
    if req.principal is None:
        return ok(_new_token_user(p, disk["id"], req.nickname), 201)
    token_digest = digest(req.principal)
    try:
        row = p.state.insert_user(
            disk_id=disk["id"],
            type="token",
            identifier="tok-" + token_digest[:16],
            nickname=req.nickname,
            principal=None,
            token_suffix=req.token_suffix,
            token_digest=token_digest,
        )
    except sqlite3.IntegrityError:
        raise ApiError(409, "principal: this token is already authorized", "user_exists") from None
    return ok(p.user_wire(row), 201)


async def remove_disk_user(request: Request) -> Response:
    """``DELETE /api/disks/{id}/users/{userType}?identifier=``."""
    p = plane(request)
    disk = p.disk(request.path_params["disk_id"])
    user_type = request.path_params["user_type"]
    if user_type not in ("token", "awssts"):
        raise ApiError(400, "userType: must be 'token' or 'awssts'", "validation_error")
    identifier = request.query_params.get("identifier") or request.query_params.get("principal")
    if not identifier:
        raise ApiError(
            400, "identifier: required (as returned when the user was added)", "validation_error"
        )
    if not p.state.delete_user(disk["id"], user_type, identifier):
        raise ApiError(
            404, f"identifier: no {user_type} user {identifier!r} on this disk", "user_not_found"
        )
    return ok({"message": "User removed"})


async def read_directory(request: Request) -> Response:
    """``GET /api/disks/{id}/directory?inode=N`` (inode 1 is the root)."""
    p = plane(request)
    disk = p.disk(request.path_params["disk_id"])
    inode = int_query(request, "inode", 1, minimum=1)
    try:
        listing = await anyio.to_thread.run_sync(p.disks.list_directory, disk["id"], inode)
    except DirectoryNotFound as exc:
        raise ApiError(404, f"inode: {exc}", "inode_not_found") from None
    except NotADirectory as exc:
        raise ApiError(400, f"inode: {exc}", "not_a_directory") from None
    return ok(shape(DirectoryListing, listing))


async def grep_disk(request: Request) -> Response:
    """``POST /api/disks/{id}/grep`` is a cloud feature the local control plane lacks."""
    plane(request).disk(request.path_params["disk_id"])
    raise ApiError(501, "grep is not implemented by the local control plane", "not_implemented")


def routes(*, extensions: bool = True) -> list[Route]:
    """The disk routes (directory listing is an archil extension)."""
    table = [
        Route("/api/disks", list_disks, methods=["GET"]),
        Route("/api/disks", create_disk, methods=["POST"]),
        Route("/api/disks/{disk_id}", get_disk, methods=["GET"]),
        Route("/api/disks/{disk_id}", delete_disk, methods=["DELETE"]),
        Route("/api/disks/{disk_id}/users", add_disk_user, methods=["POST"]),
        Route("/api/disks/{disk_id}/users/{user_type}", remove_disk_user, methods=["DELETE"]),
        Route("/api/disks/{disk_id}/grep", grep_disk, methods=["POST"]),
    ]
    if extensions:
        table.append(Route("/api/disks/{disk_id}/directory", read_directory, methods=["GET"]))
    return table
