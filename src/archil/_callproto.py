"""The ``fn.remote()`` protocol, without I/O: payloads, the in-sandbox bootstrap, results.

A call lives under ``.archil/calls/<call-id>/`` on the app's disk: the caller
uploads ``input.pkl`` (cloudpickle of ``(fn, args, kwargs)``), the sandbox
runs :data:`BOOTSTRAP` (which needs only Python; cloudpickle comes from the
disk, see :class:`CloudpickleLib`) and writes ``output.pkl``, and the caller
reads it back and returns the value or re-raises the remote exception. The
input stays until the call is over, so that a retry can run it again. A
spawned call also has ``call.json`` (:class:`CallRecord`): which sandbox and
process run it, so that another process can wait for it or cancel it.

:class:`FunctionSpec` is what a declared function runs on: a validated
``CreateSandboxRequest`` used as a template, and the :class:`ImagePlan` of its
image (the base reference, and the steps replayed once in a preparation sandbox).
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import json
import os
import re
import shlex
import sys
import sysconfig
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import cloudpickle

from ._constants import REMOTE_ENV
from ._errors import RemoteError
from ._models import SANDBOX_DISK_PATH, CreateSandboxRequest
from ._secrets import Secret, merged_env

__all__ = [
    "BOOTSTRAP",
    "CALLS_PREFIX",
    "CLS_BOOTSTRAP",
    "REMOTE_ENV",
    "WORKER_BOOTSTRAP",
    "CallAborted",
    "CallPaths",
    "CallRecord",
    "CloudpickleLib",
    "FunctionSpec",
    "ImagePlan",
    "LocalTree",
    "LogPrinter",
    "OutputTail",
    "PlanCache",
    "Retries",
    "bootstrap_command",
    "call_marker",
    "check_python_version",
    "cls_bootstrap_command",
    "decode_result",
    "encode_arguments",
    "encode_call",
    "encode_function",
    "encode_instance",
    "encode_method_call",
    "local_python_version",
    "worker_command",
]

CALLS_PREFIX = ".archil/calls"
CALL_ID_PREFIX = "fc-"
LIB_PREFIX = ".archil/lib"
CONTAINER_DISK_ROOT = SANDBOX_DISK_PATH

_PRELUDE = r"""
import os, sys, traceback
try:
    import cloudpickle
except ImportError:
    sys.stderr.write("archil: cloudpickle is not installed in this image\n")
    sys.exit(3)
_fallback = os.path.join(os.path.dirname(os.path.dirname(cloudpickle.__file__)), "fallback")
if os.path.isdir(_fallback):
    sys.path.append(_fallback)

def _failed(exc):
    return {"ok": False, "exc": exc, "type": type(exc).__module__ + "." + type(exc).__qualname__,
            "message": str(exc), "traceback": traceback.format_exc()}

def _write(call_dir, out):
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

def _exit():
    # As multiprocessing's workers end: once the threads that are not daemons are done,
    # the atexit handlers have run and the standard streams are flushed, leave without
    # tearing the interpreter down (which takes milliseconds); on any surprise, normally.
    try:
        import atexit, threading
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        return
    os._exit(0)
"""
"""How both bootstraps begin: cloudpickle (with the fallback library beside it on the
disk), how a failure is described, how a result is written (whole, then renamed), and
how a call's process ends once its result is written."""

BOOTSTRAP = (
    _PRELUDE
    + r"""
call_dir = sys.argv[1]
try:
    with open(os.path.join(call_dir, "input.pkl"), "rb") as f:
        fn, args, kwargs = cloudpickle.load(f)
    out = {"ok": True, "value": fn(*args, **kwargs)}
except BaseException as exc:
    out = _failed(exc)
sys.stdout.flush()
sys.stderr.flush()
_write(call_dir, out)
_exit()
"""
)


class CallAborted(Exception):
    """A call stopped because the ``map`` it belongs to was abandoned (a failure, Ctrl-C)."""


_SERVE = r"""
def _answer(call_dir, out):
    _write(call_dir, out)
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, b"\x1e" + os.path.basename(call_dir).encode() + b"\x1e\n")

def _calls():
    # The calls are named one a line on this process's standard input, which the code it
    # runs does not share: its own is /dev/null. A line sent again after a dropped
    # connection names a call already taken, and is skipped.
    fd = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull)
    seen = []
    for line in os.fdopen(fd, "r"):
        call_dir = line.strip()
        if call_dir and call_dir not in seen:
            seen.append(call_dir)
            del seen[:-64]
            yield call_dir
"""
"""How a serving container takes its calls and answers each: the result on the disk,
then a marker line (``\\x1e<call id>\\x1e``) on stdout."""

CLS_BOOTSTRAP = (
    _PRELUDE
    + _SERVE
    + r"""
init_dir = sys.argv[1]
obj = None
try:
    with open(os.path.join(init_dir, "input.pkl"), "rb") as f:
        cls, args, kwargs, enters = cloudpickle.load(f)
    obj = cls(*args, **kwargs)
    for name in enters:
        getattr(obj, name)()
    out = {"ok": True, "value": None}
except BaseException as exc:
    obj = None
    out = _failed(exc)
_answer(init_dir, out)
if obj is None:
    sys.exit(0)
for call_dir in _calls():
    try:
        with open(os.path.join(call_dir, "input.pkl"), "rb") as f:
            name, args, kwargs = cloudpickle.load(f)
        out = {"ok": True, "value": getattr(obj, name)(*args, **kwargs)}
    except BaseException as exc:
        out = _failed(exc)
    _answer(call_dir, out)
"""
)
"""A class's container process: builds the instance, runs its ``enter`` methods, then
serves method calls named on its standard input (one call directory a line), writing
each result to the disk and then a marker line (``\\x1e<call id>\\x1e``) to stdout."""

WORKER_BOOTSTRAP = (
    _PRELUDE
    + _SERVE
    + r"""
try:
    with open(sys.argv[1], "rb") as f:
        fn = cloudpickle.load(f)
    broken = None
except BaseException as exc:
    fn, broken = None, _failed(exc)
for call_dir in _calls():
    if broken is not None:
        out = broken
    else:
        try:
            with open(os.path.join(call_dir, "input.pkl"), "rb") as f:
                args, kwargs = cloudpickle.load(f)
            out = {"ok": True, "value": fn(*args, **kwargs)}
        except BaseException as exc:
            out = _failed(exc)
    _answer(call_dir, out)
"""
)
"""A ``map``'s container process: loads the function once (``sys.argv[1]``, a pickle of
it), then runs it on the inputs named on its standard input, one call directory a line
(``input.pkl``: the arguments), answering each as a class's container does."""


def call_marker(call_id: str) -> bytes:
    """The bytes a class's container writes to stdout once call ``call_id`` has its result."""
    return b"\x1e" + call_id.encode() + b"\x1e\n"


def cls_bootstrap_command(paths: CallPaths) -> str:
    """The container command of a class's warm container, built from the call ``paths``."""
    return f"exec python -u -c {shlex.quote(CLS_BOOTSTRAP)} {shlex.quote(paths.container_dir)}"


def encode_instance(
    cls: type[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    enters: tuple[str, ...],
    in_image: tuple[str, ...] = (),
) -> bytes:
    """Serialize a class, its constructor's arguments and its ``enter`` methods' names."""
    what = f"the class {cls.__qualname__!r} and its arguments"
    return _pickled(cls, (cls, args, kwargs, enters), in_image, what)


def encode_method_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Serialize a method call of a warm instance."""
    try:
        data: bytes = cloudpickle.dumps((name, args, kwargs))
    except Exception as exc:
        raise ValueError(f"could not serialize the arguments of {name!r}: {exc}") from exc
    return data


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
    def partial_key(self) -> str:
        """Object key of a result being written: left when its process is killed meanwhile."""
        return f"{self.prefix}/output.pkl.tmp"

    @property
    def files(self) -> tuple[str, str, str]:
        """The keys of the call's input and result (written or partly written)."""
        return (self.input_key, self.output_key, self.partial_key)

    @property
    def record_key(self) -> str:
        """Object key of a spawned call's :class:`CallRecord`."""
        return f"{self.prefix}/call.json"

    @property
    def object_id(self) -> str:
        """The call's public id (``fc-`` and 32 hex digits)."""
        return CALL_ID_PREFIX + self.call_id

    @classmethod
    def from_object_id(cls, object_id: str) -> CallPaths:
        """The paths of the call ``object_id``; ``ValueError`` naming it when malformed."""
        if (
            not isinstance(object_id, str)
            or not object_id.startswith(CALL_ID_PREFIX)
            or not re.fullmatch(r"[0-9a-f]{32}", object_id[len(CALL_ID_PREFIX) :])
        ):
            raise ValueError(
                f"object_id must look like 'fc-' and 32 hex digits (from call.object_id), "
                f"got {object_id!r}"
            )
        return cls(object_id[len(CALL_ID_PREFIX) :])

    @property
    def container_dir(self) -> str:
        """The call's directory as the container sees it."""
        return f"{CONTAINER_DISK_ROOT}/{self.prefix}"


def bootstrap_command(paths: CallPaths) -> str:
    """The container command that runs the bootstrap for a call."""
    return f"exec python -u -c {shlex.quote(BOOTSTRAP)} {shlex.quote(paths.container_dir)}"


def worker_command(function: CallPaths) -> str:
    """The container command of a ``map``'s worker, for the function uploaded in ``function``."""
    path = f"{function.container_dir}/input.pkl"
    return f"exec python -u -c {shlex.quote(WORKER_BOOTSTRAP)} {shlex.quote(path)}"


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


_BY_VALUE_LOCK = threading.Lock()
_BY_VALUE_USERS: dict[str, int] = {}
"""How many encodes in progress have each module registered to be pickled by value.

Calls are encoded on several threads at once (a map's slots), and cloudpickle's
registry is global: the module stays registered until the last of them is done.
"""


@contextmanager
def _by_value(fn: Callable[..., Any], in_image: tuple[str, ...] = ()) -> Iterator[None]:
    """Pickle the function's module by value when it is a local, non-installed module
    that the image does not hold (``in_image``)."""
    name = getattr(fn, "__module__", None) or "__main__"
    top = name.split(".")[0]
    registered = False
    if (
        name != "__main__"
        and top not in in_image
        and not _is_installed(name)
        and top in sys.modules
    ):
        with _BY_VALUE_LOCK:
            users = _BY_VALUE_USERS.get(top, 0)
            try:
                if users == 0:
                    cloudpickle.register_pickle_by_value(sys.modules[top])
                _BY_VALUE_USERS[top] = users + 1
                registered = True
            except ValueError:
                registered = False
    try:
        yield
    finally:
        if registered:
            with _BY_VALUE_LOCK:
                _BY_VALUE_USERS[top] -= 1
                if _BY_VALUE_USERS[top] == 0:
                    del _BY_VALUE_USERS[top]
                    cloudpickle.unregister_pickle_by_value(sys.modules[top])


def _pickled(fn: Callable[..., Any], value: Any, in_image: tuple[str, ...], what: str) -> bytes:
    """cloudpickle of ``value`` with ``fn``'s module by value (see :func:`_by_value`);
    ``ValueError`` naming ``what`` when it cannot be pickled."""
    with _by_value(fn, in_image):
        try:
            data: bytes = cloudpickle.dumps(value)
        except Exception as exc:
            raise ValueError(f"could not serialize {what}: {exc}") from exc
    return data


def _name(fn: Callable[..., Any]) -> str:
    return repr(getattr(fn, "__qualname__", fn))


def encode_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    in_image: tuple[str, ...] = (),
) -> bytes:
    """Serialize a call with cloudpickle (local modules by value, unless the image has them)."""
    what = f"the call to {_name(fn)} and its arguments"
    return _pickled(fn, (fn, args, kwargs), in_image, what)


def encode_function(fn: Callable[..., Any], in_image: tuple[str, ...] = ()) -> bytes:
    """Serialize a function alone, for a ``map``'s containers (see :func:`encode_arguments`)."""
    return _pickled(fn, fn, in_image, f"the function {_name(fn)}")


def encode_arguments(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    in_image: tuple[str, ...] = (),
) -> bytes:
    """Serialize one input of a ``map`` (its arguments), pickled as :func:`encode_call` would."""
    return _pickled(fn, (args, kwargs), in_image, f"the arguments of {_name(fn)}")


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
    """Writes a process's output to the caller's terminal as it arrives.

    Output comes as bytes; each stream is decoded incrementally (a character split
    across frames survives). ``prefix`` marks every line (``[build] `` for image
    preparation).
    """

    def __init__(
        self,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        *,
        prefix: str = "",
    ) -> None:
        self._stdout = stdout
        self._stderr = stderr
        self._prefix = prefix
        self._decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")(errors="replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")(errors="replace"),
        }
        self._at_line_start = {"stdout": True, "stderr": True}

    def write(self, stream: str, data: bytes | str) -> None:
        """Print a chunk of ``stream`` (``stdout`` to stdout; anything else to stderr)."""
        key = "stdout" if stream == "stdout" else "stderr"
        text = data if isinstance(data, str) else self._decoders[key].decode(data)
        if not text:
            return
        if self._prefix:
            text = self._prefixed(key, text)
        out = (self._stdout or sys.stdout) if key == "stdout" else (self._stderr or sys.stderr)
        out.write(text)
        out.flush()

    def _prefixed(self, key: str, text: str) -> str:
        parts = text.split("\n")
        out: list[str] = []
        for i, part in enumerate(parts):
            start = self._at_line_start[key] if i == 0 else True
            if part and start:
                part = self._prefix + part
            out.append(part)
        self._at_line_start[key] = text.endswith("\n")
        return "\n".join(out)


class OutputTail:
    """The last lines of a process's output, for error messages."""

    def __init__(self, max_lines: int = 40, max_bytes: int = 64 * 1024) -> None:
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Add output bytes (both streams, in order)."""
        self._buf += data
        if len(self._buf) > 2 * self._max_bytes:
            del self._buf[: len(self._buf) - self._max_bytes]

    def text(self) -> str:
        """The last lines, decoded."""
        lines = bytes(self._buf[-self._max_bytes :]).decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-self._max_lines :])


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


@dataclass
class CallRecord:
    """A spawned call's state on the app's disk (``call.json``).

    ``status`` is ``running`` or ``cancelled``; ``attempt`` counts from 1;
    ``sandbox_id``/``process_id`` are the current attempt's. It holds no
    argument, no environment and no secret.
    """

    call_id: str
    function: str
    sandbox_id: str
    process_id: str
    attempt: int = 1
    status: str = "running"

    def dumps(self) -> bytes:
        """The record as JSON bytes."""
        return json.dumps({"version": 1, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def loads(cls, data: bytes) -> CallRecord:
        """Parse a record written by :meth:`dumps` (``ValueError`` when it is not one)."""
        try:
            raw = json.loads(data)
            return cls(
                call_id=str(raw["call_id"]),
                function=str(raw["function"]),
                sandbox_id=str(raw["sandbox_id"]),
                process_id=str(raw["process_id"]),
                attempt=int(raw.get("attempt", 1)),
                status=str(raw.get("status", "running")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a call record: {exc}") from None


FALLBACK_MODULES = ("__init__.py", "_constants.py", "_secrets.py")
"""The part of archil a function's code may use in a container without archil installed:
``archil.is_local()`` and unpickling an ``archil.Secret``."""


class CloudpickleLib:
    """This process's cloudpickle, shipped to a disk so a sandbox can import it.

    The real control plane's Python images have no cloudpickle; the bootstrap finds
    the caller's own version on the disk (``PYTHONPATH``), so no image needs a pip
    step for it and no network is needed. Beside it, under ``fallback/``, is the
    small dependency-free part of archil (:data:`FALLBACK_MODULES`), which the
    bootstrap appends to ``sys.path`` so that an archil installed in the image
    wins. ``files`` are ``(object key, bytes)``, written before ``marker_key``,
    which says the set is complete.
    """

    def __init__(self) -> None:
        version = str(cloudpickle.__version__)
        package = Path(cloudpickle.__file__).parent
        ours = Path(__file__).parent
        sources = [(f"cloudpickle/{p.name}", p) for p in sorted(package.glob("*.py"))]
        sources += [(f"fallback/archil/{name}", ours / name) for name in FALLBACK_MODULES]
        digest = hashlib.sha256()
        files: list[tuple[str, bytes]] = []
        for name, path in sources:
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + data)
            files.append((name, data))
        self.prefix = f"{LIB_PREFIX}/cloudpickle-{version}-{digest.hexdigest()[:12]}"
        self.files = [(f"{self.prefix}/{name}", data) for name, data in files]
        self.marker_key = f"{self.prefix}/.complete"

    @property
    def guest_path(self) -> str:
        """The directory to put on ``PYTHONPATH`` inside a sandbox."""
        return f"{CONTAINER_DISK_ROOT}/{self.prefix}"


class PlanCache:
    """Thread-safe memory of what this process already did on a control plane.

    Keys are ``(base URL, kind, name)``: built images (source -> image id),
    prepared sandboxes (name -> sandbox id and checkpoint), disks that have the
    cloudpickle library. Entries are dropped when the control plane says they
    are stale.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[tuple[str, str, str], Any] = {}

    def get(self, base_url: str, kind: str, name: str) -> Any:
        """The remembered value, or ``None``."""
        with self._lock:
            return self._data.get((base_url, kind, name))

    def put(self, base_url: str, kind: str, name: str, value: Any) -> None:
        """Remember ``value``."""
        with self._lock:
            self._data[(base_url, kind, name)] = value

    def drop(self, base_url: str, kind: str, name: str) -> None:
        """Forget an entry."""
        with self._lock:
            self._data.pop((base_url, kind, name), None)


PLANS = PlanCache()
"""The process-wide :class:`PlanCache` the runners share."""
