"""Ending sandboxes: stop, pause, delete, and environments that end by themselves.

:class:`_Stopping` stops a session (its environment and every process in it, its
writes committed as the checkpoint), pauses one (frozen, its writes snapshotted),
deletes a sandbox with its processes' output and unused layers, and records a
session whose environment ended without being asked as ``exited``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from .._models import SANDBOX_DELETABLE_STATES
from .sandboxes_base import _ManagerBase
from .sandboxes_live import Proc, _conflict, _Live
from .spec import ExitInfo
from .state import utcnow

__all__ = ["_Stopping"]


class _Stopping(_ManagerBase):
    """Stop, pause and delete sandboxes; end the processes and sessions of those that end."""

    async def stop(self, sid: str) -> dict[str, Any]:
        """End every process; commit the session's writes as the checkpoint."""
        live = self._live_of(sid)
        if live.boot is not None and not live.boot.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(live.boot)
        async with live.lock:
            row = self.get(sid)
            status = row["status"]
            if status in ("stopped", "exited", "failed", "deleting"):
                return row
            if status == "paused":
                await self._discard_paused(sid, row)
                return self._mark_stopped(sid, self.get(sid), commit=False)
            self.state.update_sandbox(sid, status="stopping")
            await self._end_env(live, grace=self.stop_grace)
            return self._mark_stopped(sid, self.get(sid), commit=True)

    async def _end_env(self, live: _Live, *, grace: float) -> None:
        """Stop the environment; its processes' exits reach their connections as ``exit``."""
        env, live.env = live.env, None
        for timer in (live.idle_timer, live.deadline_timer):
            if timer is not None:
                timer.cancel()
        live.idle_timer = live.deadline_timer = None
        if env is not None:
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(env.thaw)
            await anyio.to_thread.run_sync(env.stop, grace)

    def _mark_stopped(self, sid: str, row: dict[str, Any], *, commit: bool) -> dict[str, Any]:
        live = self._live_of(sid)
        layers = json.loads(row["layers"])
        checkpoint = row["checkpoint"]
        previous = row["previous_checkpoint"]
        if commit and live.root is not None and live.root.upper.exists():
            layer = self.layers.commit(live.root.upper)
            layers = [layer, *layers]
            self.state.insert_checkpoint(layer, sid, layers, committed=True)
            previous, checkpoint = checkpoint, layer
        self._drop_session(live)
        self._release_delegations(sid)
        self._finish_procs(live, "the sandbox stopped")
        updated = self.state.update_sandbox(
            sid,
            status="stopped",
            layers=layers,
            checkpoint=checkpoint,
            previous_checkpoint=previous,
            finished_at=utcnow(),
        )
        self._collect_checkpoints(sid)
        return updated or row

    async def _discard_paused(self, sid: str, row: dict[str, Any]) -> None:
        """A paused sandbox's memory goes; its disk state is its checkpoint."""
        live = self._live_of(sid)
        await self._end_env(live, grace=0.0)
        self._drop_session(live)
        checkpoint = self.state.get_checkpoint(row["checkpoint"]) if row["checkpoint"] else None
        if checkpoint is not None:
            self.state.update_sandbox(sid, layers=json.loads(checkpoint["layers"]))

    async def pause(self, sid: str) -> dict[str, Any]:
        """Freeze every process and snapshot the session's writes as the checkpoint."""
        live = self._live_of(sid)
        async with live.lock:
            row = self.get(sid)
            status = row["status"]
            if status == "pending":
                raise _conflict("the sandbox is pending: it must reach running before a pause")
            if status in ("stopping", "pausing"):
                raise _conflict(f"the sandbox is {status}")
            if status != "running":
                return row
            self.state.update_sandbox(sid, status="pausing")
            for close in list(live.sockets):
                close()
            env = live.env
            if env is not None:
                await anyio.to_thread.run_sync(env.freeze)
            layers = json.loads(row["layers"])
            if live.root is not None:
                layer = await anyio.to_thread.run_sync(self.layers.snapshot, live.root.upper)
                layers = [layer, *layers]
            else:
                layer = row["checkpoint"]
            if layer is not None and self.state.get_checkpoint(layer) is None:
                self.state.insert_checkpoint(layer, sid, layers, committed=True)
            for timer in (live.idle_timer, live.deadline_timer):
                if timer is not None:
                    timer.cancel()
            updated = self.state.update_sandbox(
                sid,
                status="paused",
                checkpoint=layer,
                previous_checkpoint=row["checkpoint"],
            )
            self._collect_checkpoints(sid)
            return updated or row

    async def delete(self, sid: str) -> None:
        """Remove a stopped, exited or failed sandbox that has no forks."""
        live = self._live_of(sid)
        async with live.lock:
            row = self.get(sid)
            if row["status"] not in SANDBOX_DELETABLE_STATES:
                raise _conflict(
                    f"the sandbox is {row['status']}: stop it before deleting it", "sandbox_running"
                )
            children = [c for c in self.state.children_of(sid) if c["status"] != "deleted"]
            if children:
                raise _conflict(
                    f"the sandbox has {len(children)} fork(s); delete them first",
                    "sandbox_has_forks",
                )
            self.state.update_sandbox(sid, status="deleting")
            self._purge(row)

    def _purge(self, row: dict[str, Any]) -> None:
        sid = row["id"]
        live = self._live.pop(sid, None)
        if live is not None:
            for proc in live.procs.values():
                proc.output.discard()
        with contextlib.suppress(OSError):
            (self.process_root / sid).rmdir()
        for session in self.layers.sessions_of(sid):
            self.layers.remove_session(session)
        self.state.delete_sandbox(sid)
        self._collect_layers()

    def _collect_checkpoints(self, sid: str) -> None:
        """Forget this sandbox's checkpoints that are neither current nor previous."""
        row = self.state.get_sandbox(sid)
        if row is None:
            return
        keep = {row["checkpoint"], row["previous_checkpoint"]}
        for checkpoint_id in self.state.checkpoints_of(sid):
            if checkpoint_id not in keep:
                self.state.delete_checkpoint(checkpoint_id)
        self._collect_layers()

    def _collect_layers(self) -> None:
        used = self.state.layers_in_use()
        for layer in self.layers.layer_ids():
            if layer not in used:
                self.layers.remove(layer)

    def _drop_session(self, live: _Live) -> None:
        root, live.root = live.root, None
        if root is not None:
            self.layers.remove_session(root)

    def _process_ended(self, proc: Proc, info: ExitInfo) -> None:
        if proc.exit is None:
            proc.exit = info
            proc.output.close()
            proc.wake()

    def _finish_procs(self, live: _Live, reason: str) -> None:
        for proc in live.procs.values():
            if proc.exit is None:
                self._process_ended(proc, ExitInfo("failed", None, reason))

    # -- environments ending by themselves ---------------------------------------------

    def _threadsafe(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        loop = self._loop

        def call(arg: Any) -> None:
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(fn, arg)

        return call

    def _on_env_end(self, sid: str, reason: str | None) -> None:
        live = self._live.get(sid)
        if live is None or live.env is None or self._closing:
            return
        live.env = None
        self._background(self._exited(sid, reason or "the sandbox's init process ended"))

    async def _exited(self, sid: str, reason: str) -> None:
        live = self._live_of(sid)
        async with live.lock:
            row = self.state.get_sandbox(sid)
            if row is None or row["status"] not in ("running", "paused", "pausing"):
                return
            stopped = self._mark_stopped(sid, row, commit=True)
            self.state.update_sandbox(stopped["id"], status="exited", exit_reason=reason)
