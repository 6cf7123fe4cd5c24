"""The programs a sandbox runs for calls, and the commands that start them.

They need only Python and cloudpickle (which comes from the disk, see
:class:`~archil._callproto.cache.CloudpickleLib`): :data:`BOOTSTRAP` runs one call,
:data:`CLS_BOOTSTRAP` serves a class's method calls, :data:`WORKER_BOOTSTRAP` runs a
``map``'s function on input after input.
"""

from __future__ import annotations

import shlex

from .calls import CallPaths

__all__ = [
    "BOOTSTRAP",
    "CLS_BOOTSTRAP",
    "WORKER_BOOTSTRAP",
    "bootstrap_command",
    "call_marker",
    "cls_bootstrap_command",
    "worker_command",
]

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


def bootstrap_command(paths: CallPaths) -> str:
    """The container command that runs the bootstrap for a call."""
    return f"exec python -u -c {shlex.quote(BOOTSTRAP)} {shlex.quote(paths.container_dir)}"


def worker_command(function: CallPaths) -> str:
    """The container command of a ``map``'s worker, for the function uploaded in ``function``."""
    path = f"{function.container_dir}/input.pkl"
    return f"exec python -u -c {shlex.quote(WORKER_BOOTSTRAP)} {shlex.quote(path)}"
