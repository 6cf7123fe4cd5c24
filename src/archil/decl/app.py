"""The declarative layer: ``App``, ``@app.function`` and ``@app.run``."""

from __future__ import annotations

import os
import threading
from collections.abc import (
    Callable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from pydantic import SecretStr, ValidationError

from .._callproto import FunctionSpec, Retries, check_python_version
from .._errors import ConfigurationError
from .._models import (
    SANDBOX_DISK_PATH,
    CreateSandboxRequest,
    KernelVariant,
    SandboxMount,
    as_dict,
    as_list,
    validate_disk_id,
)
from .._secrets import Secret
from ._loopclient import LoopClients
from .cls import Cls
from .function import Function, Job
from .functioncall import FunctionCall
from .image import Image
from .volume import Volume

if TYPE_CHECKING:
    from .._async.client import AsyncArchil
    from .._client import Archil

__all__ = ["App", "Function", "FunctionCall", "Job"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

FUNCTION_IDLE_TTL = 600
"""Seconds a function's sandbox may sit with no process connection before the control
plane pauses it: a caller that died cannot leave it running for long.
``ARCHIL_FUNCTION_IDLE_TTL`` sets another value (see :func:`function_idle_ttl`)."""


def function_idle_ttl() -> int:
    """The idle TTL of function and job sandboxes: ``ARCHIL_FUNCTION_IDLE_TTL``, else 600 s.

    Read when a function is declared. It must be a whole number of seconds from 1 to
    86400 (0, which disables the idle TTL, is refused: a caller that dies would leave
    its sandbox running until its lifetime budget runs out).
    """
    raw = os.environ.get("ARCHIL_FUNCTION_IDLE_TTL", "").strip()
    if not raw:
        return FUNCTION_IDLE_TTL
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 86_400:
        raise ConfigurationError(
            f"ARCHIL_FUNCTION_IDLE_TTL must be a whole number of seconds from 1 to 86400, "
            f"got {raw!r}"
        )
    return value


class App:
    """An application that lives on a disk.

    Every function of the app runs in a container with the disk mounted at
    ``/mnt/archil``::

        app = archil.App(name="my-app", disk_id="disk_abc123", disk_env="production")

        @app.function(image=archil.Image.python("3.11").pip_install("numpy"))
        def process():
            ...

        process.remote()

    The API key comes from ``api_key`` or ``ARCHIL_API_KEY``; with neither, the
    app runs on the embedded local control plane.
    """

    def __init__(
        self,
        name: str,
        disk_id: str,
        disk_env: str = "production",
        api_key: str | None = None,
        *,
        region: str | None = None,
        base_url: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        validate_disk_id(disk_id)
        if not isinstance(disk_env, str) or not disk_env:
            raise ValueError(f"disk_env must be a non-empty string, got {disk_env!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("api_key must be a non-empty string when given")
        self.name = name
        self.disk_id = disk_id
        self.disk_env = disk_env
        self._api_key = SecretStr(api_key) if api_key is not None else None
        self._region = region
        self._base_url = base_url
        self._client: Archil | None = None
        self._lock = threading.Lock()
        self._loop_clients = LoopClients(lambda: self.async_client())
        self.functions: dict[str, Function[..., Any]] = {}

    def __repr__(self) -> str:
        return f"App(name={self.name!r}, disk_id={self.disk_id!r}, disk_env={self.disk_env!r})"

    def __getstate__(self) -> dict[str, Any]:
        # An app referenced from a pickled function never carries credentials or clients.
        return {"name": self.name, "disk_id": self.disk_id, "disk_env": self.disk_env}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["disk_id"], state["disk_env"])  # type: ignore[misc]

    # -- clients ----------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self._api_key.get_secret_value() if self._api_key else None,
            "region": self._region,
            "base_url": self._base_url,
        }

    def client(self) -> Archil:
        """The blocking client this app uses (created on first use and kept)."""
        with self._lock:
            if self._client is None:
                from .._client import Archil

                self._client = Archil(**self._client_kwargs())
            return self._client

    def async_client(self) -> AsyncArchil:
        """A new async client with the app's configuration (the caller closes it)."""
        from .._async.client import AsyncArchil

        return AsyncArchil(**self._client_kwargs())

    async def _loop_client(self) -> AsyncArchil:
        """The async client the app's ``.aio`` calls use on the running event loop.

        One per loop, kept between calls and closed when ``asyncio.run`` shuts the
        loop down (see ``_loopclient``).
        """
        return await self._loop_clients.get()

    def close(self) -> None:
        """Close the app's client and its connections."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- decorators -------------------------------------------------------------

    def _spec(
        self,
        *,
        image: Image | None,
        vcpu_count: int,
        mem_size_mib: int,
        kernel_variant: KernelVariant,
        additional_volumes: Mapping[str, Volume] | None,
        ports: Sequence[int] | None,
        env: Mapping[str, str] | None,
        timeout: int | None,
        stream_logs: bool,
        needs_python: bool,
        secrets: Sequence[Secret] | None = None,
        retries: int | Retries | None = None,
        startup_timeout: int | None = None,
    ) -> FunctionSpec:
        """Validate a decorator's arguments into the :class:`FunctionSpec` every call uses."""
        if image is not None and not isinstance(image, Image):
            raise ValueError(f"image must be an archil.Image, got {type(image).__name__}")
        if needs_python:
            image = image if image is not None else Image.python()
            check_python_version(image.python_version)
        elif image is None:
            image = Image.debian_slim()
        if kernel_variant not in ("base", "extended"):
            raise ValueError(f"kernel_variant must be 'base' or 'extended', got {kernel_variant!r}")
        for label, limit in (("timeout", timeout), ("startup_timeout", startup_timeout)):
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 86_400
            ):
                raise ValueError(
                    f"{label} must be a whole number of seconds from 1 to 86400, got {limit!r}"
                )
        policy = _retries(retries)
        checked_secrets = _secrets(secrets)
        plan = image.plan()
        try:
            template = CreateSandboxRequest.model_validate(
                {
                    "vcpu_count": vcpu_count,
                    "mem_size_mib": mem_size_mib,
                    "kernel_variant": None if kernel_variant == "base" else kernel_variant,
                    "mounts": self._mounts(additional_volumes),
                    "ports": as_list(ports, "ports") or None,
                    "env": plan.env or None,
                    "idle_ttl_seconds": function_idle_ttl(),
                }
            )
            process_env = CreateSandboxRequest(env=as_dict(env, "env") or None).env or {}
        except ValidationError as exc:
            raise ValueError(_describe(exc)) from None
        return FunctionSpec(
            disk_id=self.disk_id,
            template=template,
            image=plan,
            env=process_env,
            timeout=timeout,
            stream_logs=stream_logs,
            retries=policy,
            startup_timeout=startup_timeout,
            secrets=checked_secrets,
        )

    def _mounts(self, volumes: Mapping[str, Volume] | None) -> list[SandboxMount]:
        """The app's disk at /mnt/archil (writable by many sandboxes at once), then the volumes."""
        mounts = [SandboxMount(disk_id=self.disk_id, path=SANDBOX_DISK_PATH, conditional=True)]
        for path, vol in (as_dict(volumes, "additional_volumes") or {}).items():
            if not isinstance(vol, Volume):
                raise ValueError(
                    f"additional_volumes[{path!r}] must be an archil.Volume, got {type(vol).__name__}"
                )
            if vol.disk_id == self.disk_id:
                raise ValueError(
                    f"additional_volumes[{path!r}]: disk {vol.disk_id!r} is the app's own disk, "
                    "already at /mnt/archil (a disk can be mounted once per sandbox)"
                )
            try:
                mount = vol.mount_at(path)
            except (ValueError, ValidationError) as exc:
                detail = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
                raise ValueError(f"additional_volumes[{path!r}]: {detail}") from None
            assert mount.path is not None
            if mount.path == SANDBOX_DISK_PATH or mount.path.startswith(SANDBOX_DISK_PATH + "/"):
                raise ValueError(
                    f"additional_volumes[{path!r}]: the app's disk is at /mnt/archil; "
                    "mount volumes elsewhere"
                )
            mounts.append(mount)
        return mounts

    def function(
        self,
        image: Image | None = None,
        vcpu_count: int = 1,
        mem_size_mib: int = 512,
        kernel_variant: KernelVariant = "base",
        additional_volumes: Mapping[str, Volume] | None = None,
        ports: Sequence[int] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        timeout: int | None = None,
        startup_timeout: int | None = None,
        retries: int | Retries | None = None,
        stream_logs: bool = True,
    ) -> Callable[[Callable[P, R]], Function[P, R]]:
        """Declare a function that runs in a container on the app's disk.

        Args:
            image: the container image (default: Python of the caller's version).
            vcpu_count: vCPUs for the container (1-64).
            mem_size_mib: memory in MiB (128-262144).
            kernel_variant: ``"base"``, or ``"extended"`` for extra drivers (GPU...).
            additional_volumes: further disks, ``{"/path": archil.Volume(...)}``.
            ports: container ports to expose.
            env: environment variables for the container.
            secrets: :class:`archil.Secret` objects whose variables the container gets
                (never stored, logged or shown).
            timeout: seconds one attempt may run before it is killed
                (:class:`archil.FunctionTimeoutError`).
            startup_timeout: seconds for preparing the image and starting the sandbox.
            retries: how many times a failed attempt is run again (an int), or an
                :class:`archil.Retries` policy with its backoff.
            stream_logs: print the container's output while it runs.
        """
        opts = self._spec(
            image=image,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            kernel_variant=kernel_variant,
            additional_volumes=additional_volumes,
            ports=ports,
            env=env,
            timeout=timeout,
            stream_logs=stream_logs,
            needs_python=True,
            secrets=secrets,
            retries=retries,
            startup_timeout=startup_timeout,
        )

        def decorator(fn: Callable[P, R]) -> Function[P, R]:
            if not callable(fn):
                raise TypeError("@app.function() decorates a function")
            f = Function(self, fn, opts)
            self.functions[f.name] = f
            return f

        return decorator

    def cls(
        self,
        image: Image | None = None,
        vcpu_count: int = 1,
        mem_size_mib: int = 512,
        kernel_variant: KernelVariant = "base",
        additional_volumes: Mapping[str, Volume] | None = None,
        ports: Sequence[int] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        timeout: int | None = None,
        startup_timeout: int | None = None,
        scaledown_window: float = 60.0,
        stream_logs: bool = True,
    ) -> Callable[[type[T]], Cls[T]]:
        """Declare a class whose instances live in a warm container on the app's disk.

        Its ``@archil.enter()`` methods run once per container; its
        ``@archil.method()`` methods are called with ``Model().predict.remote(x)``.
        Successive calls (with the same constructor arguments) reuse one sandbox
        until it has been idle ``scaledown_window`` seconds; it is deleted then, at
        the end of the script and on Ctrl-C. ``timeout`` applies to each method
        call; the other options are those of :meth:`function`.
        """
        if (
            isinstance(scaledown_window, bool)
            or not isinstance(scaledown_window, (int, float))
            or not 0 < scaledown_window <= 86_400
        ):
            raise ValueError(
                f"scaledown_window must be a number of seconds from 0 to 86400, "
                f"got {scaledown_window!r}"
            )
        opts = self._spec(
            image=image,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            kernel_variant=kernel_variant,
            additional_volumes=additional_volumes,
            ports=ports,
            env=env,
            timeout=timeout,
            stream_logs=stream_logs,
            needs_python=True,
            secrets=secrets,
            startup_timeout=startup_timeout,
        )

        def decorator(user_cls: type[T]) -> Cls[T]:
            if not isinstance(user_cls, type):
                raise TypeError("@app.cls() decorates a class")
            return Cls(self, user_cls, opts, float(scaledown_window))

        return decorator

    def run(
        self,
        command: str,
        image: Image | None = None,
        vcpu_count: int = 1,
        mem_size_mib: int = 512,
        kernel_variant: KernelVariant = "base",
        additional_volumes: Mapping[str, Volume] | None = None,
        ports: Sequence[int] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        timeout: int | None = None,
        stream_logs: bool = True,
    ) -> Callable[[Callable[..., Any]], Job]:
        """Declare a shell job: ``job.remote()`` runs ``command`` in a container on the disk.

        It returns 0, or raises :class:`archil.ContainerError` when the command
        exits non-zero. The decorated function's body is not run. ``secrets``
        are given to the command as environment variables, as for functions.
        """
        if not isinstance(command, str) or not command.strip():
            raise ValueError("command must be a non-empty shell command")
        opts = self._spec(
            image=image,
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            kernel_variant=kernel_variant,
            additional_volumes=additional_volumes,
            ports=ports,
            env=env,
            timeout=timeout,
            stream_logs=stream_logs,
            needs_python=False,
            secrets=secrets,
        )
        script = _dedent_script(command)

        def decorator(fn: Callable[..., Any]) -> Job:
            return Job(self, getattr(fn, "__name__", "job"), script, opts)

        return decorator


def _retries(value: int | Retries | None) -> Retries | None:
    if value is None or isinstance(value, Retries):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"retries must be an int or an archil.Retries, got {value!r}")
    try:
        return Retries(max_retries=value)
    except ValueError as exc:
        raise ValueError(f"retries: {exc}") from None


def _secrets(value: Sequence[Secret] | None) -> tuple[Secret, ...]:
    if value is None:
        return ()
    if isinstance(value, Secret) or not isinstance(value, (list, tuple)):
        raise ValueError("secrets must be a list of archil.Secret objects")
    for i, secret in enumerate(value):
        if not isinstance(secret, Secret):
            raise ValueError(f"secrets[{i}] must be an archil.Secret, got {type(secret).__name__}")
    return tuple(value)


def _dedent_script(command: str) -> str:
    import textwrap

    return textwrap.dedent(command).strip("\n") + "\n"


def _describe(exc: ValidationError) -> str:
    names = {"mounts": "additional_volumes", "timeout_seconds": "timeout"}
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        if loc:
            loc[0] = names.get(loc[0], loc[0])
        where = ".".join(loc) or "options"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "invalid function options: " + "; ".join(parts)
