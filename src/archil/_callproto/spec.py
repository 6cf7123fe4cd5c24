"""What a declared function runs on: its :class:`FunctionSpec`, its image's
:class:`ImagePlan` (with the local trees it copies) and its :class:`Retries`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .._constants import REMOTE_ENV
from .._models import CreateSandboxRequest
from .._secrets import Secret, merged_env
from .calls import CONTAINER_DISK_ROOT

__all__ = [
    "FILES_PREFIX",
    "LOCAL_PYTHON_ROOT",
    "FunctionSpec",
    "ImagePlan",
    "LocalTree",
    "Retries",
]

FILES_PREFIX = ".archil/files"
LOCAL_PYTHON_ROOT = "/opt/archil/python"
"""Where ``Image.add_local_python_source`` puts packages in the image (on ``PYTHONPATH``)."""


@dataclass(frozen=True)
class LocalTree:
    """Local files an image copies to ``remote``, content-addressed by ``digest``.

    ``files`` are ``(relative path, local path)``; the set is uploaded once to the
    app's disk under ``.archil/files/<digest>/`` and copied into the image by its
    preparation, so an unchanged tree is reused and a changed one rebuilds.
    """

    digest: str
    remote: str
    files: tuple[tuple[str, str], ...]

    @property
    def prefix(self) -> str:
        """The object-key prefix of the uploaded tree."""
        return f"{FILES_PREFIX}/{self.digest}"

    @property
    def marker_key(self) -> str:
        """Written after every file: the upload is complete."""
        return f"{self.prefix}/.complete"

    @property
    def guest_dir(self) -> str:
        """The uploaded tree as a sandbox sees it."""
        return f"{CONTAINER_DISK_ROOT}/{self.prefix}/tree"


@dataclass(frozen=True)
class ImagePlan:
    """How to get an image on the control plane.

    ``base`` is built with ``images.build(source=base)``; ``prepare`` (a shell
    script, or ``None`` when there is nothing to do) runs once in a sandbox of the
    base, which is then stopped and forked per call. ``env`` and ``workdir`` are
    the image's environment and working directory; ``key`` identifies the steps.
    """

    base: str
    prepare: str | None
    env: dict[str, str]
    workdir: str | None
    key: str
    python_version: str | None = None
    uploads: tuple[LocalTree, ...] = ()
    python_modules: tuple[str, ...] = ()
    """Top-level modules the image holds (``add_local_python_source``): pickled by reference."""


@dataclass(frozen=True)
class FunctionSpec:
    """What a declared function or job runs on (validated when it is declared).

    ``template`` is a validated ``CreateSandboxRequest`` without an image or a
    name (the runner fills them in with ``model_copy``): the app's disk, the
    volumes, the shape, the ports. ``env`` goes to the process (never to the
    sandbox record or the preparation); ``timeout`` is the process's
    ``timeout_seconds``.
    """

    disk_id: str
    template: CreateSandboxRequest
    image: ImagePlan
    env: dict[str, str] = field(default_factory=dict)
    timeout: int | None = None
    stream_logs: bool = True
    retries: Retries | None = None
    startup_timeout: int | None = None
    secrets: tuple[Secret, ...] = ()

    def process_env(self, pythonpath: str) -> dict[str, str]:
        """The call's process environment: ``env``, the secrets, and archil's own variables."""
        if self.image.python_modules:
            pythonpath += ":" + LOCAL_PYTHON_ROOT
        return {**self.env, **merged_env(self.secrets), "PYTHONPATH": pythonpath, REMOTE_ENV: "1"}

    def redact(self, text: str) -> str:
        """``text`` with every secret value replaced by ``********``."""
        for value in sorted(merged_env(self.secrets).values(), key=len, reverse=True):
            if len(value) >= 4:
                text = text.replace(value, "********")
        return text

    @property
    def max_attempts(self) -> int:
        """How many times one call may run (1 without retries)."""
        return 1 + (self.retries.max_retries if self.retries is not None else 0)

    @property
    def cwd(self) -> str:
        """Where the call runs: the image's ``WORKDIR``, else the disk."""
        return self.image.workdir or CONTAINER_DISK_ROOT

    def prepared_name(self) -> str:
        """The name of the stopped sandbox that holds this image's preparation.

        It depends on everything a fork inherits: the image, the shape and the mounts.
        """
        inherited = self.template.model_dump(
            mode="json", include={"vcpu_count", "mem_size_mib", "mounts", "kernel_variant"}
        )
        blob = json.dumps({"image": self.image.key, "sandbox": inherited}, sort_keys=True)
        return "archil-img-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Retries:
    """How a function's failed attempts are retried (``@app.function(retries=...)``).

    An attempt is retried when its container failed or was killed (out of
    memory, for example), when the function raised, or when it went past its
    ``timeout``. The wait before retry ``n`` (1-based) is
    ``initial_delay * backoff_coefficient ** (n - 1)`` seconds, at most
    ``max_delay``. ``retries=3`` is ``Retries(max_retries=3)``.
    """

    max_retries: int
    backoff_coefficient: float = 2.0
    initial_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or not 0 <= self.max_retries <= 10
        ):
            raise ValueError(
                f"max_retries must be a whole number from 0 to 10, got {self.max_retries!r}"
            )
        for name, low, high in (
            ("backoff_coefficient", 1.0, 10.0),
            ("initial_delay", 0.0, 60.0),
            ("max_delay", 0.0, 3600.0),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (low <= value <= high)
            ):
                raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        return float(
            min(self.max_delay, self.initial_delay * self.backoff_coefficient ** (retry - 1))
        )
