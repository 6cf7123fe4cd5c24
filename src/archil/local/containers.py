"""Container lifecycle for the local control plane.

The :class:`ContainerManager` turns ``POST /api/containers`` into runtime
processes and keeps the container records in :mod:`archil.local.state` up to
date. Runtime callbacks arrive on other threads and hop to the event loop;
every container has an :class:`asyncio.Event` that is set the moment it reaches
a terminal state, which is what long-polls and log followers wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread

from .._models import TERMINAL_STATES, CreateContainerRequest
from .images import ImageBuilder, ImageEnv
from .logs import LogStore
from .runtime import ContainerSpec, MountSpec, Runtime
from .state import State, utcnow

__all__ = ["ContainerManager", "ExecOutcome", "new_container_id"]

logger = logging.getLogger("archil.local")

_LOG_PAGE = 1000
_FOLLOW_POLL = 0.05
_BUILD_POLL = 0.1


class _ImageFailed(Exception):
    """The container's image could not be built."""


def new_container_id() -> str:
    """A fresh container id: ``cntr-`` and 16 hex digits."""
    return "cntr-" + secrets.token_hex(8)


@dataclass
class _Live:
    """In-memory companion of a container that this server process started."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    phase: str = "prestart"  # prestart -> starting -> started
    stop_requested: bool = False


@dataclass(frozen=True)
class ExecOutcome:
    """The result of a one-shot exec."""

    exit_code: int
    stdout: str
    stderr: str
    queue_ms: int
    execute_ms: int


class ContainerManager:
    """Creates, tracks, stops and deletes containers; serves their logs."""

    def __init__(
        self,
        *,
        state: State,
        logs: LogStore,
        images: ImageBuilder,
        runtime: Runtime,
        stop_grace: float = 10.0,
    ) -> None:
        self.state = state
        self.logs = logs
        self.images = images
        self.runtime = runtime
        self.stop_grace = stop_grace
        self._live: dict[str, _Live] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = asyncio.Event()

    # -- lifecycle of the manager --------------------------------------------------

    def recover(self) -> list[str]:
        """After a restart: containers that were not finished cannot be running any more."""
        ids = self.state.fail_active_containers(
            "the local control plane stopped while the container was running"
        )
        for cid in ids:
            with contextlib.suppress(Exception):
                self.logs.append(
                    cid,
                    "system",
                    "the local control plane stopped while the container was running\n",
                )
        return ids

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the event loop that callbacks hop to."""
        self._loop = loop

    def begin_shutdown(self) -> None:
        """Wake every long-poll and log follower so the server can stop promptly."""
        self._closing.set()

    async def shutdown(self) -> None:
        """Fail unfinished containers, stop their processes and tear the runtime down."""
        self._closing.set()
        for live in self._live.values():
            if live.task is not None and not live.task.done():
                live.task.cancel()
        ids = self.state.fail_active_containers(
            "the local control plane shut down while the container was running"
        )
        for cid in ids:
            entry = self._live.get(cid)
            if entry is not None:
                entry.done.set()
        await anyio.to_thread.run_sync(self.runtime.shutdown, min(self.stop_grace, 5.0))
        await anyio.to_thread.run_sync(self.images.close, 5.0)

    # -- records ----------------------------------------------------------------

    @staticmethod
    def to_wire(row: dict[str, Any]) -> dict[str, Any]:
        """The container record as the API returns it."""
        req = json.loads(row["request"])
        rec: dict[str, Any] = {
            "containerId": row["id"],
            "status": row["status"],
            "exitCode": row["exit_code"],
            "failureReason": row["failure_reason"],
            "archilMount": req.get("archilMount"),
            "additionalMounts": req.get("additionalMounts") or [],
            "vcpuCount": req.get("vcpuCount"),
            "memSizeMib": req.get("memSizeMib"),
            "kernelVariant": req.get("kernelVariant"),
            "imageId": req.get("imageId"),
            "command": req.get("command"),
            "ports": json.loads(row["ports"] or "[]"),
            "metadata": req.get("metadata") or {},
            "timeoutSeconds": req.get("timeoutSeconds"),
            "limits": json.loads(row["limits"]) if row["limits"] else None,
            "createdAt": row["created_at"],
            "startedAt": row["started_at"],
            "finishedAt": row["finished_at"],
        }
        return {k: v for k, v in rec.items() if v is not None}

    def get(self, cid: str) -> dict[str, Any] | None:
        """A container row, or ``None``."""
        return self.state.get_container(cid)

    def limits(self) -> dict[str, Any]:
        """What the runtime can enforce on this machine."""
        caps = self.runtime.capabilities
        out: dict[str, Any] = {
            "memory": bool(caps.get("memory_limit")),
            "cpu": bool(caps.get("cpu_affinity")),
            "isolation": bool(caps.get("namespaces")),
        }
        reason = caps.get("reason")
        if reason and not all((out["memory"], out["cpu"], out["isolation"])):
            out["reason"] = str(reason)
        return out

    # -- create -----------------------------------------------------------------

    async def create(
        self,
        req: CreateContainerRequest,
        *,
        mounts: list[MountSpec],
        dockerfile: str | None,
    ) -> dict[str, Any]:
        """Record a new container and start it in the background; return its record."""
        cid = new_container_id()
        wire = req.to_wire()
        stored = {k: v for k, v in wire.items() if k not in ("env", "initializationScript")}
        row = self.state.insert_container(
            container_id=cid,
            disk_id=req.archil_mount.disk_id,
            request=stored,
            limits=self.limits(),
        )
        live = _Live()
        self._live[cid] = live
        live.task = asyncio.create_task(self._run(cid, req, mounts, dockerfile))
        return row

    def _set(self, cid: str, **fields: Any) -> dict[str, Any] | None:
        row = self.state.get_container(cid)
        if row is None or row["status"] in TERMINAL_STATES:
            return row
        return self.state.update_container(cid, **fields)

    def _finish(
        self,
        cid: str,
        status: str,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        row = self.state.get_container(cid)
        if row is not None and row["status"] not in TERMINAL_STATES:
            self.state.update_container(
                cid,
                status=status,
                exit_code=exit_code,
                failure_reason=reason,
                finished_at=utcnow(),
            )
        live = self._live.get(cid)
        if live is not None:
            live.done.set()

    def _system(self, cid: str, text: str) -> None:
        with contextlib.suppress(Exception):
            self.logs.append(cid, "system", text if text.endswith("\n") else text + "\n")

    async def _copy_build_log(self, cid: str, image_id: str, sent: int) -> int:
        lines = await anyio.to_thread.run_sync(self.images.build_log_lines, image_id)
        if len(lines) > sent:
            entries = [("build", ln if ln.endswith("\n") else ln + "\n") for ln in lines[sent:]]
            await anyio.to_thread.run_sync(self.logs.extend, cid, entries)
        return max(sent, len(lines))

    async def _wait_image(self, cid: str, image_id: str, dockerfile: str | None) -> ImageEnv:
        """Wait for the image, copying its build output to the container's log; its environment."""
        status, reason = self.images.status(image_id)
        if status is None and dockerfile is not None:
            await anyio.to_thread.run_sync(self.images.ensure, dockerfile)
            status, reason = self.images.status(image_id)
        if status is None:
            raise RuntimeError(f"image {image_id} is unknown to the local control plane")
        if status == "building":
            self._set(cid, status="building")
            sent = 0
            while status == "building":
                sent = await self._copy_build_log(cid, image_id, sent)
                status, reason = self.images.status(image_id)
                if status == "building":
                    await asyncio.sleep(_BUILD_POLL)
            await self._copy_build_log(cid, image_id, sent)
        if status != "ready":
            self.state.set_image_status(image_id, "failed", reason)
            raise _ImageFailed(f"image {image_id} failed to build: {reason or 'unknown error'}")
        self.state.set_image_status(image_id, "ready", None)
        env: ImageEnv = await anyio.to_thread.run_sync(self.images.environment, image_id)
        return env

    async def _run(
        self,
        cid: str,
        req: CreateContainerRequest,
        mounts: list[MountSpec],
        dockerfile: str | None,
    ) -> None:
        live = self._live[cid]
        try:
            image_env: ImageEnv | None = None
            if req.image_id is not None:
                try:
                    image_env = await self._wait_image(cid, req.image_id, dockerfile)
                except _ImageFailed as exc:
                    self._system(cid, str(exc))
                    self._finish(cid, "failed", reason=str(exc))
                    return
            if live.stop_requested:
                self._finish(cid, "stopped")
                return
            self._set(cid, status="starting")
            env = {
                "ARCHIL_CONTAINER_ID": cid,
                "ARCHIL_DISK_ID": req.archil_mount.disk_id,
                "ARCHIL_DISK_ENV": req.archil_mount.env,
            }
            env.update(req.env or {})
            spec = ContainerSpec(
                container_id=cid,
                command=req.command,
                initialization_script=req.initialization_script,
                env=env,
                mounts=mounts,
                vcpu_count=req.vcpu_count,
                mem_size_mib=req.mem_size_mib,
                image=image_env,
                ports=list(req.ports),
                timeout_seconds=req.timeout_seconds,
                workdir=None,
            )
            live.phase = "starting"
            await anyio.to_thread.run_sync(
                self.runtime.start,
                spec,
                self._threadsafe(self._on_running, cid),
                self._threadsafe_exit(cid),
            )
            live.phase = "started"
            if live.stop_requested:
                await anyio.to_thread.run_sync(self._stop_process, cid)
        except asyncio.CancelledError:
            self._finish(
                cid,
                "stopped" if live.stop_requested else "failed",
                reason=None if live.stop_requested else "cancelled",
            )
            raise
        except Exception as exc:
            logger.warning("container %s failed to start: %s", cid, exc)
            self._system(cid, f"failed to start: {exc}")
            self._finish(cid, "failed", reason=f"failed to start: {exc}")

    def _threadsafe(self, fn: Callable[[str], None], cid: str) -> Callable[[], None]:
        def call() -> None:
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, cid)

        return call

    def _threadsafe_exit(self, cid: str) -> Callable[[int | None, str | None], None]:
        def call(exit_code: int | None, reason: str | None) -> None:
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_exit, cid, exit_code, reason)

        return call

    def _on_running(self, cid: str) -> None:
        row = self.state.get_container(cid)
        if row is None or row["status"] in TERMINAL_STATES:
            return
        req = json.loads(row["request"])
        try:
            mapping = self.runtime.ports(cid, listening_only=False)
        except Exception:
            mapping = {}
        ports = []
        for p in req.get("ports") or []:
            host = mapping.get(int(p))
            entry: dict[str, Any] = {"containerPort": int(p)}
            if host is not None:
                entry["hostPort"] = int(host)
                entry["url"] = f"http://127.0.0.1:{int(host)}"
            ports.append(entry)
        self.state.update_container(cid, status="running", started_at=utcnow(), ports=ports)

    def _on_exit(self, cid: str, exit_code: int | None, reason: str | None) -> None:
        live = self._live.get(cid)
        row = self.state.get_container(cid)
        if row is not None and row["started_at"] is None and row["status"] not in TERMINAL_STATES:
            self.state.update_container(cid, started_at=utcnow())
        if live is not None and live.stop_requested:
            self._finish(cid, "stopped", exit_code=exit_code)
        elif reason:
            self._finish(cid, "failed", exit_code=exit_code, reason=reason)
        else:
            self._finish(cid, "exited", exit_code=exit_code)

    # -- wait, stop, delete -----------------------------------------------------------

    async def wait(self, cid: str, timeout: float) -> dict[str, Any] | None:
        """The record once terminal, or after ``timeout`` seconds, whichever comes first."""
        row = self.state.get_container(cid)
        if row is None or row["status"] in TERMINAL_STATES or timeout <= 0:
            return row
        live = self._live.get(cid)
        if live is not None:
            await self._wait_event(live.done, timeout)
        return self.state.get_container(cid)

    async def _wait_event(self, event: asyncio.Event, timeout: float) -> None:
        done = asyncio.ensure_future(event.wait())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait(
                {done, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            done.cancel()
            closing.cancel()

    def _stop_process(self, cid: str) -> None:
        self.runtime.stop(cid, grace=self.stop_grace)

    async def stop(self, cid: str) -> dict[str, Any] | None:
        """Stop a container (SIGTERM, then SIGKILL after the grace period) and wait until it is gone."""
        row = self.state.get_container(cid)
        if row is None or row["status"] in TERMINAL_STATES:
            return row
        live = self._live.get(cid)
        if live is None:
            self._finish(cid, "stopped")
            return self.state.get_container(cid)
        live.stop_requested = True
        if live.phase == "prestart":
            if live.task is not None and not live.task.done():
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await live.task
            self._finish(cid, "stopped")
        elif live.phase == "started":
            await anyio.to_thread.run_sync(self._stop_process, cid)
        await self._wait_event(live.done, self.stop_grace + 5.0)
        if not live.done.is_set():
            self._finish(cid, "stopped")
        return self.state.get_container(cid)

    async def delete(self, cid: str) -> dict[str, Any] | None:
        """Stop the container if needed, then remove its record and logs."""
        row = await self.stop(cid)
        if row is None:
            return None
        self.state.delete_container(cid)
        self._live.pop(cid, None)
        await anyio.to_thread.run_sync(self.logs.delete, cid)
        return row

    # -- logs ----------------------------------------------------------------------

    async def stream_logs(self, cid: str, offset: int, follow: bool) -> AsyncIterator[bytes]:
        """NDJSON lines ``{stream, offset, data}`` from ``offset``; with ``follow`` until the end."""
        pos = offset
        while True:
            row = self.state.get_container(cid)
            finished = row is None or row["status"] in TERMINAL_STATES
            entries = await anyio.to_thread.run_sync(self.logs.read, cid, pos, _LOG_PAGE)
            if entries:
                chunk = []
                for e in entries:
                    chunk.append(
                        json.dumps(
                            {"stream": e["stream"], "offset": e["offset"], "data": e["data"]},
                            ensure_ascii=False,
                            separators=(",", ":"),
                        )
                    )
                    pos = int(e["offset"]) + 1
                yield ("\n".join(chunk) + "\n").encode("utf-8")
                if len(entries) >= _LOG_PAGE:
                    continue
            if not follow or finished or self._closing.is_set():
                return
            live = self._live.get(cid)
            if live is None:
                await asyncio.sleep(_FOLLOW_POLL)
            else:
                await self._wait_event(live.done, _FOLLOW_POLL)

    # -- exec ----------------------------------------------------------------------

    async def exec(self, command: str, mounts: list[MountSpec], timeout: float) -> ExecOutcome:
        """Run ``command`` to completion with ``mounts``; raises ``TimeoutError`` after ``timeout``."""
        cid = "exec-" + secrets.token_hex(8)
        spec = ContainerSpec(
            container_id=cid,
            command=command,
            initialization_script=None,
            env={"ARCHIL_CONTAINER_ID": cid},
            mounts=mounts,
            vcpu_count=1,
            mem_size_mib=512,
            image=None,
            ports=[],
            timeout_seconds=None,
            workdir=None,
        )
        try:
            code, out, err, queue_ms, exec_ms = await anyio.to_thread.run_sync(
                self.runtime.run_to_completion, spec, timeout
            )
        finally:
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(self.logs.delete, cid)
        return ExecOutcome(int(code), out, err, int(queue_ms), int(exec_ms))


def notice(message: str) -> None:
    """One line on stderr for the person running the server."""
    try:
        sys.stderr.write(f"archil: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def disk_mount(host_path: Path, container_path: str, read_only: bool) -> MountSpec:
    """A bind mount of a disk directory."""
    return MountSpec(host_path=host_path, container_path=container_path, read_only=read_only)
