"""Where a call lives on the app's disk, and a spawned call's record.

A call's files are under ``.archil/calls/<call-id>/``: ``input.pkl``, ``output.pkl``
(and ``output.pkl.tmp`` while it is written) and, for a spawned call, ``call.json``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass

from .._models import SANDBOX_DISK_PATH

__all__ = [
    "CALLS_PREFIX",
    "CALL_ID_PREFIX",
    "CONTAINER_DISK_ROOT",
    "LIB_PREFIX",
    "CallAborted",
    "CallPaths",
    "CallRecord",
]

CALLS_PREFIX = ".archil/calls"
CALL_ID_PREFIX = "fc-"
LIB_PREFIX = ".archil/lib"
CONTAINER_DISK_ROOT = SANDBOX_DISK_PATH


class CallAborted(Exception):
    """A call stopped because the ``map`` it belongs to was abandoned (a failure, Ctrl-C)."""


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
