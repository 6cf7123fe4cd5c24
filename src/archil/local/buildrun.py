"""One image build: a directory laid out like ``/`` that a sandbox sees beneath its own layers.

A sandbox's root is an overlay of its own layers, over the image's layer built here, over
this machine's ``/usr``, ``/etc``, ``/var`` and ``/opt`` (read only). So the layer holds
only what the image adds to this machine's userland:

- ``python:X.Y`` (``kind="python"``): a virtual environment of this machine's Python X.Y at
  ``usr/local``, built on the host at ``<layer>/usr/local`` and made for the path
  ``/usr/local`` (``bin/activate*``, ``pyvenv.cfg`` and script shebangs name
  ``/usr/local``, never the build directory). Its ``home`` is the base interpreter's
  ``bin`` directory and it does not see that interpreter's site-packages; pip is copied
  into it offline from this machine (:func:`archil.local.hostenv.pip_source`), so
  ``python``, ``python3`` and ``pip`` resolve in ``/usr/local/bin`` and ``pip install``
  writes into the sandbox's own layer. The interpreter's installation, when it is not
  under a directory the sandbox already sees, is listed in ``binds``. When this machine's
  Python X.Y itself lives in ``/usr/local`` (as in the official python images), there is
  no venv: the host's ``/usr/local`` shows through.
- Debian, Ubuntu, Node images (``kind="host"``): this machine's userland; when it has no
  ``/usr/bin/python3`` (Python only under pyenv, say), ``usr/local/bin/python3`` and
  ``python`` link to the interpreter ``python3`` means here.
- Both get an ``apt-get``/``apt`` stand-in in ``usr/local/sbin`` (first on a Debian
  ``PATH``): ``install`` checks the packages against this machine (``dpkg-query``, else a
  command of that name) and installs nothing, exiting 100 with the missing ones listed;
  ``update``, ``clean``, ``autoclean`` and ``autoremove`` do nothing and succeed.

Nothing is downloaded, and pip's files are hard-linked where the filesystem allows: a
build takes well under a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archil.local import hostenv
from archil.local.imageref import LocalBase

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_PATH",
    "GUEST_PREFIX",
    "VISIBLE_HOST_DIRS",
    "BuildError",
    "BuildInterrupted",
    "apt_shim",
    "build_layer",
    "resolve_python",
]

BUILDER_VERSION = "1"
"""Changes whenever a layer built by an older builder must not be reused."""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` inside a sandbox, as in Debian-based images."""

GUEST_PREFIX = "/usr/local"
"""Where a ``python:X.Y`` image's environment lives inside a sandbox."""

VISIBLE_HOST_DIRS = ("/usr", "/etc", "/var", "/opt")
"""Host directories every sandbox sees (read only) beneath the image's layer."""

_RUN_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
_STEP_TIMEOUT = 120.0
_SCAN_LIMIT = 4 << 20

Log = Callable[[str], None]
Stop = Callable[[], bool]


class BuildError(Exception):
    """The image cannot be built on this machine; the message says why, in one sentence."""


class BuildInterrupted(Exception):
    """The build was stopped before it finished (the control plane is shutting down)."""


def _check(should_stop: Stop | None) -> None:
    if should_stop is not None and should_stop():
        raise BuildInterrupted("the build was stopped (the local control plane shut down)")


def _run(argv: list[str], log: Log, what: str) -> str:
    """Run ``argv`` quietly; its output goes to ``log``; ``BuildError`` naming ``what`` on failure."""
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=_RUN_ENV,
            timeout=_STEP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"{what} took longer than {_STEP_TIMEOUT:.0f} seconds") from e
    except OSError as e:
        raise BuildError(f"{what} could not start: {e.strerror or e}") from e
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    for line in out.splitlines():
        log(f"    {line}")
    if proc.returncode != 0:
        last = out.strip().splitlines()[-1] if out.strip() else f"exit code {proc.returncode}"
        raise BuildError(f"{what} failed: {last}")
    return proc.stdout.decode("utf-8", "replace")


def _binds_for(python: hostenv.HostPython) -> list[str]:
    """The installation directories of ``python`` a sandbox does not already see."""
    binds: list[str] = []
    for d in (python.prefix, python.exec_prefix):
        visible = any(d == v or d.startswith(v + "/") for v in VISIBLE_HOST_DIRS)
        if not visible and d not in binds and d != "/":
            binds.append(d)
    return binds


def _missing_python(version: str) -> BuildError:
    found = [v for v in hostenv.python_versions() if v.startswith("3.")]
    have = f"found {', '.join(found)}" if found else "found no Python 3"
    wanted = "Python 3" if version == "3" else f"Python {version}"
    hint = f"; use python:{found[-1]}-slim, or install it (with pyenv or uv)" if found else ""
    return BuildError(f"{wanted} is not installed on this machine ({have}){hint}")


def resolve_python(base: LocalBase) -> hostenv.HostPython:
    """The interpreter a ``kind="python"`` image is made from; ``BuildError`` if absent."""
    version = base.python_version or "3"
    python = hostenv.find_python(version)
    if python is None:
        raise _missing_python(version)
    return python


# -- the apt stand-in ------------------------------------------------------------

_SHIM_HEAD = r"""#!/bin/sh
# apt-get / apt stand-in of the archil local control plane.
# Sandboxes here run on this machine's own packages: nothing is installed. `install`
# checks each package against this machine and fails (exit 100) listing the missing ones.
set -f
prog=${0##*/}

hints() {
    case $1 in
"""

_SHIM_TAIL = r"""        *) printf '%s\n' "$1" ;;
    esac
}

present() {
    st=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) && case $st in
        *" ok installed"*) return 0 ;;
    esac
    bins=$(hints "$1")
    [ -n "$bins" ] || return 1
    for b in $bins; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
    return 0
}

sub=
pkgs=
skip=
for arg in "$@"; do
    if [ -n "$skip" ]; then skip=; continue; fi
    case $arg in
        -o|-c|-t|-a|--option|--config-file|--target-release|--default-release|--host-architecture)
            skip=1; continue ;;
        -*) continue ;;
    esac
    if [ -z "$sub" ]; then sub=$arg; else pkgs="$pkgs $arg"; fi
done

case $sub in
update|clean|autoclean|autoremove)
    echo "archil local: $prog $sub does nothing here: the local control plane runs on this machine's own packages"
    exit 0 ;;
install)
    have=
    missing=
    for p in $pkgs; do
        name=${p%%=*}; name=${name%%/*}; name=${name%%:*}
        case $name in
            */*|.*|'') missing="$missing $p"; continue ;;
        esac
        if present "$name"; then have="$have, $name"; else missing="$missing $p"; fi
    done
    if [ -z "$missing" ]; then
        if [ -z "$have" ]; then
            echo "archil local: $prog installs nothing here (no packages named)"
        else
            have=${have#, }
            case $have in *,*) verb=are ;; *) verb=is ;; esac
            echo "archil local: $prog installs nothing here; $have $verb installed on this machine"
        fi
        exit 0
    fi
    missing=${missing# }
    echo "archil local: E: $prog cannot install $missing here: the local control plane uses this machine's packages, and this machine does not have them. Install them on the host (apt-get install $missing), or run on Archil's cloud." >&2
    exit 100 ;;
'')
    echo "archil local: E: $prog needs a command; here it supports install, update, clean, autoclean and autoremove" >&2
    exit 100 ;;
*)
    echo "archil local: E: $prog $sub is not supported here: the local control plane uses this machine's packages and changes none of them (it supports install, update, clean, autoclean and autoremove); run on Archil's cloud for a real apt" >&2
    exit 100 ;;
esac
"""


def apt_shim() -> str:
    """The text of the ``apt-get``/``apt`` stand-in (POSIX ``sh``)."""
    cases = []
    for package, binaries in sorted(hostenv.BINARY_HINTS.items()):
        cases.append(f"        {package}) printf '%s\\n' '{' '.join(binaries)}' ;;\n")
    return _SHIM_HEAD + "".join(cases) + _SHIM_TAIL


def _write_apt_shim(layer: Path, log: Log) -> None:
    sbin = layer / "usr" / "local" / "sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    text = apt_shim()
    for name in ("apt-get", "apt"):
        path = sbin / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
    log("apt-get and apt in /usr/local/sbin check packages against this machine")


# -- python images -------------------------------------------------------------------


def _relocate(venv: Path, layer: Path) -> None:
    """Make every file of ``venv`` name ``/usr/local`` instead of where it was built."""
    old = os.fsencode(venv)
    new = os.fsencode(GUEST_PREFIX)
    for dirpath, _dirs, files in os.walk(venv):
        for name in files:
            path = Path(dirpath, name)
            if path.is_symlink():
                if os.fsencode(layer) in os.fsencode(os.readlink(path)):
                    raise BuildError(f"{path.name} links into the build directory")
                continue
            if path.stat().st_size > _SCAN_LIMIT:
                continue
            data = path.read_bytes()
            if old in data:
                # A new file, not a rewrite: the old one may be a hard link.
                data = data.replace(old, new)
                tmp = path.with_name(f".{path.name}.relocate")
                tmp.write_bytes(data)
                shutil.copymode(path, tmp)
                os.replace(tmp, path)
            if os.fsencode(layer) in data:
                raise BuildError(f"{path.name} names the build directory and cannot be moved")


def _site_packages(venv: Path, python: hostenv.HostPython) -> Path:
    return venv / "lib" / f"python{python.version}" / "site-packages"


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link ``src`` at ``dst`` (a copy across filesystems).

    pip never rewrites an installed file in place (it removes and writes anew), so a
    sandbox's ``pip install -U pip`` leaves the host's files alone, and inside a sandbox
    the layer is a read-only lower layer anyway.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)


def _install_pip(venv: Path, python: hostenv.HostPython, log: Log) -> str:
    """Copy pip into ``venv`` offline and write its console scripts; return its version."""
    source = hostenv.pip_source(python)
    if source is None:
        raise BuildError(
            f"pip is not available offline for Python {python.version} on this machine "
            f"({python.executable} has neither pip nor ensurepip's wheel)"
        )
    site = _site_packages(venv, python)
    site.mkdir(parents=True, exist_ok=True)
    try:
        if source.wheel is not None:
            with zipfile.ZipFile(source.wheel) as whl:
                whl.extractall(site)
        else:
            assert source.package is not None
            _copy_tree(source.package, site / "pip")
            if source.dist_info is not None:
                _copy_tree(source.dist_info, site / source.dist_info.name)
                (site / source.dist_info.name / "RECORD").unlink(missing_ok=True)
                (site / source.dist_info.name / "direct_url.json").unlink(missing_ok=True)
    except (OSError, zipfile.BadZipFile) as e:
        raise BuildError(f"copying pip from {source.origin} failed: {e}") from e
    major = python.version.split(".")[0]
    for name in ("pip", f"pip{major}", f"pip{python.version}"):
        script = venv / "bin" / name
        script.write_text(
            f"#!{GUEST_PREFIX}/bin/python\n"
            "import re\n"
            "import sys\n"
            "from pip._internal.cli.main import main\n"
            "if __name__ == '__main__':\n"
            "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            "    sys.exit(main())\n",
            encoding="utf-8",
        )
        script.chmod(0o755)
    log(f"pip {source.version} copied from {source.origin}")
    return source.version


def _check_python(venv: Path, python: hostenv.HostPython, log: Log) -> None:
    out = _run(
        [
            str(venv / "bin" / "python"),
            "-B",
            "-c",
            "import sys, pip; print('%d.%d' % sys.version_info[:2], sys.prefix != sys.base_prefix)",
        ],
        log,
        f"running the new Python {python.version} environment",
    )
    if out.split() != [python.version, "True"]:
        raise BuildError(
            f"the new Python {python.version} environment does not run as one (it says {out!r})"
        )


def _python_in_usr_local(python: hostenv.HostPython) -> bool:
    if python.prefix != GUEST_PREFIX:
        return False
    python3 = hostenv.probe_python(f"{GUEST_PREFIX}/bin/python3")
    return python3 is not None and python3.executable == python.executable


def _python_layer(
    base: LocalBase, layer: Path, log: Log, should_stop: Stop | None
) -> dict[str, Any]:
    python = resolve_python(base)
    log(f"Python {python.full_version} from {python.executable}")
    venv = layer / "usr" / "local"
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "PYTHON_VERSION": python.full_version}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result: dict[str, Any] = {
        "env": env,
        "python_version": python.version,
        "interpreter": python.executable,
        "python_full_version": python.full_version,
    }
    if _python_in_usr_local(python):
        log(f"this machine's Python {python.version} is in /usr/local: the image uses it as it is")
        bin_dir = venv / "bin"
        if not os.path.exists(f"{GUEST_PREFIX}/bin/python"):
            bin_dir.mkdir(parents=True, exist_ok=True)
            (bin_dir / "python").symlink_to("python3")
        _write_apt_shim(layer, log)
        host_path = [str(bin_dir)] if bin_dir.is_dir() else []
        result.update(binds=[], host_path=[*host_path, f"{GUEST_PREFIX}/bin", str(venv / "sbin")])
        return result
    _run(
        [python.executable, "-I", "-m", "venv", "--without-pip", str(venv)],
        log,
        f"creating the Python {python.version} environment",
    )
    _relocate(venv, layer)
    log(f"environment made for {GUEST_PREFIX} (home {python.bin_dir})")
    _check(should_stop)
    result["pip_version"] = _install_pip(venv, python, log)
    _check(should_stop)
    _check_python(venv, python, log)
    _write_apt_shim(layer, log)
    binds = _binds_for(python)
    if binds:
        log(f"sandboxes see {', '.join(binds)} read-only")
    result.update(binds=binds, host_path=[str(venv / "bin"), str(venv / "sbin")])
    return result


# -- host images -------------------------------------------------------------------------


def _userland() -> str:
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _host_layer(layer: Path, log: Log) -> dict[str, Any]:
    userland = _userland()
    log(f"this machine's userland ({userland})")
    result: dict[str, Any] = {
        "env": {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"},
        "binds": [],
        "userland": userland,
        "interpreter": None,
        "python_version": None,
    }
    bin_dir = layer / "usr" / "local" / "bin"
    if os.path.exists("/usr/bin/python3"):
        python = hostenv.probe_python("/usr/bin/python3")
        if python is not None:
            result.update(interpreter="/usr/bin/python3", python_version=python.version)
    else:
        python = hostenv.host_python3()
        if python is None:
            log("this machine has no python3: the image has none either")
        else:
            bin_dir.mkdir(parents=True, exist_ok=True)
            for name in ("python3", "python"):
                (bin_dir / name).symlink_to(python.executable)
            binds = _binds_for(python)
            log(f"python3 and python in /usr/local/bin are {python.executable}")
            result.update(interpreter=python.executable, python_version=python.version, binds=binds)
    _write_apt_shim(layer, log)
    host_path = [str(bin_dir)] if bin_dir.is_dir() else []
    result["host_path"] = [*host_path, str(layer / "usr" / "local" / "sbin")]
    return result


def build_layer(
    base: LocalBase,
    layer_dir: Path,
    log: Log,
    should_stop: Stop | None = None,
) -> dict[str, Any]:
    """Build the layer of ``base`` into ``layer_dir`` (emptied first); return its manifest fields.

    The fields are ``env``, ``binds`` and ``host_path`` (lists of host paths),
    ``python_version`` (``"X.Y"`` or None), ``interpreter`` (the host interpreter the
    image depends on, or None) and ``builder_version``; python images add
    ``python_full_version`` and ``pip_version``, host images ``userland``. Raises
    :class:`BuildError` with a sentence saying why, or :class:`BuildInterrupted` when
    ``should_stop`` returns true between steps.
    """
    layer_dir = Path(layer_dir)
    if layer_dir.exists() or layer_dir.is_symlink():
        shutil.rmtree(layer_dir)
    layer_dir.mkdir(parents=True)
    _check(should_stop)
    if base.kind == "python":
        result = _python_layer(base, layer_dir, log, should_stop)
    else:
        result = _host_layer(layer_dir, log)
    result["builder_version"] = BUILDER_VERSION
    return result
