"""``client.containers``: the seed's containers, built on the sandbox API.

A container is a sandbox with its disk at ``/mnt/archil`` (shared: a
``conditional`` mount, so many containers can use one disk) and one process
that runs ``initialization_script`` then ``command``; ``container.container_id``
is the sandbox's id. What the sandbox API does not keep (the process's id, the
``metadata``, the command, the exit code once nobody is attached) lives on the
container's disk under ``.archil/containers/``, so it works on any control
plane that has the sandbox and object APIs.
"""

from __future__ import annotations

import builtins
import codecs
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from typing_extensions import Unpack

from ..._errors import (
    APITimeoutError,
    ArchilError,
    ConflictError,
    ContainerError,
    NotFoundError,
    SandboxError,
)
from ..._models import (
    SANDBOX_DISK_PATH,
    AdditionalMount,
    ArchilMount,
    Container,
    CreateContainerRequest,
    KernelVariant,
    LogEntry,
    as_dict,
    as_list,
    validate_container_id,
    validate_disk_id,
)
from ..._pagination import Page
from ..._wire import (
    CONTAINER_NAME_PREFIX,
    RequestOptions,
    check_container_status,
    check_seconds,
    container_from,
    container_keys,
    container_script,
    parse_exit_code,
)
from .._transport import AsyncTransport
from ..pagers import AsyncPager
from .objects import AsyncObjects
from .sandbox_handle import discard_sandbox
from .sandboxes import AsyncSandbox, AsyncSandboxes

__all__ = ["AsyncContainerPager", "AsyncContainers"]

MIN_POLL_INTERVAL = 0.25
MAX_POLL_INTERVAL = 2.0
_FAR = 1 << 62


class AsyncContainers:
    """Containers: each one lives on a disk mounted at ``/mnt/archil``."""

    def __init__(
        self, transport: AsyncTransport, sandboxes: AsyncSandboxes, objects: AsyncObjects
    ) -> None:
        self._transport = transport
        self._sandboxes = sandboxes
        self._objects = objects

    async def create(
        self,
        *,
        archil_mount: ArchilMount | Mapping[str, str],
        vcpu_count: int = 1,
        mem_size_mib: int = 512,
        kernel_variant: KernelVariant = "base",
        initialization_script: str | None = None,
        command: str | None = None,
        env: Mapping[str, str] | None = None,
        image_id: str | None = None,
        base_image: str | None = None,
        additional_mounts: Sequence[AdditionalMount | Mapping[str, object]] | None = None,
        ports: Sequence[int] | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_seconds: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> Container:
        """Create a container on the disk of ``archil_mount`` and start its command.

        Arguments are checked before anything is sent (a ``ValidationError``
        names the bad field). ``env`` reaches the command only (it is never
        stored or echoed). ``metadata`` is kept with the container on its disk.
        ``kernel_variant="extended"`` needs a control plane that offers it.
        ``timeout_seconds`` kills the command when it runs out.
        """
        request = CreateContainerRequest(
            archil_mount=archil_mount,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            kernel_variant=kernel_variant,
            initialization_script=initialization_script,
            command=command,
            env=as_dict(env, "env"),
            image_id=image_id,
            base_image=base_image,
            additional_mounts=as_list(additional_mounts, "additional_mounts") or [],
            ports=list(ports or ()),
            metadata=as_dict(metadata, "metadata"),
            timeout_seconds=timeout_seconds,
        )
        name = CONTAINER_NAME_PREFIX + secrets.token_hex(8)
        sandbox = await self._sandboxes.create_from(
            request.to_sandbox_request(name), wait=True, unique_name=True, **options
        )
        try:
            record = await self._start(sandbox, request, **options)
            exposed = await sandbox.list_ports() if request.ports else []
        except BaseException:
            # The caller gets no container to stop: a failed create leaves none running.
            await discard_sandbox(sandbox)
            raise
        return container_from(sandbox.data, record, None, exposed)

    async def _start(
        self,
        sandbox: AsyncSandbox,
        request: CreateContainerRequest,
        **options: Unpack[RequestOptions],
    ) -> dict[str, Any]:
        """Start the container's command in ``sandbox`` and write its record; the record."""
        process_id: str | None = None
        if request.command or request.initialization_script:
            script = container_script(request.initialization_script, request.command, sandbox.id)
            try:
                process = await sandbox.run(
                    script,
                    env=request.env,
                    cwd=SANDBOX_DISK_PATH,
                    timeout_seconds=request.timeout_seconds,
                    collect_output=False,
                )
            except ConflictError as exc:
                # It stopped between its start and the command's: nothing of the command ran.
                raise SandboxError(
                    f"container {sandbox.id} stopped before its command started: {exc.message}",
                    sandbox_id=sandbox.id,
                    exit_reason=exc.message,
                ) from exc
            process_id = process.id
            await process.close()
        record = {
            "process_id": process_id,
            "command": request.command,
            "metadata": request.metadata or {},
            "kernel_variant": request.kernel_variant,
        }
        disk = request.archil_mount.disk_id
        await self._objects.put(
            disk, container_keys(sandbox.id)[0], json.dumps(record).encode(), **options
        )
        return record

    async def _disk_of(self, sandbox: AsyncSandbox) -> str | None:
        main = next((m for m in sandbox.mounts if m.path == SANDBOX_DISK_PATH), None)
        return None if main is None else main.disk_id

    async def _record(self, disk: str | None, container_id: str) -> dict[str, Any] | None:
        if disk is None:
            return None
        try:
            data = await self._objects.get(disk, container_keys(container_id)[0])
        except NotFoundError:
            return None
        try:
            value = json.loads(data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def _exit_code(self, disk: str | None, container_id: str) -> int | None:
        if disk is None:
            return None
        try:
            return parse_exit_code(await self._objects.get(disk, container_keys(container_id)[1]))
        except NotFoundError:
            return None

    async def _assemble(self, sandbox: AsyncSandbox) -> Container:
        disk = await self._disk_of(sandbox)
        record = await self._record(disk, sandbox.id)
        code = await self._exit_code(disk, sandbox.id)
        ports = await sandbox.list_ports()
        return container_from(sandbox.data, record, code, ports)

    async def get(self, container_id: str, **options: Unpack[RequestOptions]) -> Container:
        """The container ``container_id`` (:class:`NotFoundError` if there is none)."""
        validate_container_id(container_id)
        return await self._assemble(await self._sandboxes.get(container_id, **options))

    def list(
        self,
        *,
        status: str | None = None,
        disk_id: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncContainerPager:
        """Every container (of ``disk_id``, in ``status``), as a pager to iterate or collect."""
        check_container_status(status)
        if disk_id is not None:
            validate_disk_id(disk_id)
        return AsyncContainerPager(self, status, disk_id, options)

    async def _all(
        self, status: str | None, disk_id: str | None, options: RequestOptions
    ) -> builtins.list[Container]:
        sandboxes = await self._sandboxes.list(disk_id=disk_id, **options)
        out: builtins.list[Container] = []
        for sandbox in sandboxes:
            if not sandbox.name.startswith(CONTAINER_NAME_PREFIX):
                continue
            container = await self._assemble(sandbox)
            if status is None or container.status == status:
                out.append(container)
        return out

    async def stop(self, container_id: str, **options: Unpack[RequestOptions]) -> Container:
        """Stop the container's sandbox (its processes end) and return its record."""
        validate_container_id(container_id)
        sandbox = await self._sandboxes.get(container_id, **options)
        await sandbox.stop(wait=True, **options)
        return await self._assemble(sandbox)

    async def delete(self, container_id: str, **options: Unpack[RequestOptions]) -> None:
        """Delete a container (stopping it first if it still runs) and its records on the disk."""
        validate_container_id(container_id)
        sandbox = await self._sandboxes.get(container_id, **options)
        disk = await self._disk_of(sandbox)
        if sandbox.status not in ("stopped", "exited", "failed"):
            await sandbox.stop(wait=True, **options)
        await sandbox.delete(**options)
        if disk is not None:
            for key in container_keys(container_id):
                with contextlib.suppress(NotFoundError):
                    await self._objects.delete(disk, key, **options)

    async def wait(self, container_id: str, *, timeout: float | None = None) -> Container:
        """Block until the command ends (or the sandbox stops or fails) and return the record.

        With no ``timeout`` it follows the command's process and returns the
        moment it ends; with one it polls, and raises :class:`APITimeoutError`
        when the time runs out.
        """
        validate_container_id(container_id)
        limit = check_seconds(timeout, "timeout")
        if limit is None:
            container = await self.get(container_id)
            if not container.is_terminal and container.process_id and container.sandbox:
                await self._follow_to_exit(container)
        return await self._poll(container_id, limit)

    async def _follow_to_exit(self, container: Container) -> None:
        assert container.sandbox is not None and container.process_id is not None
        sandbox = AsyncSandbox(self._transport, container.sandbox)
        try:
            process = await sandbox.attach(container.process_id, offset=_FAR, collect_output=False)
            async with process:
                await process.wait()
        except ArchilError:
            return

    async def _poll(self, container_id: str, limit: float | None) -> Container:
        transport = self._transport
        deadline = None if limit is None else transport.clock() + limit
        interval = MIN_POLL_INTERVAL
        while True:
            container = await self.get(container_id)
            if container.is_terminal or container.status == "paused":
                return container
            now = transport.clock()
            if deadline is not None and now >= deadline:
                raise APITimeoutError(
                    f"container {container_id} is still {container.status} after {limit:g} s"
                )
            pause = interval if deadline is None else min(interval, deadline - now)
            await transport.sleep(pause)
            interval = min(interval * 2, MAX_POLL_INTERVAL)

    def logs(
        self,
        container_id: str,
        *,
        follow: bool = False,
        offset: int = 0,
    ) -> AsyncIterator[LogEntry]:
        """The container's output (``stdout``/``stderr`` entries, byte ``offset`` on).

        With ``follow=True`` the entries come as the command writes them, until
        it ends; without, the output written so far (all of it once the
        command has ended). A dropped connection is resumed from the last byte received.

        Raises:
            ContainerError: the container's sandbox was stopped or deleted, and
                its output with it.
        """
        validate_container_id(container_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        return self._iter_logs(container_id, follow, offset)

    async def _iter_logs(
        self, container_id: str, follow: bool, offset: int
    ) -> AsyncIterator[LogEntry]:
        container = await self.get(container_id)
        if container.process_id is None or container.sandbox is None:
            return
        if container.sandbox.status not in ("running", "paused"):
            raise ContainerError(
                f"the output of container {container_id} is gone: its sandbox is "
                f"{container.sandbox.status} (the control plane keeps a process's output only "
                "while its sandbox runs; read logs before stop or delete)",
                container_id=container_id,
                exit_code=container.exit_code,
            )
        sandbox = AsyncSandbox(self._transport, container.sandbox)
        decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")(errors="replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")(errors="replace"),
        }
        process = await sandbox.attach(container.process_id, offset=offset, collect_output=False)
        async with process:
            outputs = process if follow or container.is_terminal else process.available()
            async for out in outputs:
                text = decoders[out.stream].decode(out.data)
                if text:
                    yield LogEntry(stream=out.stream, offset=out.offset, data=text)


class AsyncContainerPager(AsyncPager[Container]):
    """The containers, in one page (the sandbox API lists everything at once)."""

    def __init__(
        self,
        containers: AsyncContainers,
        status: str | None,
        disk_id: str | None,
        options: RequestOptions,
    ) -> None:
        self._containers = containers
        self._status = status
        self._disk_id = disk_id
        self._options = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self._status!r}, disk_id={self._disk_id!r})"

    async def _fetch_page(self, cursor: str | None) -> Page[Container]:
        items = await self._containers._all(self._status, self._disk_id, self._options)
        return Page(items, None)
