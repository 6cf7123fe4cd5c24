"""What goes to the disk and back: calls, functions, arguments and classes pickled with
cloudpickle (local modules by value), the result decoded, the Python versions checked."""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle

from .._errors import RemoteError

__all__ = [
    "check_python_version",
    "decode_result",
    "encode_arguments",
    "encode_call",
    "encode_function",
    "encode_instance",
    "encode_method_call",
    "local_python_version",
]


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
