"""Booting sandboxes: create, start, resume and fork.

:class:`_Booting` checks and records a new sandbox, boots its session (``pending``
then ``running``, or ``failed`` with an ``exit_reason``), cold-boots a stopped,
exited, failed or paused one, thaws a paused one, and forks a new sandbox from a
committed checkpoint of another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import sqlite3
import time
import uuid
from typing import Any

import anyio.to_thread

from .._models import CreateSandboxRequest, ForkSandboxRequest, SandboxMount
from .errors import ApiError
from .imageref import parse_reference
from .images import ImageUnavailable
from .runtime import BootError, Environment
from .sandboxes_live import _IMAGE_WAIT, DEFAULT_BASE_IMAGE, WAIT_BUDGET, _conflict, logger
from .sandboxes_procs import _Processes
from .spec import ImageEnv, SandboxSpec
from .state import utcnow

__all__ = ["_Booting"]


class _Booting(_Processes):
    """Create, start, resume and fork sandboxes, booting their sessions."""

    def _new_name(self) -> str:
        return f"sandbox-{secrets.token_hex(5)}"

    def _insert(
        self, spec: dict[str, Any], name: str | None, layers: list[str], parent: str | None
    ) -> dict[str, Any]:
        chosen = name or self._new_name()
        disks = [m["disk_id"] for m in spec.get("mounts") or []]
        try:
            return self.state.insert_sandbox(
                sandbox_id=str(uuid.uuid4()),
                name=chosen,
                status="pending",
                spec={**spec, "name": chosen},
                disks=disks,
                layers=layers,
                parent_id=parent,
            )
        except sqlite3.IntegrityError:
            raise _conflict(
                f"name: a sandbox named {chosen!r} already exists", "sandbox_name_taken"
            ) from None

    def check_request(self, req: CreateSandboxRequest) -> None:
        """What a create needs beyond the model: the mounts' disks, the image (400/404)."""
        if req.kernel_variant is not None and not self.extensions:
            raise ApiError(
                400,
                "kernel_variant: not a field of the sandbox API (this server offers no extensions)",
                "validation_error",
            )
        self.resolve_mounts(list(req.mounts or []))
        if req.image_id is not None and self.images.get(req.image_id) is None:
            raise ApiError(404, f"image_id: image {req.image_id!r} not found", "image_not_found")
        if req.base_image is not None:
            try:
                parse_reference(req.base_image)
            except ValueError as exc:
                message = str(exc).removeprefix("source: ")
                raise ApiError(400, f"base_image: {message}", "validation_error") from None

    async def create(self, req: CreateSandboxRequest, *, wait: bool) -> dict[str, Any]:
        """Record a new sandbox and boot it (waiting for ``running`` when ``wait``)."""
        self.check_request(req)
        spec = req.to_wire()
        if req.base_image is None and req.image_id is None:
            spec["base_image"] = DEFAULT_BASE_IMAGE
        row = self._insert(spec, req.name, [], None)
        for port in req.ports or []:
            self._expose(row["id"], port)
        return await self._start_session(row["id"], wait)

    async def _start_session(self, sid: str, wait: bool) -> dict[str, Any]:
        live = self._live_of(sid)
        live.boot = asyncio.create_task(self._boot(sid))
        if wait:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(live.boot), WAIT_BUDGET)
        return self.get(sid)

    def _image_env(self, spec: dict[str, Any]) -> ImageEnv:
        image_id = spec.get("image_id")
        if image_id is not None:
            self.images.wait(image_id, _IMAGE_WAIT)
            return self.images.environment(image_id)
        return self.images.resolve(spec.get("base_image") or DEFAULT_BASE_IMAGE, _IMAGE_WAIT)

    async def _boot(self, sid: str) -> None:
        live = self._live_of(sid)
        async with live.lock:
            row = self.get(sid)
            if row["status"] != "pending":
                return
            spec = json.loads(row["spec"])
            try:
                env, image = await self._boot_env(sid, row, spec)
            except (BootError, ImageUnavailable, LookupError, ApiError, OSError) as exc:
                self._fail_boot(sid, exc)
                return
            live.env = env
            live.session_started = time.monotonic()
            row = (
                self.state.update_sandbox(
                    sid,
                    status="running",
                    running_at=utcnow(),
                    last_active_at=utcnow(),
                    image_digest=image.digest,
                    exit_reason=None,
                    finished_at=None,
                )
                or row
            )
            self._arm_deadline(sid, spec["max_ttl_seconds"])
            self._arm_idle(sid)

    async def _boot_env(
        self, sid: str, row: dict[str, Any], spec: dict[str, Any]
    ) -> tuple[Environment, ImageEnv]:
        image = await anyio.to_thread.run_sync(self._image_env, spec)
        mounts = [SandboxMount.model_validate(m) for m in spec.get("mounts") or []]
        resolved = self.resolve_mounts(mounts)
        await self._take_delegations(sid, mounts)
        live = self._live_of(sid)
        lowers = tuple(self.layers.path(layer) for layer in json.loads(row["layers"]))
        live.root = dataclasses.replace(self.layers.new_session(sid), lowers=lowers)
        sandbox_spec = SandboxSpec(
            sandbox_id=sid,
            hostname=row["name"],
            root=live.root,
            image=image,
            mounts=tuple(resolved),
            vcpu_count=spec["vcpu_count"],
            mem_size_mib=spec["mem_size_mib"],
            env=dict(spec.get("env") or {}),
        )
        on_end = self._threadsafe(lambda reason: self._on_env_end(sid, reason))
        env = await anyio.to_thread.run_sync(lambda: self.runtime.boot(sandbox_spec, on_end=on_end))
        return env, image

    def _fail_boot(self, sid: str, exc: BaseException) -> None:
        live = self._live_of(sid)
        self._release_delegations(sid)
        self._drop_session(live)
        reason = exc.message if isinstance(exc, ApiError) else str(exc)
        logger.info("sandbox %s failed to start: %s", sid, reason)
        self.state.update_sandbox(
            sid,
            status="failed",
            exit_reason=reason or "the sandbox failed to start",
            finished_at=utcnow(),
        )

    async def start(
        self, sid: str, mounts: list[SandboxMount] | None, *, wait: bool
    ) -> tuple[dict[str, Any], int]:
        """Cold-boot a stopped, exited, failed or paused sandbox (idempotent while running)."""
        live = self._live_of(sid)
        async with live.lock:
            row = self.get(sid)
            status = row["status"]
            if status in ("running", "pending"):
                if mounts is not None:
                    raise _conflict(f"mounts: cannot be replaced while the sandbox is {status}")
                return row, 200
            if status in ("stopping", "pausing"):
                raise _conflict(f"the sandbox is {status}; start it once that is done")
            if status == "paused":
                await self._discard_paused(sid, row)
            fields: dict[str, Any] = {"status": "pending", "exit_reason": None}
            if mounts is not None:
                resolved = [m.model_dump(mode="json", exclude_none=True) for m in mounts]
                self.resolve_mounts(mounts)
                spec = {**json.loads(row["spec"]), "mounts": resolved}
                fields.update(spec=spec, disks=[m.disk_id for m in mounts])
            self.state.update_sandbox(sid, **fields)
        return await self._start_session(sid, wait), 202

    async def resume(self, sid: str) -> tuple[dict[str, Any], int]:
        """Thaw a paused sandbox (idempotent while running or pending)."""
        live = self._live_of(sid)
        async with live.lock:
            row = self.get(sid)
            status = row["status"]
            if status in ("running", "pending"):
                return row, 200
            if status != "paused":
                raise _conflict(f"only a paused sandbox can be resumed; it is {status}")
            if live.env is None:
                raise _conflict("the paused sandbox has no live session; start it instead")
            await anyio.to_thread.run_sync(live.env.thaw)
            live.session_started = live.session_started or time.monotonic()
            updated = (
                self.state.update_sandbox(sid, status="running", last_active_at=utcnow()) or row
            )
            spec = json.loads(row["spec"])
            self._arm_deadline(sid, spec["max_ttl_seconds"], keep=True)
            self._arm_idle(sid)
            return updated, 200

    async def fork(self, sid: str, req: ForkSandboxRequest, *, wait: bool) -> dict[str, Any]:
        """A new sandbox booted from a checkpoint of ``sid`` (its disk state; see the decisions)."""
        source = self.get(sid)
        spec = json.loads(source["spec"])
        if req.checkpoint is not None:
            checkpoint = self._forkable_checkpoint(source, req.checkpoint)
        elif source["status"] in ("stopped", "paused", "exited") and source["checkpoint"]:
            checkpoint = self._forkable_checkpoint(source, source["checkpoint"])
        elif source["status"] == "running" and not spec.get("mounts"):
            checkpoint = await self._snapshot_running(sid)
        elif source["status"] == "running":
            raise _conflict("a sandbox with mounts must be stopped before it can be forked")
        else:
            raise _conflict(f"the sandbox is {source['status']} and has no checkpoint to fork")
        layers = json.loads(checkpoint["layers"])
        row = self._insert({**spec, "name": None}, req.name, layers, sid)
        return await self._start_session(row["id"], wait)

    def _forkable_checkpoint(self, source: dict[str, Any], checkpoint_id: str) -> dict[str, Any]:
        if checkpoint_id not in (source["checkpoint"], source["previous_checkpoint"]):
            raise _conflict(
                f"checkpoint: {checkpoint_id!r} is not the current or the previous checkpoint "
                "of this sandbox",
                "checkpoint_superseded",
            )
        checkpoint = self.state.get_checkpoint(checkpoint_id)
        if checkpoint is None or not checkpoint["committed"]:
            raise _conflict(
                f"checkpoint: {checkpoint_id!r} is not committed yet", "checkpoint_pending"
            )
        return checkpoint

    async def _snapshot_running(self, sid: str) -> dict[str, Any]:
        """Pause a running sandbox for a snapshot of its disk state, then resume it."""
        await self.pause(sid)
        try:
            row = self.get(sid)
            checkpoint = self.state.get_checkpoint(row["checkpoint"])
            assert checkpoint is not None
            return checkpoint
        finally:
            with contextlib.suppress(ApiError):
                await self.resume(sid)
