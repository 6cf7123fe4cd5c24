"""OCI image references, and which of them the local control plane can run (no I/O).

:func:`parse_reference` reads Docker's shorthand as the live API does: the registry
defaults to ``docker.io``, an official image gets ``library/`` (``python`` is
``docker.io/library/python``), ``index.docker.io`` is ``docker.io``, the tag defaults to
``latest`` unless a digest (``@sha256:<64 hex>``) pins the image. Registry hosts may carry
a port (``localhost:5000/app``) and are case-insensitive (kept lower case); repository
paths must be lower case. Malformed input raises :class:`ValueError` whose message starts
with ``source: `` (the request field it came from).

:func:`local_base` says how the local control plane, which pulls nothing, runs a
reference: ``python:X.Y...`` becomes a Python X.Y environment built from an interpreter
of this machine, Debian, Ubuntu, Node and buildpack-deps images run on this machine's own
userland, anything else gets a sentence saying why it is not available.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_REGISTRY",
    "MAX_REFERENCE_LENGTH",
    "ImageRef",
    "LocalBase",
    "local_base",
    "parse_reference",
]

DEFAULT_REGISTRY = "docker.io"
"""The registry of a reference that names none."""

MAX_REFERENCE_LENGTH = 512
"""The longest reference accepted, in characters."""

_OFFICIAL_PREFIXES = (
    "docker.io/library/",
    "mirror.gcr.io/library/",
    "public.ecr.aws/docker/library/",
)
_HOST_IMAGES = frozenset({"debian", "ubuntu", "node", "buildpack-deps"})
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]{1,5})?$"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_PY_VERSION_TAG_RE = re.compile(
    r"^(?P<major>[0-9]+)(?:\.(?P<minor>[0-9]+))?(?:\.[0-9]+)?(?:(?:a|b|rc)[0-9]*)?"
    r"(?:-(?P<variant>.+))?$"
)
_PY_WORD_TAG_RE = re.compile(
    r"^(?:latest|slim|alpine[0-9.]*|bookworm|bullseye|buster|trixie)(?:-[a-z0-9.]+)*$"
)
_WINDOWS_VARIANTS = ("windowsservercore", "nanoserver")


@dataclass(frozen=True)
class ImageRef:
    """A parsed OCI reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    """The registry host, with its port if any (``docker.io``, ``localhost:5000``)."""
    repository: str
    """The path in the registry (``library/python``, ``acme/app``)."""
    tag: str | None
    """The tag; ``None`` only when a digest pins the image and no tag was given."""
    digest: str | None = None
    """``sha256:<64 hex>`` when the reference pins one."""

    @property
    def name(self) -> str:
        """``registry/repository`` (``docker.io/library/python``)."""
        return f"{self.registry}/{self.repository}"

    @property
    def normalized(self) -> str:
        """The full reference (``docker.io/library/python:3.11-slim``)."""
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def short(self) -> str:
        """The reference as Docker shows it (``python:3.11-slim``, ``ghcr.io/acme/app:1``)."""
        text = self.name
        if self.registry == DEFAULT_REGISTRY:
            text = self.repository
            if text.startswith("library/") and text.count("/") == 1:
                text = text[len("library/") :]
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def official_name(self) -> str | None:
        """The name of a Docker official image (``python``), whatever mirror serves it."""
        for prefix in _OFFICIAL_PREFIXES:
            if self.name.startswith(prefix):
                rest = self.name[len(prefix) :]
                if "/" not in rest:
                    return rest
        return None


@dataclass(frozen=True)
class LocalBase:
    """How the local control plane runs an image.

    ``kind="python"``: a Python environment made from an interpreter of this machine;
    ``python_version`` is ``"X.Y"``, or a bare major version (``"3"``) for tags that name
    none (``python:3``, ``python:latest``, ``python:slim``), meaning the newest local 3.x.
    ``kind="host"``: this machine's userland as it is (``python_version`` is ``None``).
    """

    kind: Literal["python", "host"]
    python_version: str | None = None


def _fail(message: str) -> ValueError:
    return ValueError(f"source: {message}")


def _split_digest(text: str) -> tuple[str, str | None]:
    # The text after '@' is echoed only when it looks like a digest: a reference written
    # as user:password@host/... must not have its password repeated in an error.
    if "@" not in text:
        return text, None
    rest, _, digest = text.rpartition("@")
    if not digest.startswith("sha256:") or not rest or "@" in rest:
        raise _fail(
            "'@' must be followed by a digest (name@sha256:<64 hex>); registry credentials "
            "do not belong in a reference"
        )
    if not _DIGEST_RE.match(digest):
        raise _fail(
            f"{digest!r} is not a valid digest: the local control plane accepts "
            "sha256: followed by 64 lower-case hex digits"
        )
    return rest, digest


def _split_tag(text: str) -> tuple[str, str | None]:
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon <= slash:
        return text, None
    name, tag = text[:colon], text[colon + 1 :]
    if not tag:
        raise _fail(f"{text!r} has an empty tag after ':'")
    if not _TAG_RE.match(tag):
        raise _fail(
            f"tag {tag!r} is not valid (letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-', at most 128 characters)"
        )
    return name, tag


def _split_registry(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN_RE.match(first):
            raise _fail(f"registry {first!r} is not a valid host[:port]")
        registry = first.lower()
        if registry == "index.docker.io":
            registry = DEFAULT_REGISTRY
        return registry, rest
    return DEFAULT_REGISTRY, name


def _check_repository(text: str, repository: str) -> None:
    if not repository:
        raise _fail(f"{text!r} names no repository")
    for component in repository.split("/"):
        if not component:
            raise _fail(f"{text!r} has an empty path component")
        if component.lower() == component and _COMPONENT_RE.match(component):
            continue
        if _COMPONENT_RE.match(component.lower()):
            raise _fail(f"repository names must be lower case ({repository!r})")
        raise _fail(
            f"{component!r} is not a valid repository name component (lower-case letters and "
            "digits, separated by '.', '_', '__' or '-')"
        )


def parse_reference(text: str) -> ImageRef:
    """Parse an OCI reference in Docker's shorthand; ``ValueError("source: ...")`` if malformed."""
    if not isinstance(text, str):
        raise _fail("must be a string")
    if not text:
        raise _fail("must not be empty")
    if len(text) > MAX_REFERENCE_LENGTH:
        raise _fail(f"is {len(text)} characters long, over the limit of {MAX_REFERENCE_LENGTH}")
    if any(ch.isspace() for ch in text):
        raise _fail(f"{text!r} contains whitespace")
    if "://" in text:
        raise _fail("has a URL scheme; write the reference alone (python:3.11-slim)")
    rest, digest = _split_digest(text)
    name, tag = _split_tag(rest)
    if not name:
        raise _fail(f"{text!r} names no image")
    registry, repository = _split_registry(name)
    _check_repository(text, repository)
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry=registry, repository=repository, tag=tag, digest=digest)


def _unavailable(ref: ImageRef) -> str:
    return (
        f"{ref.short} is not available to the local control plane, which runs python:X.Y and "
        "Debian/Ubuntu/Node images on this machine's own userland"
    )


def _python_base(ref: ImageRef) -> LocalBase | str:
    tag = ref.tag
    if tag is None:
        return (
            f"{ref.short} names no Python version (a digest alone); the local control plane "
            "needs a tag such as python:3.11-slim"
        )
    match = _PY_VERSION_TAG_RE.match(tag)
    if match is None:
        if _PY_WORD_TAG_RE.match(tag):
            return LocalBase(kind="python", python_version="3")
        return (
            f"{ref.short}: the local control plane cannot tell which Python the tag {tag!r} "
            "names; use python:X.Y (for example python:3.11-slim)"
        )
    variant = match.group("variant") or ""
    if variant.startswith(_WINDOWS_VARIANTS):
        return f"{ref.short} is a Windows image; the local control plane runs Linux images"
    major, minor = int(match.group("major")), match.group("minor")
    if major < 3:
        return f"{ref.short}: the local control plane runs Python 3 images only"
    version = f"{major}.{int(minor)}" if minor is not None else str(major)
    return LocalBase(kind="python", python_version=version)


def local_base(ref: ImageRef) -> LocalBase | str:
    """How the local control plane runs ``ref``, or a sentence saying why it cannot."""
    official = ref.official_name
    if official == "python":
        return _python_base(ref)
    if official in _HOST_IMAGES:
        return LocalBase(kind="host")
    return _unavailable(ref)
