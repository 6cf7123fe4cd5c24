"""A chainable, immutable container image builder that renders to a Dockerfile."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

__all__ = ["Image"]

_PY_RE = re.compile(r"^\d+\.\d+$")
_PKG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\],<>=!~;: @/+*'\"]*$")
_APT_RE = re.compile(r"^[a-z0-9][a-z0-9.+\-]*(:[a-z0-9]+)?(=[A-Za-z0-9.+~:\-]+)?$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FROM_PY_RE = re.compile(r"^FROM\s+(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)", re.I | re.M)

T = TypeVar("T")


class _hybrid(Generic[T]):
    """A method usable on the class (build from scratch) and on an instance (extend)."""

    def __init__(self, cls_fn: Callable[..., T], inst_fn: Callable[..., T]) -> None:
        self._cls_fn = cls_fn
        self._inst_fn = inst_fn
        self.__doc__ = inst_fn.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Callable[..., T]: ...
    @overload
    def __get__(self, obj: object, owner: type[Any]) -> Callable[..., T]: ...
    def __get__(self, obj: object | None, owner: type[Any]) -> Callable[..., T]:
        if obj is None:
            return lambda *a, **k: self._cls_fn(owner, *a, **k)
        return lambda *a, **k: self._inst_fn(obj, *a, **k)


def _check_python_version(version: str) -> str:
    if not isinstance(version, str) or not _PY_RE.match(version):
        raise ValueError(f"python_version must look like '3.11', got {version!r}")
    return version


class Image:
    """A container image, built step by step::

        image = (
            archil.Image.python("3.11")
            .pip_install("pandas", "numpy")
            .apt_install("git")
            .run_commands("mkdir -p /workspace")
            .workdir("/workspace")
            .env(PYTHONUNBUFFERED="1")
        )

    Every method returns a new ``Image``; the original is unchanged, so a base
    image can be shared. :meth:`to_dockerfile` renders the Dockerfile that the
    control plane builds; identical Dockerfiles are built once and reused.
    """

    __slots__ = ("_base", "_python_version", "_steps")

    def __init__(self, base: str, steps: tuple[str, ...] = (), python_version: str | None = None):
        if not base or "\n" in base:
            raise ValueError(f"base image must be a single image reference, got {base!r}")
        self._base = base
        self._steps = steps
        self._python_version = python_version

    # -- base images ------------------------------------------------------

    @classmethod
    def python(cls, version: str | None = None) -> Image:
        """Python ``version`` (e.g. ``"3.11"``, default: the caller's) on Debian slim."""
        v = _check_python_version(version) if version is not None else _local_python()
        return cls(f"python:{v}-slim", python_version=v)

    @classmethod
    def debian_slim(cls, python_version: str | None = None) -> Image:
        """Debian Bookworm slim with Python (default: the caller's version)."""
        v = _check_python_version(python_version) if python_version else _local_python()
        return cls(f"python:{v}-slim-bookworm", python_version=v)

    @classmethod
    def ubuntu(cls, version: str = "22.04") -> Image:
        """Ubuntu ``version``. It has no Python of the caller's version; use it for ``app.run``."""
        if not re.match(r"^\d{2}\.\d{2}$", version or ""):
            raise ValueError(f"ubuntu version must look like '22.04', got {version!r}")
        return cls(f"ubuntu:{version}")

    @classmethod
    def from_registry(cls, tag: str, *, python_version: str | None = None) -> Image:
        """Any base image by reference; say which Python it has to run functions on it."""
        return cls(
            tag, python_version=_check_python_version(python_version) if python_version else None
        )

    def _add(self, *steps: str) -> Image:
        return Image(self._base, self._steps + steps, self._python_version)

    # -- steps ------------------------------------------------------------

    def apt_install(self, *packages: str) -> Image:
        """Install Debian packages with ``apt-get``."""
        pkgs = _flatten(packages, "apt_install")
        for p in pkgs:
            if not _APT_RE.match(p):
                raise ValueError(f"apt_install: {p!r} is not a valid Debian package name")
        if not pkgs:
            return self
        return self._add(
            "RUN apt-get update && apt-get install -y --no-install-recommends " + " ".join(pkgs)
        )

    def pip_install(self, *packages: str) -> Image:
        """Install Python packages with ``pip`` (requirement specifiers are allowed)."""
        pkgs = _flatten(packages, "pip_install")
        for p in pkgs:
            if not _PKG_RE.match(p) or p.startswith("-"):
                raise ValueError(f"pip_install: {p!r} is not a valid requirement")
        if not pkgs:
            return self
        return self._add("RUN pip install " + " ".join(shlex.quote(p) for p in pkgs))

    def run_commands(self, *commands: str) -> Image:
        """Run shell commands, one ``RUN`` each."""
        for c in commands:
            if isinstance(c, str) and not c.strip():
                raise ValueError("run_commands: a command is empty")
        cmds = _flatten(commands, "run_commands")
        return self._add(*("RUN " + c.strip().replace("\n", " \\\n    ") for c in cmds))

    def workdir(self, path: str) -> Image:
        """Set the working directory of later steps and of the function."""
        if not isinstance(path, str) or not path.startswith("/") or "\n" in path:
            raise ValueError(f"workdir: {path!r} must be an absolute path")
        return self._add(f"WORKDIR {path}")

    def env(self, **variables: str) -> Image:
        """Set environment variables."""
        if not variables:
            return self
        parts = []
        for k, v in variables.items():
            if not _ENV_RE.match(k):
                raise ValueError(f"env: {k!r} is not a valid variable name")
            if not isinstance(v, str):
                raise ValueError(f"env: the value of {k} must be a string, got {type(v).__name__}")
            parts.append(f"{k}={_quote_env(v)}")
        return self._add("ENV " + " ".join(parts))

    def _extend_dockerfile(self, content: str) -> Image:
        """Append raw Dockerfile instructions (a ``FROM`` line replaces the base)."""
        base, steps, pyver = _parse_dockerfile(content)
        if base is not None:
            return Image(base, steps, pyver)
        return self._add(*steps)

    def _from_dockerfile(cls: type[Image], content: str) -> Image:  # type: ignore[misc]
        base, steps, pyver = _parse_dockerfile(content)
        if base is None:
            raise ValueError("dockerfile: the content needs a FROM line")
        return cls(base, steps, pyver)

    dockerfile = _hybrid(_from_dockerfile, _extend_dockerfile)
    """``Image.dockerfile(text)`` builds an image from Dockerfile text;
    ``image.dockerfile(text)`` appends instructions to an image."""

    # -- rendering ----------------------------------------------------------

    @property
    def python_version(self) -> str | None:
        """The image's Python ``major.minor``, when known."""
        return self._python_version

    def to_dockerfile(self) -> str:
        """The Dockerfile this image builds from."""
        return "\n".join([f"FROM {self._base}", *self._steps]) + "\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.to_dockerfile() == self.to_dockerfile()

    def __hash__(self) -> int:
        return hash(self.to_dockerfile())

    def __repr__(self) -> str:
        return f"Image({self._base!r}, steps={len(self._steps)})"


def _local_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _flatten(values: tuple[Any, ...], where: str) -> list[str]:
    out: list[str] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(_flatten(tuple(v), where))
        elif isinstance(v, str):
            if "\x00" in v or ("\n" in v and where != "run_commands"):
                raise ValueError(f"{where}: {v!r} contains a newline")
            if v.strip():
                out.append(v.strip())
        else:
            raise ValueError(f"{where}: expected strings, got {type(v).__name__}")
    return out


def _quote_env(value: str) -> str:
    if value and re.match(r"^[A-Za-z0-9_./:,+@%-]+$", value):
        return value
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n")
    )
    return f'"{escaped}"'


def _parse_dockerfile(content: str) -> tuple[str | None, tuple[str, ...], str | None]:
    if not isinstance(content, str) or not content.strip():
        raise ValueError("dockerfile: content must be non-empty Dockerfile text")
    base: str | None = None
    steps: list[str] = []
    pending = ""
    for raw in content.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line + "\n"
            continue
        full = (pending + line).strip()
        pending = ""
        if full.upper().startswith("FROM "):
            if base is not None or steps:
                raise ValueError("dockerfile: only one FROM line, at the top, is supported")
            base = full[5:].strip()
        else:
            steps.append(full)
    if pending.strip():
        steps.append(pending.strip())
    pyver = None
    if base is not None:
        m = _FROM_PY_RE.search("FROM " + base)
        pyver = m.group(1) if m else None
    return base, tuple(steps), pyver
