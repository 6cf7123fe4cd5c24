"""The ``fn.remote()`` protocol, without I/O: payloads, the in-container bootstrap, results.

A call lives under ``.archil/calls/<call-id>/`` on the app's disk: the caller
uploads ``input.pkl`` (cloudpickle of ``(fn, args, kwargs)``), the container
runs :data:`BOOTSTRAP` (which needs only Python and cloudpickle) and writes
``output.pkl``, and the caller reads it back and returns the value or
re-raises the remote exception.
"""

from __future__ import annotations

import importlib
import io
import os
import shlex
import sys
import sysconfig
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import cloudpickle

from ._errors import RemoteError
from ._models import AdditionalMount, KernelVariant

__all__ = [
    "BOOTSTRAP",
    "CALLS_PREFIX",
    "CallPaths",
    "ContainerOptions",
    "LogPrinter",
    "bootstrap_command",
    "check_python_version",
    "decode_result",
    "encode_call",
    "local_python_version",
]

CALLS_PREFIX = ".archil/calls"
CONTAINER_DISK_ROOT = "/mnt/archil"

BOOTSTRAP = r"""
import os, sys, traceback
call_dir = sys.argv[1]
try:
    import cloudpickle
except ImportError:
    sys.stderr.write("archil: cloudpickle is not installed in this image\n")
    sys.exit(3)

def _write(out):
    try:
        data = cloudpickle.dumps(out)
    except Exception as exc:
        if out.get("ok"):
            out = {"ok": False, "exc": None, "type": "archil.ResultNotSerializable",
                   "message": "the return value could not be pickled: %r" % (exc,), "traceback": ""}
        else:
            out = dict(out, exc=None)
        data = cloudpickle.dumps(out)
    path = os.path.join(call_dir, "output.pkl")
    with open(path + ".tmp", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)

try:
    with open(os.path.join(call_dir, "input.pkl"), "rb") as f:
        fn, args, kwargs = cloudpickle.load(f)
    value = fn(*args, **kwargs)
    out = {"ok": True, "value": value}
except BaseException as exc:
    out = {"ok": False, "exc": exc, "type": type(exc).__module__ + "." + type(exc).__qualname__,
           "message": str(exc), "traceback": traceback.format_exc()}
sys.stdout.flush()
sys.stderr.flush()
_write(out)
"""


def local_python_version() -> str:
    """The caller's Python ``major.minor``."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def check_python_version(image_version: str | None, *, where: str = "image") -> None:
    """Fail early, before anything starts, when the image's Python differs from the caller's."""
    local = local_python_version()
    if image_version is None:
        raise ValueError(
            f"{where}: functions need an image with Python {local} to unpickle them; "
            f'use archil.Image.python("{local}") or archil.Image.debian_slim()'
        )
    if image_version != local:
        raise ValueError(
            f"{where}: the image has Python {image_version} but this interpreter is {local}; "
            "pickled functions only run on the same major.minor version: "
            f'use archil.Image.python("{local}")'
        )


@dataclass(frozen=True)
class CallPaths:
    """Where one call's files live, as object keys and as paths inside the container."""

    call_id: str

    @classmethod
    def new(cls) -> CallPaths:
        """Paths for a fresh call id."""
        return cls(uuid.uuid4().hex)

    @property
    def prefix(self) -> str:
        """The object-key prefix of the call."""
        return f"{CALLS_PREFIX}/{self.call_id}"

    @property
    def input_key(self) -> str:
        """Object key of the pickled call."""
        return f"{self.prefix}/input.pkl"

    @property
    def output_key(self) -> str:
        """Object key of the pickled result."""
        return f"{self.prefix}/output.pkl"

    @property
    def container_dir(self) -> str:
        """The call's directory as the container sees it."""
        return f"{CONTAINER_DISK_ROOT}/{self.prefix}"


def bootstrap_command(paths: CallPaths) -> str:
    """The container command that runs the bootstrap for a call."""
    return f"exec python -u -c {shlex.quote(BOOTSTRAP)} {shlex.quote(paths.container_dir)}"


def _is_installed(module_name: str) -> bool:
    """True when a module comes from site-packages or the standard library."""
    mod = sys.modules.get(module_name)
    if mod is None:
        try:
            mod = importlib.import_module(module_name)
        except Exception:
            return False
    path = getattr(mod, "__file__", None)
    if not path:
        return True  # built-in or namespace package
    path = os.path.realpath(path)
    roots = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    return any(r and path.startswith(os.path.realpath(r) + os.sep) for r in roots)


@contextmanager
def _by_value(fn: Callable[..., Any]) -> Iterator[None]:
    """Pickle the function's module by value when it is a local, non-installed module."""
    name = getattr(fn, "__module__", None) or "__main__"
    top = name.split(".")[0]
    registered = False
    if name != "__main__" and not _is_installed(name) and top in sys.modules:
        try:
            cloudpickle.register_pickle_by_value(sys.modules[top])
            registered = True
        except ValueError:
            registered = False
    try:
        yield
    finally:
        if registered:
            cloudpickle.unregister_pickle_by_value(sys.modules[top])


def encode_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Serialize a call with cloudpickle (local modules by value)."""
    with _by_value(fn):
        try:
            data: bytes = cloudpickle.dumps((fn, args, kwargs))
        except Exception as exc:
            raise ValueError(
                f"could not serialize the call to {getattr(fn, '__qualname__', fn)!r} "
                f"and its arguments: {exc}"
            ) from exc
    return data


def decode_result(data: bytes) -> Any:
    """Return the remote value, or raise the remote exception (as itself when possible)."""
    try:
        out = cloudpickle.loads(data)
    except Exception as exc:
        raise RemoteError(f"the remote result could not be unpickled here: {exc!r}") from None
    if not isinstance(out, dict) or "ok" not in out:
        raise RemoteError("the remote result is malformed")
    if out["ok"]:
        return out.get("value")
    tb = str(out.get("traceback") or "")
    original = out.get("exc")
    remote = RemoteError(
        f"{out.get('type', 'Exception')}: {out.get('message', '')}",
        remote_traceback=tb,
        exception_type=str(out.get("type", "")),
    )
    if isinstance(original, BaseException):
        if hasattr(original, "add_note") and tb:
            original.add_note("\nRemote traceback (from the container):\n" + tb.rstrip())
        raise original from remote
    raise remote


class LogPrinter:
    """Writes a container's log entries to the caller's terminal as they arrive."""

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self._stdout = stdout
        self._stderr = stderr

    def write(self, stream: str, data: str) -> None:
        """Print one log chunk: stdout to stdout, stderr and build output to stderr."""
        if stream == "stdout":
            out = self._stdout or sys.stdout
        elif stream in ("stderr", "build"):
            out = self._stderr or sys.stderr
        else:
            return
        if stream == "build":
            data = "".join(f"[build] {line}" for line in io.StringIO(data))
        out.write(data)
        out.flush()


@dataclass(frozen=True)
class ContainerOptions:
    """What a function's or job's container looks like (validated by the decorators)."""

    disk_id: str
    disk_env: str
    dockerfile: str | None = None
    vcpu_count: int = 1
    mem_size_mib: int = 512
    kernel_variant: KernelVariant = "base"
    additional_mounts: tuple[AdditionalMount, ...] = ()
    ports: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    timeout_seconds: int | None = None
    stream_logs: bool = True
