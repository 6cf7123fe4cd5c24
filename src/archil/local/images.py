"""Build container images for the local control plane from Dockerfile text.

There is no image filesystem on this machine: an image is a cached *environment* built
on the host, keyed by the content of its Dockerfile, in ``<cache_dir>/<image_id>/``:

- ``manifest.json``: status (``building``, ``ready``, ``failed``), failure reason, and the
  environment a container gets (Python, ``PATH`` prefix, ``ENV``, ``WORKDIR``); written
  atomically, so it survives a restart;
- ``build.log``: the build output, one line a line;
- ``venv/``: the image's Python virtual environment;
- ``fs/``: scratch directory where ``RUN`` commands run when no usable ``WORKDIR`` is set.

How each instruction is honoured:

- ``FROM python:X[.Y][-variant]`` picks a local Python X.Y (this interpreter if it
  matches, else ``pythonX.Y`` on ``PATH``, in ``/usr/bin``, ``/usr/local/bin``, pyenv or
  uv) and creates a venv with it; a missing version fails the build with
  "Python X.Y is not installed on this machine". ``FROM debian``/``ubuntu`` (and any other
  base) uses the host's userland: the venv is made from the host's ``python3`` with its
  system packages visible.
- Every venv gets ``cloudpickle`` at the version this process runs, copied from this
  process's installation (package and metadata), so it is importable with no network and
  ``pip install cloudpickle==<that version>`` is already satisfied.
- ``RUN pip install ...`` (also ``pip3``, ``python -m pip``, ``sudo pip``) runs with the
  venv's pip. pip itself is copied into the venv from the base interpreter's installation
  the first time a step needs it (``ensurepip`` when the base has no pip).
- ``RUN apt-get install A B`` installs nothing: the packages are checked against the host
  (``dpkg-query``, or a command of that name on ``PATH``) and the build fails listing the
  missing ones. ``apt-get update``/``clean`` and ``rm -rf /var/lib/apt/lists/*`` are
  skipped; the other commands of such a ``RUN`` line still run.
- Other ``RUN`` lines run with ``/bin/sh -c`` (or the ``SHELL``), the venv first on
  ``PATH``, ``ENV``/``ARG`` values in the environment and the ``WORKDIR`` as the current
  directory. An absolute ``WORKDIR`` is created on the host when possible, else under
  ``fs/``. Background processes a step leaves behind are killed when it ends.
- ``ENV``, ``ARG``, ``WORKDIR`` and ``SHELL`` are recorded; ``COPY``/``ADD`` fail ("not
  supported by the local runtime"); ``CMD``, ``ENTRYPOINT``, ``EXPOSE``, ``LABEL``,
  ``USER``, ``VOLUME`` and the like are noted in the log and ignored.

Concurrent :meth:`ImageBuilder.ensure` calls for one image build it once; across
processes sharing the cache directory, a lock file serialises the builds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from archil.local import _proc

__all__ = [
    "DEFAULT_PATH",
    "ImageBuilder",
    "ImageEnv",
    "ImageStatus",
    "image_id_for",
    "normalize_dockerfile",
]

logger = logging.getLogger("archil")

ImageStatus = Literal["building", "ready", "failed"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` of a container or build step, after the image's own directories."""

_ID_RE = re.compile(r"^img-[0-9a-f]{16}$")
_INSTR_RE = re.compile(r"^(\S+)(?:\s+(.*))?$", re.S)
_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PASSTHROUGH_ENV = (
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "all_proxy",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)
_IGNORED = frozenset(
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
    }
)
_KNOWN = _IGNORED | {"FROM", "RUN", "ENV", "ARG", "WORKDIR", "SHELL", "COPY", "ADD"}
_APT_TOOLS = frozenset({"apt-get", "apt", "aptitude"})
_APT_OPTS_WITH_VALUE = frozenset(
    {"-o", "-c", "-t", "--option", "--config-file", "--target-release"}
)
_APT_DIRS = ("/var/lib/apt", "/var/cache/apt", "/var/log/apt", "/var/cache/debconf")
_BINARY_HINTS: dict[str, tuple[str, ...]] = {
    "build-essential": ("gcc", "g++", "make"),
    "git-core": ("git",),
    "openssh-client": ("ssh",),
    "ca-certificates": (),
    "procps": ("ps",),
    "iproute2": ("ip",),
    "iputils-ping": ("ping",),
    "dnsutils": ("dig",),
    "netcat-openbsd": ("nc",),
    "netcat": ("nc",),
    "xz-utils": ("xz",),
    "bzip2": ("bzip2",),
    "default-jdk": ("java", "javac"),
    "default-jre": ("java",),
    "ffmpeg": ("ffmpeg",),
    "nodejs": ("node",),
    "vim": ("vim",),
    "less": ("less",),
}
_PIP_WORD_RE = re.compile(r"(?:^|[\s;&|(`/])(?:pip[0-9.]*|python[0-9.]*\s+-m\s+pip)(?:\s|$)")
_APT_SEGMENT_RE = re.compile(
    r"^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:(?:sudo|env)(?:\s+-\S+)*\s+)?"
    r"(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:\S*/)?(apt-get|apt|aptitude)(?:\s|$)"
)
_APT_ANYWHERE_RE = re.compile(
    r"(?:^|[\s;&|(`/])(?:apt-get|aptitude|apt\s+(?:install|upgrade|full-upgrade|dist-upgrade|remove|purge)"
    r"|dpkg\s+(?:-i|--install))(?:\s|$)"
)
_FAIL_TAIL = 20
_CURRENT = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass
class ImageEnv:
    """What a container needs to run in an image."""

    python: str | None
    """The image's Python (the venv's interpreter), or None when the image has none."""
    path_prefix: list[str]
    """Directories to put first on ``PATH`` (the venv's ``bin``)."""
    env: dict[str, str]
    """Variables set by ``ENV``."""
    workdir: str | None
    """The working directory set by ``WORKDIR`` (as a host path), or None."""
    root: Path
    """The image's directory in the cache."""
    virtual_env: str | None = None
    """The venv directory (for ``VIRTUAL_ENV``), or None."""
    python_version: str | None = None
    """The image's Python ``major.minor``, or None."""
    shell: list[str] = field(default_factory=lambda: ["/bin/sh", "-c"])
    """The ``SHELL`` of the image."""


class BuildError(Exception):
    """A build step failed; the message is the image's failure reason."""


# ---------------------------------------------------------------------------
# Dockerfile text
# ---------------------------------------------------------------------------


def _logical_lines(text: str) -> list[tuple[str, str]]:
    """Instructions ``(KEYWORD, arguments)``: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    buf: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        buf = stripped if buf is None else buf + line
        if buf.endswith("\\"):
            buf = buf[:-1]
            continue
        out.append(_split_instruction(buf))
        buf = None
    if buf is not None and buf.strip():
        out.append(_split_instruction(buf))
    return out


def _split_instruction(line: str) -> tuple[str, str]:
    m = _INSTR_RE.match(line.strip())
    if m is None:
        return ("", "")
    return (m.group(1).upper(), (m.group(2) or "").strip())


def normalize_dockerfile(dockerfile: str) -> str:
    """The canonical text of a Dockerfile: one instruction a line, keyword upper-case.

    Comments, blank lines, line continuations and the spacing around the keyword do not
    change the result, so they do not change the image id.
    """
    return "\n".join(f"{kw} {args}".rstrip() for kw, args in _logical_lines(dockerfile))


def image_id_for(dockerfile: str) -> str:
    """``"img-"`` + the first 16 hex digits of the SHA-256 of the normalized Dockerfile."""
    digest = hashlib.sha256(normalize_dockerfile(dockerfile).encode("utf-8")).hexdigest()
    return "img-" + digest[:16]


def _expand_var(s: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    """Expand the variable reference at ``s[i] == "$"``; return (text, next index)."""
    if i + 1 < len(s) and s[i + 1] == "{":
        end = s.find("}", i + 2)
        if end == -1:
            return s[i:], len(s)
        body = s[i + 2 : end]
        for op in (":-", ":+"):
            if op in body:
                name, word = body.split(op, 1)
                value = env.get(name, "")
                if op == ":-":
                    return (value if value else _expand(word, env)), end + 1
                return (_expand(word, env) if value else ""), end + 1
        return env.get(body, ""), end + 1
    m = _VAR_RE.match(s, i + 1)
    if m is None:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()


def _expand(s: str, env: dict[str, str]) -> str:
    """Expand ``$VAR``/``${VAR}``/``${VAR:-x}``/``${VAR:+x}`` (no quote processing)."""
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] == "$":
            out.append("$")
            i += 2
        elif c == "$":
            text, i = _expand_var(s, i, env)
            out.append(text)
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _words(s: str, env: dict[str, str]) -> list[str]:
    """Split ``s`` into words like the Dockerfile parser: quotes, ``\\`` escapes, ``$VAR``."""
    words: list[str] = []
    cur: list[str] = []
    have = False
    i = 0
    quote: str | None = None
    while i < len(s):
        c = s[i]
        if quote == "'":
            if c == "'":
                quote = None
            else:
                cur.append(c)
            i += 1
        elif quote == '"':
            if c == '"':
                quote = None
                i += 1
            elif c == "\\" and i + 1 < len(s) and s[i + 1] in '"\\$':
                cur.append(s[i + 1])
                i += 2
            elif c == "$":
                text, i = _expand_var(s, i, env)
                cur.append(text)
            else:
                cur.append(c)
                i += 1
        elif c in "'\"":
            quote = c
            have = True
            i += 1
        elif c == "\\" and i + 1 < len(s):
            cur.append(s[i + 1])
            have = True
            i += 2
        elif c == "$":
            text, i = _expand_var(s, i, env)
            cur.append(text)
            have = True
        elif c.isspace():
            if have or cur:
                words.append("".join(cur))
            cur = []
            have = False
            i += 1
        else:
            cur.append(c)
            have = True
            i += 1
    if quote is not None:
        raise BuildError(f"unterminated quote in {s!r}")
    if have or cur:
        words.append("".join(cur))
    return words


def _split_commands(cmd: str) -> list[str]:
    """Split a shell command line on ``&&``, ``||``, ``;`` and newlines, outside quotes."""
    parts: list[str] = []
    cur: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(cmd):
        c = cmd[i]
        if quote:
            cur.append(c)
            if c == "\\" and quote == '"' and i + 1 < len(cmd):
                cur.append(cmd[i + 1])
                i += 2
                continue
            if c == quote:
                quote = None
            i += 1
            continue
        if c in "'\"":
            quote = c
            cur.append(c)
            i += 1
        elif c == "\\" and i + 1 < len(cmd):
            cur.append(cmd[i : i + 2])
            i += 2
        elif cmd.startswith(("&&", "||"), i):
            parts.append("".join(cur))
            cur = []
            i += 2
        elif c in ";\n":
            parts.append("".join(cur))
            cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _command_words(segment: str) -> list[str] | None:
    """The words of a simple command, without leading ``VAR=x`` and ``sudo``; None if not simple."""
    if any(ch in segment for ch in "|<>`$()&{}"):
        return None
    try:
        words = shlex.split(segment)
    except ValueError:
        return None
    while words and (
        re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in ("sudo", "env")
    ):
        words.pop(0)
    while words and words[0].startswith("-"):
        words.pop(0)
    return words


def _apt_words(segment: str, scope: dict[str, str]) -> list[str]:
    """The words of an ``apt-get`` segment from the tool on, variables expanded."""
    text = re.split(r"[|<>]", _expand(segment, scope), maxsplit=1)[0]
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    for i, w in enumerate(words):
        if os.path.basename(w) in _APT_TOOLS:
            return [os.path.basename(w), *words[i + 1 :]]
    return words


def _apt_packages(words: list[str]) -> tuple[str, list[str]]:
    """(subcommand, packages) of an ``apt-get`` command line (``words[0]`` is the tool)."""
    sub = ""
    packages: list[str] = []
    skip = False
    for w in words[1:]:
        if skip:
            skip = False
            continue
        if w in _APT_OPTS_WITH_VALUE:
            skip = True
            continue
        if w.startswith("-"):
            continue
        if not sub:
            sub = w
        else:
            packages.append(w)
    return sub, packages


def _is_apt_cleanup(words: list[str]) -> bool:
    if not words or words[0] != "rm":
        return False
    paths = [w for w in words[1:] if not w.startswith("-")]
    return bool(paths) and all(p.startswith(_APT_DIRS) for p in paths)


def _pip_argv(segment: str) -> list[str] | None:
    """The pip arguments when ``segment`` is a single pip command, else None."""
    words = _command_words(segment)
    if not words:
        return None
    exe = os.path.basename(words[0])
    if re.fullmatch(r"pip[0-9.]*", exe):
        return words[1:]
    if re.fullmatch(r"python[0-9.]*", exe) and words[1:3] == ["-m", "pip"]:
        return words[3:]
    return None


# ---------------------------------------------------------------------------
# Host discovery
# ---------------------------------------------------------------------------


@dataclass
class _Python:
    executable: str
    version: str
    pip_dir: str | None = None
    pip_version: str | None = None


_python_cache: dict[str, _Python | None] = {}
_python_lock = threading.Lock()
_PROBE = (
    "import sys, json, os\n"
    "info = {'version': '%d.%d' % sys.version_info[:2], 'executable': sys.executable}\n"
    "try:\n"
    "    import importlib.util, importlib.metadata\n"
    "    spec = importlib.util.find_spec('pip')\n"
    "    if spec and spec.origin:\n"
    "        info['pip_dir'] = os.path.dirname(spec.origin)\n"
    "        info['pip_version'] = importlib.metadata.version('pip')\n"
    "except Exception:\n"
    "    pass\n"
    "print(json.dumps(info))\n"
)


def _probe_python(exe: str) -> _Python | None:
    """Run ``exe`` once to learn its version and pip; None when it does not work."""
    with _python_lock:
        if exe in _python_cache:
            return _python_cache[exe]
    result: _Python | None = None
    if os.path.realpath(exe) == os.path.realpath(sys.executable):
        pip_dir: str | None = None
        pip_version: str | None = None
        spec = importlib.util.find_spec("pip")
        if spec is not None and spec.origin:
            pip_dir = os.path.dirname(spec.origin)
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                pip_version = importlib.metadata.version("pip")
        result = _Python(sys.executable, _CURRENT, pip_dir, pip_version)
    else:
        try:
            proc = subprocess.run(
                [exe, "-I", "-c", _PROBE],
                capture_output=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if proc.returncode == 0:
                info = json.loads(proc.stdout.decode().strip().splitlines()[-1])
                result = _Python(
                    info["executable"] or exe,
                    info["version"],
                    info.get("pip_dir"),
                    info.get("pip_version"),
                )
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
            result = None
    with _python_lock:
        _python_cache[exe] = result
    return result


def _version_key(path: Path) -> tuple[int, ...]:
    nums = re.findall(r"\d+", path.name)
    return tuple(int(n) for n in nums)


def _python_candidates(name: str) -> Iterator[str]:
    found = shutil.which(name)
    if found:
        yield found
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        yield os.path.join(d, name)
    home = Path.home()
    roots = [os.environ.get("PYENV_ROOT", ""), str(home / ".pyenv")]
    for root in dict.fromkeys(r for r in roots if r):
        versions = Path(root) / "versions"
        if versions.is_dir():
            for v in sorted(versions.iterdir(), key=_version_key, reverse=True):
                yield str(v / "bin" / name)
    uv = Path(os.environ.get("UV_PYTHON_INSTALL_DIR", home / ".local/share/uv/python"))
    if uv.is_dir():
        for v in sorted(uv.iterdir(), key=_version_key, reverse=True):
            yield str(v / "bin" / name)


def find_python(version: str | None) -> _Python | None:
    """A local Python matching ``version`` (``"3"``, ``"3.11"`` or None for this one)."""
    if version is None or version in (_CURRENT, _CURRENT.split(".")[0]):
        return _probe_python(sys.executable)
    name = f"python{version}"
    seen: set[str] = set()
    for cand in _python_candidates(name):
        if cand in seen or not os.access(cand, os.X_OK):
            continue
        seen.add(cand)
        info = _probe_python(cand)
        if info is not None and (info.version == version or info.version.split(".")[0] == version):
            return info
    return None


def _host_python3() -> _Python | None:
    for cand in (shutil.which("python3"), "/usr/bin/python3", "/usr/local/bin/python3"):
        if cand and os.access(cand, os.X_OK):
            info = _probe_python(cand)
            if info is not None and info.version.startswith("3."):
                return info
    info = _probe_python(sys.executable)
    return info if info is not None and info.version.startswith("3.") else None


def _package_source(module: str) -> tuple[Path, Path | None, str] | None:
    """(package dir, dist-info dir or None, version) of ``module`` in this interpreter."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None
    pkg = Path(spec.origin).parent
    try:
        version = importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return None
    dist: Path | None = None
    for cand in pkg.parent.glob("*.dist-info"):
        name, _, ver = cand.name[: -len(".dist-info")].rpartition("-")
        if name.lower().replace("_", "-") == module and ver == version:
            dist = cand
            break
    return pkg, dist, version


def _link_or_copy(src: str, dst: str) -> object:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(
        src,
        dst,
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
        copy_function=_link_or_copy,
    )


def _missing_apt_packages(packages: list[str]) -> list[str]:
    """The packages of ``packages`` not installed on this machine."""
    names = [re.split(r"[=:]", p, maxsplit=1)[0] for p in packages]
    installed: set[str] = set()
    dpkg = shutil.which("dpkg-query")
    if dpkg and names:
        proc = subprocess.run(
            [dpkg, "-W", "-f=${Package}\t${Status}\n", *names],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        for line in proc.stdout.decode(errors="replace").splitlines():
            pkg, _, status = line.partition("\t")
            if status.strip().endswith(" installed"):
                installed.add(pkg.split(":")[0])
    missing: list[str] = []
    for original, name in zip(packages, names, strict=True):
        if name in installed:
            continue
        hints = _BINARY_HINTS.get(name)
        if hints is not None and hints and all(shutil.which(h) for h in hints):
            continue
        if hints is None and shutil.which(name):
            continue
        missing.append(original)
    return missing


# ---------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------


@dataclass
class _Build:
    image_id: str
    dockerfile: str
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    procs: dict[subprocess.Popen[bytes], str] = field(default_factory=dict)


@dataclass
class _Ctx:
    """The state of one build."""

    image_id: str
    root: Path
    log_fd: int
    build: _Build
    deadline: float | None
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    shell: list[str] = field(default_factory=lambda: ["/bin/sh", "-c"])
    workdir: str | None = None
    cwd: Path | None = None
    base: str | None = None
    python: _Python | None = None
    venv: Path | None = None
    pip_ready: bool = False
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_FAIL_TAIL))
    cloudpickle: str | None = None


class ImageBuilder:
    """Builds images from Dockerfile text into ``cache_dir`` and tracks their status.

    ``log`` receives every line of build output as it is produced. ``build_timeout`` (in
    seconds, None for none) bounds one build.
    """

    def __init__(
        self,
        cache_dir: Path,
        log: Callable[[str], None] | None = None,
        *,
        build_timeout: float | None = 3600.0,
    ) -> None:
        self._dir = Path(cache_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._log_cb = log
        self._timeout = build_timeout
        self._lock = threading.Lock()
        self._builds: dict[str, _Build] = {}
        self._closed = False
        self.build_count = 0
        """How many builds this builder has run (a build that found the image already
        built by another process does not count)."""
        self._recover()

    # -- ids and paths ----------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        """The directory holding the images."""
        return self._dir

    def image_id_for(self, dockerfile: str) -> str:
        """The image id of ``dockerfile`` (see :func:`image_id_for`)."""
        return image_id_for(dockerfile)

    def _root(self, image_id: str) -> Path:
        return self._dir / image_id

    # -- manifest -----------------------------------------------------------------

    def _read_manifest(self, image_id: str) -> dict[str, Any] | None:
        try:
            with open(self._root(image_id) / "manifest.json", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_manifest(self, image_id: str, data: dict[str, Any]) -> None:
        root = self._root(image_id)
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".manifest.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / "manifest.json")

    def _lock_free(self, image_id: str) -> bool:
        """True when no process holds the build lock of ``image_id``."""
        try:
            fd = os.open(
                self._root(image_id) / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            return e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
        finally:
            os.close(fd)
        return True

    def _mark_interrupted(self, image_id: str, manifest: dict[str, Any]) -> None:
        manifest = dict(manifest)
        manifest["status"] = "failed"
        manifest["failure_reason"] = (
            "the build was interrupted (the local control plane stopped); "
            "requesting the image again rebuilds it"
        )
        manifest["finished_at"] = time.time()
        self._write_manifest(image_id, manifest)

    def _recover(self) -> None:
        """Mark builds left ``building`` by a previous process as failed."""
        try:
            entries = list(self._dir.iterdir())
        except OSError:
            return
        for entry in entries:
            if not _ID_RE.match(entry.name):
                continue
            m = self._read_manifest(entry.name)
            if m and m.get("status") == "building" and self._lock_free(entry.name):
                self._mark_interrupted(entry.name, m)

    # -- public API -----------------------------------------------------------------

    def ensure(self, dockerfile: str, *, retry_failed: bool = True) -> str:
        """Start building ``dockerfile`` unless it is built or being built; return its id.

        A failed image is built again when ``retry_failed`` is true (the cause may have
        been fixed on the host since).
        """
        if not isinstance(dockerfile, str):
            raise TypeError("dockerfile must be str")
        image_id = image_id_for(dockerfile)
        with self._lock:
            if self._closed:
                raise RuntimeError("the image builder is closed")
            current = self._builds.get(image_id)
            if current is not None and not current.done.is_set():
                return image_id
            status, _ = self._disk_status(image_id)
            if status == "ready" and self._usable(image_id):
                return image_id
            if status == "building":
                return image_id
            if status == "failed" and not retry_failed:
                return image_id
            build = _Build(image_id, dockerfile)
            build.thread = threading.Thread(
                target=self._run_build, args=(build,), name=f"archil-build-{image_id}", daemon=True
            )
            self._builds[image_id] = build
            build.thread.start()
        return image_id

    def _usable(self, image_id: str) -> bool:
        m = self._read_manifest(image_id) or {}
        py = m.get("python")
        return not py or os.path.exists(py)

    def _disk_status(self, image_id: str) -> tuple[ImageStatus | None, str | None]:
        m = self._read_manifest(image_id)
        if m is None:
            return None, None
        status = m.get("status")
        if status == "building":
            if self._lock_free(image_id):
                current = self._read_manifest(image_id) or m
                if current.get("status") == "building":
                    self._mark_interrupted(image_id, current)
                    current = self._read_manifest(image_id) or current
                status = current.get("status")
                m = current
            else:
                return "building", None
        if status in ("ready", "failed"):
            reason = m.get("failure_reason")
            return status, (str(reason) if reason is not None else None)
        return None, None

    def status(self, image_id: str) -> tuple[ImageStatus | None, str | None]:
        """``(status, failure_reason)``; ``(None, None)`` for an unknown image."""
        if not isinstance(image_id, str) or not _ID_RE.match(image_id):
            return None, None
        with self._lock:
            build = self._builds.get(image_id)
            if build is not None and not build.done.is_set():
                return "building", None
        return self._disk_status(image_id)

    def wait(
        self, image_id: str, timeout: float | None = None
    ) -> tuple[ImageStatus | None, str | None]:
        """Block until the image is not ``building`` (or ``timeout`` runs out); return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                build = self._builds.get(image_id)
            if build is not None and not build.done.is_set():
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                build.done.wait(remaining)
            status = self.status(image_id)
            if status[0] != "building":
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status
            if build is None or build.done.is_set():
                time.sleep(
                    0.1 if deadline is None else min(0.1, max(0.0, deadline - time.monotonic()))
                )

    def build_log_lines(self, image_id: str) -> list[str]:
        """The build output so far (empty for an unknown image)."""
        if not isinstance(image_id, str) or not _ID_RE.match(image_id):
            return []
        try:
            with open(self._root(image_id) / "build.log", "rb") as f:
                data = f.read()
        except OSError:
            return []
        return data.decode("utf-8", errors="replace").splitlines()

    def environment(self, image_id: str) -> ImageEnv:
        """The environment of a ready image; ``LookupError`` if it is unknown or not ready."""
        status, _ = self.status(image_id)
        if status != "ready":
            raise LookupError(f"image {image_id} is not ready (status: {status})")
        m = self._read_manifest(image_id) or {}
        return ImageEnv(
            python=m.get("python"),
            path_prefix=list(m.get("path_prefix") or []),
            env={str(k): str(v) for k, v in (m.get("env") or {}).items()},
            workdir=m.get("workdir"),
            root=self._root(image_id),
            virtual_env=m.get("virtual_env"),
            python_version=m.get("python_version"),
            shell=list(m.get("shell") or ["/bin/sh", "-c"]),
        )

    def close(self, timeout: float = 10.0) -> None:
        """Stop running builds (their images are marked failed) and wait for their threads."""
        with self._lock:
            self._closed = True
            builds = list(self._builds.values())
        for b in builds:
            for p, marker in list(b.procs.items()):
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)
                _proc.kill_pids(
                    _proc.pids_with_env_marker("ARCHIL_IMAGE_BUILD", marker), signal.SIGKILL
                )
        deadline = time.monotonic() + timeout
        for b in builds:
            if b.thread is not None:
                b.thread.join(max(0.0, deadline - time.monotonic()))

    # -- building -------------------------------------------------------------------

    def _run_build(self, build: _Build) -> None:
        image_id = build.image_id
        root = self._root(image_id)
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            self._finish_failed(
                image_id, build.dockerfile, f"cannot create the image directory: {e}"
            )
            build.done.set()
            return
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            m = self._read_manifest(image_id)
            if m and m.get("status") == "ready" and self._usable(image_id):
                return
            with self._lock:
                self.build_count += 1
            self._build_locked(build, root)
        except Exception as e:
            logger.exception("image build %s crashed", image_id)
            self._finish_failed(image_id, build.dockerfile, f"the image build crashed: {e}")
        finally:
            os.close(lock_fd)
            build.done.set()

    def _finish_failed(self, image_id: str, dockerfile: str, reason: str) -> None:
        with contextlib.suppress(OSError):
            self._write_manifest(
                image_id,
                {
                    "image_id": image_id,
                    "status": "failed",
                    "failure_reason": reason,
                    "dockerfile": dockerfile,
                    "finished_at": time.time(),
                },
            )

    def _build_locked(self, build: _Build, root: Path) -> None:
        image_id = build.image_id
        started = time.time()
        self._write_manifest(
            image_id,
            {
                "image_id": image_id,
                "status": "building",
                "dockerfile": build.dockerfile,
                "created_at": started,
            },
        )
        for name in ("venv", "fs", "build.log"):
            p = root / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        (root / "fs").mkdir(exist_ok=True)
        log_fd = os.open(
            root / "build.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
        )
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        ctx = _Ctx(image_id=image_id, root=root, log_fd=log_fd, build=build, deadline=deadline)
        try:
            try:
                self._steps(ctx, build.dockerfile)
            except BuildError as e:
                reason = str(e)
                self._emit(ctx, f"ERROR: {reason.splitlines()[0] if reason else 'build failed'}")
                self._write_manifest(
                    image_id,
                    {
                        "image_id": image_id,
                        "status": "failed",
                        "failure_reason": reason,
                        "dockerfile": build.dockerfile,
                        "created_at": started,
                        "finished_at": time.time(),
                    },
                )
                return
            self._emit(ctx, f"Successfully built {image_id}")
            venv_bin = str(ctx.venv / "bin") if ctx.venv else None
            self._write_manifest(
                image_id,
                {
                    "image_id": image_id,
                    "status": "ready",
                    "failure_reason": None,
                    "dockerfile": build.dockerfile,
                    "base": ctx.base,
                    "python": str(ctx.venv / "bin" / "python") if ctx.venv else None,
                    "python_version": ctx.python.version if ctx.python else None,
                    "base_python": ctx.python.executable if ctx.python else None,
                    "virtual_env": str(ctx.venv) if ctx.venv else None,
                    "path_prefix": [venv_bin] if venv_bin else [],
                    "env": ctx.env,
                    "workdir": str(ctx.cwd) if ctx.workdir is not None and ctx.cwd else None,
                    "shell": ctx.shell,
                    "cloudpickle": ctx.cloudpickle,
                    "created_at": started,
                    "finished_at": time.time(),
                },
            )
        finally:
            os.close(log_fd)

    def _emit(self, ctx: _Ctx, text: str) -> None:
        """One line of build output: to ``build.log``, the failure tail and the callback."""
        for line in text.splitlines() or [""]:
            data = (line + "\n").encode("utf-8", errors="replace")
            with contextlib.suppress(OSError):
                os.write(ctx.log_fd, data)
            ctx.tail.append(line)
            if self._log_cb is not None:
                try:
                    self._log_cb(line)
                except Exception:
                    logger.debug("image build log callback failed", exc_info=True)

    def _steps(self, ctx: _Ctx, dockerfile: str) -> None:
        instructions = _logical_lines(dockerfile)
        if not instructions:
            raise BuildError("the Dockerfile is empty")
        total = len(instructions)
        seen_from = False
        for n, (kw, args) in enumerate(instructions, 1):
            text = f"{kw} {args}".strip()
            self._emit(ctx, f"Step {n}/{total} : {text}")
            ctx.tail.clear()
            if kw not in _KNOWN:
                raise BuildError(f"{_short(text)}: unknown instruction {kw}")
            if kw == "FROM":
                if seen_from:
                    raise BuildError(
                        f"{_short(text)}: multi-stage builds are not supported by the local runtime"
                    )
                seen_from = True
                self._from(ctx, args, text)
                continue
            if kw == "ARG":
                self._arg(ctx, args, text)
                continue
            if not seen_from:
                raise BuildError(f"{_short(text)}: the Dockerfile must start with FROM")
            if kw == "RUN":
                self._run_instruction(ctx, args, text)
            elif kw == "ENV":
                self._env(ctx, args, text)
            elif kw == "WORKDIR":
                self._workdir(ctx, args, text)
            elif kw == "SHELL":
                try:
                    shell = json.loads(args)
                except ValueError:
                    shell = None
                if not (
                    isinstance(shell, list) and shell and all(isinstance(s, str) for s in shell)
                ):
                    raise BuildError(f"{_short(text)}: SHELL needs a JSON array of strings")
                ctx.shell = shell
            elif kw in ("COPY", "ADD"):
                raise BuildError(
                    f"{_short(text)}: {kw} is not supported by the local runtime (there is no "
                    "build context); put the files on the disk, or fetch them in a RUN step"
                )
            else:
                self._emit(ctx, f" ---> {kw} is ignored by the local runtime")
        if not seen_from:
            raise BuildError("the Dockerfile has no FROM instruction")

    # -- instructions ---------------------------------------------------------------

    def _scope(self, ctx: _Ctx) -> dict[str, str]:
        scope = {"PATH": self._path(ctx), "HOME": str(Path.home())}
        scope.update(ctx.args)
        scope.update(ctx.env)
        return scope

    def _path(self, ctx: _Ctx) -> str:
        if "PATH" in ctx.env:
            return ctx.env["PATH"]
        parts = [str(ctx.venv / "bin")] if ctx.venv else []
        parts.append(DEFAULT_PATH)
        return ":".join(parts)

    def _from(self, ctx: _Ctx, args: str, text: str) -> None:
        words = [w for w in _words(args, dict(ctx.args)) if not w.startswith("--")]
        if not words:
            raise BuildError(f"{_short(text)}: FROM needs an image")
        ref = words[0]
        ctx.base = ref
        name, tag = _parse_ref(ref)
        if name == "scratch":
            raise BuildError(f"{_short(text)}: FROM scratch is not supported by the local runtime")
        if name == "python":
            version = _python_version_of_tag(tag)
            py = find_python(version)
            if py is None:
                raise BuildError(
                    f"Python {version} is not installed on this machine (needed by {_short(text)}); "
                    f"install it (for example with pyenv or uv), or use python:{_CURRENT}, "
                    "which this machine has"
                )
            self._emit(ctx, f" ---> Python {py.version} from {py.executable}")
            self._make_venv(ctx, py, system_site_packages=False, text=text)
        else:
            if name not in ("debian", "ubuntu"):
                self._emit(ctx, f" ---> {name} is not emulated; using this machine's userland")
            else:
                self._emit(ctx, " ---> using this machine's userland")
            py = _host_python3()
            if py is None:
                self._emit(ctx, " ---> this machine has no python3; the image has no Python")
                return
            self._emit(ctx, f" ---> Python {py.version} from {py.executable}")
            self._make_venv(ctx, py, system_site_packages=True, text=text)

    def _make_venv(self, ctx: _Ctx, py: _Python, *, system_site_packages: bool, text: str) -> None:
        venv = ctx.root / "venv"
        argv = [py.executable, "-m", "venv", "--without-pip"]
        if system_site_packages:
            argv.append("--system-site-packages")
        argv.append(str(venv))
        rc = self._exec(ctx, argv, env=self._base_env(ctx), cwd=ctx.root)
        if rc != 0:
            raise BuildError(
                self._failure(ctx, text, f"creating a virtual environment failed (exit code {rc})")
            )
        ctx.python = py
        ctx.venv = venv
        self._install_cloudpickle(ctx, text)

    def _site_packages(self, ctx: _Ctx) -> Path:
        assert ctx.venv is not None and ctx.python is not None
        return ctx.venv / "lib" / f"python{ctx.python.version}" / "site-packages"

    def _install_cloudpickle(self, ctx: _Ctx, text: str) -> None:
        src = _package_source("cloudpickle")
        if src is None:
            self._emit(ctx, " ---> cloudpickle is not installed here; not adding it to the image")
            return
        pkg, dist, version = src
        site = self._site_packages(ctx)
        try:
            site.mkdir(parents=True, exist_ok=True)
            _copy_tree(pkg, site / pkg.name)
            if dist is not None:
                _copy_tree(dist, site / dist.name)
                with contextlib.suppress(OSError):
                    (site / dist.name / "INSTALLER").unlink(missing_ok=True)
                    (site / dist.name / "INSTALLER").write_text("archil\n")
        except OSError as e:
            raise BuildError(f"{_short(text)}: cannot add cloudpickle to the image: {e}") from e
        ctx.cloudpickle = version
        self._emit(ctx, f" ---> cloudpickle {version} (copied from this machine)")

    def _ensure_pip(self, ctx: _Ctx, text: str) -> None:
        if ctx.pip_ready:
            return
        if ctx.venv is None or ctx.python is None:
            raise BuildError(f"{_short(text)}: pip needs Python, and this image has none")
        py = ctx.python
        site = self._site_packages(ctx)
        copied = False
        if py.pip_dir and os.path.isdir(py.pip_dir):
            pip_dir = Path(py.pip_dir)
            dist: Path | None = None
            for cand in pip_dir.parent.glob("pip-*.dist-info"):
                if py.pip_version and cand.name == f"pip-{py.pip_version}.dist-info":
                    dist = cand
            try:
                _copy_tree(pip_dir, site / "pip")
                if dist is not None:
                    _copy_tree(dist, site / dist.name)
                copied = True
                self._emit(
                    ctx,
                    f" ---> pip {py.pip_version or '(unknown version)'} copied from {py.executable}",
                )
            except OSError as e:
                self._emit(ctx, f" ---> copying pip failed ({e}); trying ensurepip")
        if copied:
            for name in ("pip", "pip3", f"pip{py.version}"):
                script = ctx.venv / "bin" / name
                script.write_text(
                    f"#!{ctx.venv / 'bin' / 'python'}\n"
                    "import sys\n"
                    "from pip._internal.cli.main import main\n"
                    "if __name__ == '__main__':\n"
                    "    sys.exit(main())\n"
                )
                script.chmod(0o755)
        else:
            rc = self._exec(
                ctx,
                [str(ctx.venv / "bin" / "python"), "-m", "ensurepip", "--default-pip"],
                env=self._run_env(ctx),
                cwd=ctx.root,
            )
            if rc != 0:
                raise BuildError(
                    self._failure(
                        ctx, text, f"pip is not available for Python {py.version} on this machine"
                    )
                )
        ctx.pip_ready = True

    def _arg(self, ctx: _Ctx, args: str, text: str) -> None:
        for word in _words(args, self._scope(ctx) if ctx.venv else dict(ctx.args)):
            name, eq, default = word.partition("=")
            if not _VAR_RE.fullmatch(name):
                raise BuildError(f"{_short(text)}: invalid ARG name {name!r}")
            if name not in ctx.args or eq:
                ctx.args[name] = default if eq else ctx.args.get(name, "")

    def _env(self, ctx: _Ctx, args: str, text: str) -> None:
        scope = self._scope(ctx)
        first = args.split(None, 1)[0] if args.split() else ""
        if not first:
            raise BuildError(f"{_short(text)}: ENV needs a value")
        if "=" not in first:
            parts = args.split(None, 1)
            value = " ".join(_words(parts[1], scope)) if len(parts) > 1 else ""
            pairs = [(parts[0], value)]
        else:
            pairs = []
            for word in _words(args, scope):
                name, eq, value = word.partition("=")
                if not eq:
                    raise BuildError(f"{_short(text)}: {word!r} is not NAME=value")
                pairs.append((name, value))
        for name, value in pairs:
            if not _VAR_RE.fullmatch(name):
                raise BuildError(f"{_short(text)}: invalid variable name {name!r}")
            ctx.env[name] = value

    def _workdir(self, ctx: _Ctx, args: str, text: str) -> None:
        words = _words(args, self._scope(ctx))
        if len(words) != 1 or not words[0]:
            raise BuildError(f"{_short(text)}: WORKDIR needs one path")
        path = words[0]
        if not path.startswith("/"):
            path = os.path.join(ctx.workdir or "/", path)
        path = os.path.normpath(path)
        ctx.workdir = path
        try:
            os.makedirs(path, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable", path)
            ctx.cwd = Path(path)
        except OSError:
            scratch = ctx.root / "fs" / path.lstrip("/")
            scratch.mkdir(parents=True, exist_ok=True)
            ctx.cwd = scratch
            self._emit(ctx, f" ---> {path} cannot be created here; using {scratch}")

    def _run_instruction(self, ctx: _Ctx, args: str, text: str) -> None:
        if args.startswith("<<"):
            raise BuildError(f"{_short(text)}: heredocs are not supported by the local runtime")
        env = self._run_env(ctx)
        cwd = ctx.cwd or (ctx.root / "fs")
        if args.startswith("["):
            try:
                argv = json.loads(args)
            except ValueError:
                argv = None
            if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
                if re.search(r"\bpip", " ".join(argv)):
                    self._ensure_pip(ctx, text)
                rc = self._exec(ctx, argv, env=env, cwd=cwd)
                if rc != 0:
                    raise BuildError(self._failure(ctx, text, f"exit code {rc}"))
                return
        segments = _split_commands(args)
        scope = self._scope(ctx)
        apt = [(s, _apt_words(s, scope)) for s in segments if _APT_SEGMENT_RE.match(s)]
        if apt:
            self._check_apt(ctx, apt, text)
            kept = [
                s
                for s in segments
                if not (_APT_SEGMENT_RE.match(s) or _is_apt_cleanup(_command_words(s) or []))
            ]
            if not kept:
                return
            args = " && ".join(kept)
            segments = kept
        if _APT_ANYWHERE_RE.search(args):
            raise BuildError(
                f"{_short(text)}: the local runtime does not install system packages; write "
                "`apt-get install <packages>` as a command of its own so it can be checked "
                "against this machine"
            )
        mkdirs = [_command_words(seg) for seg in segments]
        if segments and all(w and w[0] == "mkdir" for w in mkdirs):
            self._mkdirs(ctx, [w for words in mkdirs if words for w in words[1:]], cwd, text)
            return
        if len(segments) == 1:
            pip_args = _pip_argv(segments[0])
            if pip_args is not None:
                self._ensure_pip(ctx, text)
                assert ctx.venv is not None
                rc = self._exec(
                    ctx,
                    [str(ctx.venv / "bin" / "python"), "-m", "pip", *pip_args],
                    env=env,
                    cwd=cwd,
                )
                if rc != 0:
                    raise BuildError(self._failure(ctx, text, f"exit code {rc}"))
                return
        if ctx.venv is not None and _PIP_WORD_RE.search(args):
            self._ensure_pip(ctx, text)
        rc = self._exec(ctx, [*ctx.shell, args], env=env, cwd=cwd)
        if rc != 0:
            raise BuildError(self._failure(ctx, text, f"exit code {rc}"))

    def _mkdirs(self, ctx: _Ctx, args: list[str], cwd: Path, text: str) -> None:
        """``RUN mkdir [-p] DIR...``: a directory that cannot be made here goes under ``fs/``."""
        paths = [a for a in args if not a.startswith("-")]
        if not paths or any(a.startswith("-") and a not in ("-p", "--parents", "-v") for a in args):
            rc = self._exec(
                ctx, [*ctx.shell, text.split(None, 1)[1]], env=self._run_env(ctx), cwd=cwd
            )
            if rc != 0:
                raise BuildError(self._failure(ctx, text, f"exit code {rc}"))
            return
        for p in paths:
            target = Path(p) if p.startswith("/") else cwd / p
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                if not p.startswith("/"):
                    raise BuildError(f"{_short(text)} failed: {e}") from e
                scratch = ctx.root / "fs" / p.lstrip("/")
                scratch.mkdir(parents=True, exist_ok=True)
                self._emit(ctx, f" ---> {p} cannot be created here; made {scratch}")

    def _check_apt(self, ctx: _Ctx, apt: list[tuple[str, list[str]]], text: str) -> None:
        wanted: list[str] = []
        for _segment, words in apt:
            sub, packages = _apt_packages(words)
            if sub == "install":
                wanted.extend(p for p in packages if p not in wanted)
            elif sub:
                self._emit(
                    ctx,
                    f" ---> {words[0]} {sub}: skipped (the local runtime uses this machine's packages)",
                )
        if not wanted:
            return
        missing = _missing_apt_packages(wanted)
        present = [p for p in wanted if p not in missing]
        if present:
            self._emit(ctx, f" ---> already on this machine: {' '.join(present)}")
        if missing:
            raise BuildError(
                f"{_short(text)}: the local runtime does not install system packages, and these are "
                f"not installed on this machine: {', '.join(missing)} "
                f"(install them on the host, e.g. `sudo apt-get install {' '.join(missing)}`)"
            )

    # -- processes -----------------------------------------------------------------

    def _base_env(self, ctx: _Ctx) -> dict[str, str]:
        env = {
            "HOME": str(Path.home()),
            "LANG": "C.UTF-8",
            "PATH": DEFAULT_PATH,
            "PYTHONUNBUFFERED": "1",
            "DEBIAN_FRONTEND": "noninteractive",
            "ARCHIL_IMAGE_BUILD": ctx.image_id,
        }
        for name in _PASSTHROUGH_ENV:
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def _run_env(self, ctx: _Ctx) -> dict[str, str]:
        env = self._base_env(ctx)
        env.update(
            {
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_NO_INPUT": "1",
                "PIP_ROOT_USER_ACTION": "ignore",
                "PIP_NO_WARN_SCRIPT_LOCATION": "1",
            }
        )
        if ctx.venv is not None:
            env["VIRTUAL_ENV"] = str(ctx.venv)
        env.update(ctx.args)
        env.update(ctx.env)
        env["PATH"] = self._path(ctx)
        return env

    def _failure(self, ctx: _Ctx, text: str, what: str) -> str:
        tail = "\n".join(ctx.tail)
        reason = f"{_short(text)} failed: {what}"
        return f"{reason}\n{tail}" if tail else reason

    def _exec(self, ctx: _Ctx, argv: list[str], *, env: dict[str, str], cwd: Path) -> int:
        """Run one build command, streaming its output; return its exit code."""
        if self._closed:
            raise BuildError("the build was interrupted (the local control plane stopped)")
        marker = f"{ctx.image_id}-{uuid.uuid4().hex[:8]}"
        env = dict(env, ARCHIL_IMAGE_BUILD=marker)
        r, w = os.pipe()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=w,
                stderr=w,
                cwd=str(cwd),
                env=env,
                start_new_session=True,
                preexec_fn=_proc.make_preexec(pdeathsig=True),
            )
        except OSError as e:
            os.close(r)
            os.close(w)
            self._emit(ctx, f"cannot run {argv[0]}: {e}")
            return 127
        os.close(w)
        ctx.build.procs[proc] = marker
        reader = threading.Thread(
            target=_proc.pump,
            args=(r, lambda chunk: self._emit(ctx, chunk.rstrip("\n"))),
            name=f"archil-build-log-{ctx.image_id}",
            daemon=True,
        )
        reader.start()
        timed_out = False
        try:
            remaining = None if ctx.deadline is None else max(0.0, ctx.deadline - time.monotonic())
            try:
                rc = proc.wait(remaining)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        finally:
            ctx.build.procs.pop(proc, None)
            _proc.sweep(lambda: _proc.pids_with_env_marker("ARCHIL_IMAGE_BUILD", marker))
            reader.join(5.0)
        if timed_out:
            raise BuildError(
                self._failure(ctx, " ".join(argv), f"timed out after {self._timeout:g} s")
            )
        if self._closed:
            raise BuildError("the build was interrupted (the local control plane stopped)")
        return rc if rc >= 0 else 128 - rc


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_ref(ref: str) -> tuple[str, str | None]:
    """(repository name without registry/library prefix, tag) of an image reference."""
    ref = ref.split("@", 1)[0]
    name, tag = ref, None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    name = name.removeprefix("library/")
    return name.lower(), tag


def _python_version_of_tag(tag: str | None) -> str | None:
    if not tag:
        return None
    m = re.match(r"^(\d+)(?:\.(\d+))?", tag)
    if m is None:
        return None
    return m.group(1) if m.group(2) is None else f"{m.group(1)}.{m.group(2)}"
