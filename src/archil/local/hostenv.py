"""Facts about this machine that the image builder needs: its Pythons and its packages.

Interpreters are looked for by name (``pythonX.Y``) in ``/usr/local/bin``, pyenv's and
uv's installations, the installation this process runs on, ``/usr/bin``, ``/bin`` and the
directories of ``PATH`` (pyenv shims excepted), in that order, so an official-image-like
``/usr/local`` install wins and the system Python comes after the source-built ones.
Each candidate is run once (``-I``) to learn its version, installation prefix and pip;
what it reports is cached while the file is unchanged. A candidate that is a virtual
environment stands for its base interpreter: an image is never made from the server's
own venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BINARY_HINTS",
    "HostPython",
    "PipSource",
    "find_python",
    "host_python3",
    "missing_apt_packages",
    "newest_python",
    "package_name",
    "pip_source",
    "probe_python",
    "python_versions",
]

BINARY_HINTS: dict[str, tuple[str, ...]] = {
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
    "python3": ("python3",),
    "python3-pip": ("pip3",),
    "python-is-python3": ("python",),
    "postgresql-client": ("psql",),
    "default-mysql-client": ("mysql",),
    "sqlite3": ("sqlite3",),
    "unzip": ("unzip",),
    "zip": ("zip",),
    "wget": ("wget",),
    "curl": ("curl",),
    "jq": ("jq",),
}
"""Commands that show a Debian package is present when ``dpkg-query`` cannot tell.

A package not listed here is present when a command of its own name is; one listed with
no commands (``ca-certificates``) only when ``dpkg-query`` says it is installed.
"""

_PROBE = r"""
import json, os, platform, sys, sysconfig
info = {
    "version": "%d.%d" % sys.version_info[:2],
    "full_version": platform.python_version(),
    "executable": sys.executable,
    "prefix": sys.prefix,
    "base_prefix": getattr(sys, "base_prefix", sys.prefix),
    "base_exec_prefix": getattr(sys, "base_exec_prefix", sys.exec_prefix),
    "stdlib": sysconfig.get_paths()["stdlib"],
}
try:
    import pip
    info["pip_dir"] = os.path.dirname(os.path.abspath(pip.__file__))
    info["pip_version"] = pip.__version__
except Exception:
    pass
print(json.dumps(info))
"""
_VERSION_NAME_RE = re.compile(r"^python([0-9]+)\.([0-9]+)$")
_PROBE_TIMEOUT = 30.0
_cache: dict[tuple[str, int, int, int], HostPython | None] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class HostPython:
    """A base (non-venv) Python interpreter of this machine."""

    executable: str
    """The interpreter (``/root/.pyenv/versions/3.11.7/bin/python3.11``)."""
    version: str
    """``"X.Y"``."""
    full_version: str
    """``platform.python_version()`` (``"3.11.7"``)."""
    prefix: str
    """Its ``sys.base_prefix``: the installation a venv of it needs to see."""
    exec_prefix: str
    """Its ``sys.base_exec_prefix`` (usually the same as ``prefix``)."""
    bin_dir: str
    """The directory of ``executable`` (a venv's ``home``)."""
    stdlib: str
    """Its standard library directory."""
    pip_dir: str | None = None
    """The ``pip`` package it imports, if any."""
    pip_version: str | None = None
    """That pip's version."""


@dataclass(frozen=True)
class PipSource:
    """Where to copy pip from without a network: a package directory or a wheel."""

    version: str
    """The pip version."""
    origin: str
    """A short description for the build log."""
    package: Path | None = None
    """A ``pip`` package directory to copy (with ``dist_info`` beside it)."""
    dist_info: Path | None = None
    """Its ``pip-X.dist-info`` directory, if found."""
    wheel: Path | None = None
    """Else a ``pip-X-py3-none-any.whl`` to unpack."""


def _file_key(path: str) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


def _run_probe(exe: str) -> dict[str, str] | None:
    try:
        proc = subprocess.run(
            [exe, "-I", "-c", _PROBE],
            capture_output=True,
            timeout=_PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    try:
        info = json.loads(proc.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return info if isinstance(info, dict) else None


def _from_probe(exe: str, info: dict[str, str], depth: int) -> HostPython | None:
    version = str(info["version"])
    if info["prefix"] != info["base_prefix"]:
        # A venv: stand for its base interpreter instead.
        if depth > 0:
            return None
        base_bin = os.path.join(info["base_prefix"], "bin")
        for name in (f"python{version}", f"python{version.split('.')[0]}", "python"):
            found = _probe(os.path.join(base_bin, name), depth + 1)
            if found is not None and found.version == version:
                return found
        return None
    executable = info.get("executable") or exe
    if not os.path.isabs(executable):
        executable = exe
    return HostPython(
        executable=executable,
        version=version,
        full_version=str(info["full_version"]),
        prefix=str(info["base_prefix"]),
        exec_prefix=str(info["base_exec_prefix"]),
        bin_dir=os.path.dirname(executable),
        stdlib=str(info["stdlib"]),
        pip_dir=info.get("pip_dir"),
        pip_version=info.get("pip_version"),
    )


def _probe(exe: str, depth: int) -> HostPython | None:
    key = _file_key(exe)
    if key is None or not os.access(exe, os.X_OK):
        return None
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    info = _run_probe(exe)
    result: HostPython | None = None
    if info is not None:
        try:
            result = _from_probe(exe, info, depth)
        except (KeyError, TypeError):
            result = None
    with _cache_lock:
        _cache[key] = result
    return result


def probe_python(executable: str) -> HostPython | None:
    """What ``executable`` is (its base interpreter if it is a venv's), or None if it fails."""
    return _probe(executable, 0)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"[0-9]+", path.name))


def _install_dirs(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    try:
        entries = sorted(root.iterdir(), key=_version_key, reverse=True)
    except OSError:
        return []
    return [str(e / "bin") for e in entries if e.is_dir()]


def _search_dirs() -> list[str]:
    home = Path.home()
    dirs = ["/usr/local/bin"]
    pyenv_roots = [os.environ.get("PYENV_ROOT", ""), str(home / ".pyenv")]
    for root in dict.fromkeys(r for r in pyenv_roots if r):
        dirs += _install_dirs(Path(root) / "versions")
    uv = os.environ.get("UV_PYTHON_INSTALL_DIR") or str(home / ".local/share/uv/python")
    dirs += _install_dirs(Path(uv))
    dirs += [os.path.join(sys.base_prefix, "bin"), "/usr/bin", "/bin"]
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and os.path.isabs(d) and "/shims" not in d:
            dirs.append(d)
    return list(dict.fromkeys(os.path.normpath(d) for d in dirs))


def _candidates(name: str) -> Iterator[str]:
    for d in _search_dirs():
        path = os.path.join(d, name)
        if os.path.isfile(path):
            yield path


def python_versions() -> list[str]:
    """The ``X.Y`` versions this machine seems to have (by file name, not run), oldest first."""
    found: set[tuple[int, int]] = set()
    for d in _search_dirs():
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            m = _VERSION_NAME_RE.match(name)
            if m:
                found.add((int(m.group(1)), int(m.group(2))))
    return [f"{a}.{b}" for a, b in sorted(found)]


def find_python(version: str) -> HostPython | None:
    """A base interpreter of ``version`` (``"3.11"``, or ``"3"`` for the newest 3.x)."""
    if re.fullmatch(r"[0-9]+", version):
        majors = [v for v in reversed(python_versions()) if v.split(".")[0] == version]
        for v in majors:
            found = find_python(v)
            if found is not None:
                return found
        return None
    for cand in _candidates(f"python{version}"):
        found = probe_python(cand)
        if found is not None and found.version == version:
            return found
    return None


def newest_python() -> HostPython | None:
    """The newest Python 3 of this machine."""
    return find_python("3")


def host_python3() -> HostPython | None:
    """The interpreter ``python3`` means on this machine (``/usr/bin/python3`` first)."""
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if cand:
            found = probe_python(cand)
            if found is not None and found.version.startswith("3."):
                return found
    return newest_python()


def package_name(spec: str) -> str:
    """The package name of an apt argument (``git=1:2.39``, ``libc6:amd64``, ``x/bookworm``)."""
    return re.split(r"[=:/]", spec, maxsplit=1)[0]


def _dpkg_installed(names: Iterable[str]) -> set[str]:
    names = list(names)
    dpkg = shutil.which("dpkg-query") or (
        "/usr/bin/dpkg-query" if os.path.exists("/usr/bin/dpkg-query") else None
    )
    if not dpkg or not names:
        return set()
    try:
        proc = subprocess.run(
            [dpkg, "-W", "-f=${Package}\t${Status}\n", "--", *names],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return set()
    installed: set[str] = set()
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        pkg, _, status = line.partition("\t")
        if status.strip().endswith(" ok installed"):
            installed.add(pkg.split(":")[0])
    return installed


def missing_apt_packages(packages: Iterable[str]) -> list[str]:
    """The packages of ``packages`` not installed on this machine, as given."""
    specs = list(packages)
    names = [package_name(p) for p in specs]
    installed = _dpkg_installed(n for n in names if n)
    missing: list[str] = []
    for spec, name in zip(specs, names, strict=True):
        if name in installed:
            continue
        hints = BINARY_HINTS.get(name, (name,))
        if name and hints and all(shutil.which(h) for h in hints):
            continue
        missing.append(spec)
    return missing


def _pip_dist_info(package: Path, version: str) -> Path | None:
    for cand in package.parent.glob("pip-*.dist-info"):
        if cand.name == f"pip-{version}.dist-info":
            return cand
    return None


def _newest_wheel(directory: Path) -> Path | None:
    try:
        wheels = sorted(directory.glob("pip-*-py3-none-any.whl"), key=_version_key)
    except OSError:
        return None
    return wheels[-1] if wheels else None


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def pip_source(python: HostPython) -> PipSource | None:
    """Where to copy pip for ``python`` from, offline; None when this machine has none.

    In order: the pip ``python`` imports from a ``site-packages`` directory, the wheel
    its ``ensurepip`` bundles, Debian's ``/usr/share/python-wheels`` (for ``/usr``
    interpreters), and last a distribution's patched pip in ``dist-packages``.
    """
    own = Path(python.pip_dir) if python.pip_dir and python.pip_version else None
    if own is not None and own.parent.name == "site-packages" and own.is_dir():
        assert python.pip_version is not None
        return PipSource(
            version=python.pip_version,
            origin=f"{python.executable}'s pip",
            package=own,
            dist_info=_pip_dist_info(own, python.pip_version),
        )
    wheel = _newest_wheel(Path(python.stdlib) / "ensurepip" / "_bundled")
    if wheel is not None:
        return PipSource(_wheel_version(wheel), f"ensurepip's {wheel.name}", wheel=wheel)
    if python.prefix == "/usr":
        wheel = _newest_wheel(Path("/usr/share/python-wheels"))
        if wheel is not None:
            return PipSource(_wheel_version(wheel), str(wheel), wheel=wheel)
    if own is not None and own.is_dir():
        assert python.pip_version is not None
        return PipSource(
            version=python.pip_version,
            origin=f"{python.executable}'s pip",
            package=own,
            dist_info=_pip_dist_info(own, python.pip_version),
        )
    return None
