"""``client.sandboxes``: sandboxes, their handles, and the processes that run in them.

A sandbox is a long-lived isolated machine with disks mounted in it. Processes
run in it and are driven over the process WebSocket protocol
(``docs/process-protocol.md``): :meth:`AsyncSandbox.run` starts one and hands
back an :class:`AsyncProcess` that streams its output, survives a dropped
connection by attaching again from the offset it reached, and ends with a
:class:`~archil.ProcessResult`.

This module holds :class:`AsyncSandboxes` (create, look up, list) and exports
the handles, which live in their own modules: ``sandbox_handle``
(:class:`AsyncSandbox`: forks and processes), ``sandbox_lifecycle`` (its record
and lifecycle), ``processes`` (:class:`AsyncProcess`) and ``sandbox_support``
(helpers they share).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from typing_extensions import Unpack

from ..._errors import ArchilError
from ..._models import (
    DEFAULT_IDLE_TTL_SECONDS,
    DEFAULT_SANDBOX_MEM_MIB,
    MAX_TTL_SECONDS,
    CreateSandboxRequest,
    KernelVariant,
    SandboxData,
    SandboxMount,
    as_dict,
    as_list,
    validate_disk_id,
)
from ..._wire import RequestOptions, parse_model
from .._transport import AsyncTransport
from .processes import AsyncProcess
from .sandbox_handle import AsyncSandbox, _create_or_find, _find, _list, discard_sandbox
from .sandbox_support import _NOT_PICKLABLE, _mount_list, generated_name, sandbox_path
from .sandbox_support import FIRST_POLL_INTERVAL as FIRST_POLL_INTERVAL
from .sandbox_support import MAX_POLL_INTERVAL as MAX_POLL_INTERVAL
from .sandbox_support import RECONNECT_PROGRESS_SECONDS as RECONNECT_PROGRESS_SECONDS

__all__ = ["AsyncProcess", "AsyncSandbox", "AsyncSandboxes"]


class AsyncSandboxes:
    """Sandboxes: create, look up and list them (``client.sandboxes``)."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    def __reduce__(self) -> NoReturn:
        raise TypeError(_NOT_PICKLABLE.format("a sandboxes resource"))

    async def create(
        self,
        *,
        name: str | None = None,
        vcpu_count: int = 1,
        mem_size_mib: int = DEFAULT_SANDBOX_MEM_MIB,
        base_image: str | None = None,
        image_id: str | None = None,
        env: Mapping[str, str] | None = None,
        ports: Sequence[int] | None = None,
        network: Mapping[str, Any] | None = None,
        mounts: Sequence[SandboxMount | Mapping[str, Any]] | None = None,
        max_ttl_seconds: int = MAX_TTL_SECONDS,
        idle_ttl_seconds: int = DEFAULT_IDLE_TTL_SECONDS,
        max_concurrent_execs: int | None = None,
        kernel_variant: KernelVariant | None = None,
        wait: bool = True,
        **options: Unpack[RequestOptions],
    ) -> AsyncSandbox:
        """Create a sandbox and (with ``wait=True``) wait until it runs.

        Args:
            name: unique within the account; one (``sbx-`` + 16 hex) is made when omitted.
            vcpu_count, mem_size_mib: its resources (1 vCPU and 2048 MiB by default).
            base_image: a public OCI reference; ``image_id``: an image from
                :meth:`AsyncImages.build`. Give at most one.
            env: environment variables of every process (values are never logged).
            ports: TCP ports to expose when it starts.
            network: the network policy, as the control plane spells it.
            mounts: disks to mount (:class:`SandboxMount` or dicts); a sole
                mount without ``path`` lands at ``/mnt/archil``.
            max_ttl_seconds, idle_ttl_seconds: its lifetime and idle budgets.
            max_concurrent_execs: how many process connections may attach at once.
            kernel_variant: an archil extension, rejected by control planes without it.
            wait: wait until the sandbox is ``running``.

        Raises:
            ValueError: a bad argument (a pydantic ``ValidationError`` naming the
                field), before anything is sent.
            SandboxError: with ``wait=True``, the sandbox stopped or failed
                instead of starting (its ``status`` and ``exit_reason`` say why).
        """
        request = CreateSandboxRequest(
            name=name,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            base_image=base_image,
            image_id=image_id,
            env=as_dict(env, "env"),
            ports=as_list(ports, "ports"),
            network=as_dict(network, "network"),
            mounts=_mount_list(mounts),
            max_ttl_seconds=max_ttl_seconds,
            idle_ttl_seconds=idle_ttl_seconds,
            max_concurrent_execs=max_concurrent_execs,
            kernel_variant=kernel_variant,
        )
        return await self.create_from(request, wait=wait, **options)

    async def create_from(
        self,
        template: CreateSandboxRequest,
        *,
        wait: bool = True,
        unique_name: bool = False,
        **options: Unpack[RequestOptions],
    ) -> AsyncSandbox:
        """Create a sandbox from a validated request model (the declarative layer's template).

        A template without a ``name`` gets a generated one. If the control
        plane answers 409 for a generated name (an earlier attempt of this very
        call created it and its answer was lost), the sandbox of that name is
        returned instead, so a retry never makes a second sandbox even where
        idempotency keys are not honoured. ``unique_name=True`` says the
        template's own name was made for this call alone, and gets the same treatment.
        """
        if not isinstance(template, CreateSandboxRequest):
            raise TypeError(
                f"template must be a CreateSandboxRequest, not {type(template).__name__}"
            )
        generated = template.name is None or unique_name
        request = (
            template.model_copy(update={"name": generated_name()})
            if template.name is None
            else template
        )
        assert request.name is not None
        sandbox = await _create_or_find(
            self._transport,
            "/api/sandboxes",
            request.to_wire(),
            request.name,
            generated=generated,
            wait=wait,
            **options,
        )
        if request.kernel_variant is not None and sandbox.data.kernel_variant != (
            request.kernel_variant
        ):
            await discard_sandbox(sandbox)
            raise ArchilError(
                f"kernel_variant={request.kernel_variant!r} is an archil extension that this "
                "control plane does not offer (the sandbox API has no kernel variants); "
                "the sandbox it made was deleted"
            )
        if wait:
            await sandbox._wait_started()
        return sandbox

    async def get(self, sandbox_id: str, **options: Unpack[RequestOptions]) -> AsyncSandbox:
        """The sandbox ``sandbox_id`` (:class:`NotFoundError` if there is none)."""
        envelope = await self._transport.request_json("GET", sandbox_path(sandbox_id), **options)
        return AsyncSandbox(
            self._transport, parse_model(SandboxData, envelope.data, envelope.status_code)
        )

    async def list(
        self, *, disk_id: str | None = None, **options: Unpack[RequestOptions]
    ) -> builtins.list[AsyncSandbox]:
        """Every sandbox of the account, or only those that mount ``disk_id``."""
        if disk_id is not None:
            validate_disk_id(disk_id)
        return await _list(self._transport, disk_id, **options)

    async def find(self, name: str, **options: Unpack[RequestOptions]) -> AsyncSandbox | None:
        """The sandbox called ``name``, or ``None``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        return await _find(self._transport, name, **options)
