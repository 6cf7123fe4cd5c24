"""A chainable, immutable image builder.

An :class:`Image` is an OCI base reference plus steps (``RUN``, ``ENV``,
``WORKDIR``, as in a Dockerfile). The control plane builds the base with
``POST /api/images``; the steps are replayed once in a sandbox of that image
(its *preparation*) and the result is reused for every call: see
:meth:`Image.plan`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Generic, TypeVar, overload

from .._callproto import LOCAL_PYTHON_ROOT, ImagePlan, LocalTree

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

    __slots__ = ("_base", "_locals", "_modules", "_python_version", "_steps")

    def __init__(
        self,
        base: str,
        steps: tuple[str, ...] = (),
        python_version: str | None = None,
        *,
        local_trees: tuple[LocalTree, ...] = (),
        modules: tuple[str, ...] = (),
    ):
        if not base or "\n" in base:
            raise ValueError(f"base image must be a single image reference, got {base!r}")
        self._base = base
        self._steps = steps
        self._python_version = python_version
        self._locals = local_trees
        self._modules = modules

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
        if not isinstance(version, str) or not re.match(r"^\d{2}\.\d{2}$", version):
            raise ValueError(f"ubuntu version must look like '22.04', got {version!r}")
        return cls(f"ubuntu:{version}")

    @classmethod
    def from_registry(cls, tag: str, *, python_version: str | None = None) -> Image:
        """Any base image by OCI reference that the control plane can build.

        Functions need its Python ``major.minor``: it is read from official
        ``python:X.Y...`` references, otherwise say it with ``python_version``.
        """
        if not isinstance(tag, str) or not tag.strip() or any(c.isspace() for c in tag.strip()):
            raise ValueError(f"from_registry: tag must be an image reference, got {tag!r}")
        tag = tag.strip()
        if python_version:
            version: str | None = _check_python_version(python_version)
        else:
            m = _FROM_PY_RE.search("FROM " + tag)
            version = m.group(1) if m else None
        return cls(tag, python_version=version)

    def _add(self, *steps: str) -> Image:
        return Image(
            self._base,
            self._steps + steps,
            self._python_version,
            local_trees=self._locals,
            modules=self._modules,
        )

    # -- local files --------------------------------------------------------

    def _add_tree(self, tree: LocalTree, modules: tuple[str, ...] = ()) -> Image:
        return Image(
            self._base,
            (*self._steps, f"{_COPY_KEYWORD} {tree.digest} {tree.remote}"),
            self._python_version,
            local_trees=(*self._locals, tree),
            modules=self._modules + modules,
        )

    def add_local_file(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copy the local file ``local_path`` to ``remote_path`` (absolute) in the image.

        The image is keyed by the file's content: changing the file prepares the
        image again, an unchanged one reuses the preparation.
        """
        path = Path(local_path)
        if not path.is_file():
            raise ValueError(f"add_local_file: {str(path)!r} is not a file")
        remote = _remote_path(remote_path, "add_local_file")
        parent = str(PurePosixPath(remote).parent)
        name = PurePosixPath(remote).name
        return self._add_tree(_tree({name: path}, parent))

    def add_local_dir(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        ignore: Sequence[str] = ("__pycache__", ".git"),
    ) -> Image:
        """Copy the local directory ``local_path`` to ``remote_path`` (absolute) in the image.

        Files and directories named in ``ignore`` are left out. The image is keyed by
        the content: a changed file prepares it again, an unchanged tree reuses it.
        """
        root = Path(local_path)
        if not root.is_dir():
            raise ValueError(f"add_local_dir: {str(root)!r} is not a directory")
        remote = _remote_path(remote_path, "add_local_dir")
        return self._add_tree(_tree(_walk(root, tuple(ignore)), remote))

    def add_local_python_source(self, *modules: str) -> Image:
        """Put these local Python packages or modules (importable here) in the image.

        They go to a directory on the functions' ``PYTHONPATH``, so a function can
        ``import`` them, and functions defined in them are pickled by reference.
        ``.py`` files are copied (``__pycache__`` left out); the image is keyed by
        their content.
        """
        if not modules:
            raise ValueError("add_local_python_source: give at least one module name")
        image = self
        for module in modules:
            if not isinstance(module, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module):
                raise ValueError(
                    f"add_local_python_source: {module!r} is not a top-level module name"
                )
            try:
                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                spec = None
            if spec is None or spec.origin in (None, "built-in", "frozen"):
                raise ValueError(
                    f"add_local_python_source: module {module!r} cannot be found here "
                    "(is its directory on sys.path?)"
                )
            if spec.submodule_search_locations:
                package = Path(next(iter(spec.submodule_search_locations)))
                files = {
                    f"{module}/{rel}": p
                    for rel, p in _walk(package, ("__pycache__",)).items()
                    if rel.endswith(".py")
                }
            else:
                files = {f"{module}.py": Path(str(spec.origin))}
            image = image._add_tree(_tree(files, LOCAL_PYTHON_ROOT), (module,))
        return image

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
        if (
            not isinstance(path, str)
            or not path.startswith("/")
            or any(c in path for c in "\n\r\x00")
        ):
            raise ValueError(
                f"workdir: {path!r} must be an absolute path on one line, without NUL bytes"
            )
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

    @property
    def base(self) -> str:
        """The OCI reference of the base image (``python:3.11-slim``)."""
        return self._base

    def plan(self) -> ImagePlan:
        """How to get this image on a control plane: its base, its preparation, its environment."""
        env: dict[str, str] = {}
        workdir: str | None = None
        lines = ["set -e", "export DEBIAN_FRONTEND=noninteractive", "cd /"]
        work = False
        for step in self._steps:
            keyword, _, rest = step.partition(" ")
            keyword = keyword.upper()
            if keyword == "RUN":
                lines.append(f"printf '%s\\n' {shlex.quote('==> RUN ' + _summary(rest))}")
                lines.append(f"/bin/sh -ec {shlex.quote(rest)}")
                work = True
            elif keyword in ("ENV", "ARG"):
                for name, value in _assignments(rest, keyword):
                    env[name] = value
                    lines.append(f"export {name}={shlex.quote(value)}")
            elif keyword == "WORKDIR":
                workdir = rest.strip()
                lines.append(f"mkdir -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)}")
                work = True
            elif keyword == _COPY_KEYWORD:
                digest, _, remote = rest.partition(" ")
                tree = next(t for t in self._locals if t.digest == digest)
                source = shlex.quote(tree.guest_dir)
                target = shlex.quote(remote)
                lines.append(f"printf '%s\\n' {shlex.quote('==> COPY local files to ' + remote)}")
                lines.append(
                    f"mkdir -p {target} && if [ -d {source} ]; then cp -R {source}/. {target}/; fi"
                )
                work = True
        key = hashlib.sha256(self.to_dockerfile().encode()).hexdigest()
        return ImagePlan(
            base=self._base,
            prepare="\n".join(lines) + "\n" if work else None,
            env=env,
            workdir=workdir,
            key=key,
            python_version=self._python_version,
            uploads=self._locals,
            python_modules=self._modules,
        )

    def to_dockerfile(self) -> str:
        """The Dockerfile this image builds from (local files appear as ``COPY`` of their digest)."""
        return "\n".join([f"FROM {self._base}", *map(_render, self._steps)]) + "\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.to_dockerfile() == self.to_dockerfile()

    def __hash__(self) -> int:
        return hash(self.to_dockerfile())

    def __repr__(self) -> str:
        return f"Image({self._base!r}, steps={len(self._steps)})"


_IGNORED_KEYWORDS = frozenset(
    {
        "CMD",
        "ENTRYPOINT",
        "EXPOSE",
        "LABEL",
        "MAINTAINER",
        "USER",
        "VOLUME",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "ONBUILD",
        "SHELL",
    }
)
_DOCKERFILE_KEYWORDS = _IGNORED_KEYWORDS | {"FROM", "RUN", "ENV", "ARG", "WORKDIR"}


_COPY_KEYWORD = "ARCHIL_COPY"


def _render(step: str) -> str:
    if step.startswith(_COPY_KEYWORD + " "):
        digest, _, remote = step[len(_COPY_KEYWORD) + 1 :].partition(" ")
        return f"COPY --from=local:{digest} . {remote}"
    return step


def _remote_path(value: object, where: str) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or any(c in value for c in "\n\x00")
        or ".." in PurePosixPath(value).parts
        or value.rstrip("/") in ("", "/mnt/archil")
        or value.startswith("/mnt/archil/")
    ):
        raise ValueError(
            f"{where}: remote_path must be an absolute path in the image outside /mnt/archil, "
            f"got {value!r}"
        )
    return str(PurePosixPath(value))


def _walk(root: Path, ignore: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ignore)
        for name in sorted(filenames):
            if name in ignore:
                continue
            path = Path(dirpath) / name
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path
    return files


def _tree(files: dict[str, Path], remote: str) -> LocalTree:
    digest = hashlib.sha256()
    digest.update(remote.encode() + b"\0")
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(files[rel].read_bytes()).digest())
    return LocalTree(
        digest=digest.hexdigest()[:32],
        remote=remote,
        files=tuple((rel, str(files[rel])) for rel in sorted(files)),
    )


def _summary(command: str, limit: int = 100) -> str:
    text = " ".join(command.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _assignments(rest: str, keyword: str) -> list[tuple[str, str]]:
    """``NAME=value`` pairs of an ``ENV`` (also the legacy ``ENV NAME value``) or ``ARG`` line."""
    try:
        words = shlex.split(rest.replace("\\\n", " "))
    except ValueError:
        raise ValueError(f"dockerfile: cannot parse {keyword} {rest!r}") from None
    if keyword == "ENV" and len(words) >= 2 and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    pairs: list[tuple[str, str]] = []
    for word in words:
        name, sep, value = word.partition("=")
        if not _ENV_RE.match(name):
            raise ValueError(f"dockerfile: {keyword} {name!r} is not a valid variable name")
        if sep or keyword == "ENV":
            pairs.append((name, value))
    return pairs


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
        keyword = full.split(None, 1)[0].upper()
        if keyword in ("COPY", "ADD"):
            raise ValueError(
                f"dockerfile: {keyword} is not supported: the steps run in a sandbox that has "
                "no build context; put the files on the app's disk instead"
            )
        if keyword not in _DOCKERFILE_KEYWORDS:
            raise ValueError(f"dockerfile: unknown instruction {keyword!r}")
        if keyword in _IGNORED_KEYWORDS:
            continue
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
