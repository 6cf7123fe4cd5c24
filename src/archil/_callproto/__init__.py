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

from .._constants import REMOTE_ENV
from .bootstrap import (
    BOOTSTRAP,
    CLS_BOOTSTRAP,
    WORKER_BOOTSTRAP,
    bootstrap_command,
    call_marker,
    cls_bootstrap_command,
    worker_command,
)
from .cache import FALLBACK_MODULES, PLANS, CloudpickleLib, PlanCache
from .calls import (
    CALL_ID_PREFIX,
    CALLS_PREFIX,
    CONTAINER_DISK_ROOT,
    LIB_PREFIX,
    CallAborted,
    CallPaths,
    CallRecord,
)
from .output import LogPrinter, OutputTail
from .payloads import (
    check_python_version,
    decode_result,
    encode_arguments,
    encode_call,
    encode_function,
    encode_instance,
    encode_method_call,
    local_python_version,
)
from .spec import FILES_PREFIX, LOCAL_PYTHON_ROOT, FunctionSpec, ImagePlan, LocalTree, Retries

__all__ = [
    "BOOTSTRAP",
    "CALLS_PREFIX",
    "CALL_ID_PREFIX",
    "CLS_BOOTSTRAP",
    "CONTAINER_DISK_ROOT",
    "FALLBACK_MODULES",
    "FILES_PREFIX",
    "LIB_PREFIX",
    "LOCAL_PYTHON_ROOT",
    "PLANS",
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
