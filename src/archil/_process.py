"""The sandbox process protocol, without I/O: messages, output frames, cursors, results.

A process runs in a sandbox and is driven over a WebSocket whose URL
``POST /api/sandboxes/{sid}/connections`` hands out (``docs/process-protocol.md``).
The client sends JSON text messages (``start``, ``attach``, ``kill``,
``resize``, ``close_stdin``) and binary stdin; the server answers JSON events
(``started``, ``attached``, ``exit``, ``error``, ``killed``, ``resized``) and
binary output frames::

    +--------+---------------------------+-----------------+
    | stream | offset (8 bytes, big end) | payload ...     |
    +--------+---------------------------+-----------------+
      1 byte: 1 stdout, 2 stderr

``offset`` counts the bytes of the process's whole output (both streams) before
the payload, so a client that reconnects and attaches with the offset it got to
receives the rest without losing or repeating a byte. Both the client halves
and the local control plane use this module.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

__all__ = [
    "FRAME_HEADER",
    "MAX_FRAME_PAYLOAD",
    "MAX_INPUT_FRAME",
    "STDERR",
    "STDOUT",
    "OutputCursor",
    "ProcessOutput",
    "ProcessResult",
    "ProcessStatus",
    "ProtocolError",
    "attach_message",
    "close_stdin_message",
    "decode_frame",
    "encode_frame",
    "event_message",
    "input_frames",
    "kill_message",
    "parse_event",
    "resize_message",
    "start_message",
]

STDOUT = 1
STDERR = 2
FRAME_HEADER = 9
MAX_FRAME_PAYLOAD = 64 * 1024
"""The largest payload the local control plane puts in one output frame."""
MAX_INPUT_FRAME = 1024 * 1024
"""The largest standard-input payload a client sends in one binary frame."""

ProcessStatus = Literal["running", "completed", "failed", "cancelled", "timed_out"]
"""``completed``: the process exited (any exit code); ``failed``: it could not run or was
killed by a signal it did not ask for; ``cancelled``: it was killed through the API;
``timed_out``: its ``timeout_seconds`` ran out."""

_FINAL_STATUSES = frozenset(get_args(ProcessStatus)) - {"running"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_TERMINAL_SIDE = 10_000
_STREAM_NAMES: dict[int, Literal["stdout", "stderr"]] = {STDOUT: "stdout", STDERR: "stderr"}


class ProtocolError(ValueError):
    """A message or frame that does not follow the process protocol."""


@dataclass(frozen=True)
class ProcessOutput:
    """A piece of a process's output: its stream, its offset in the whole output, its bytes."""

    stream: Literal["stdout", "stderr"]
    offset: int
    data: bytes

    @property
    def text(self) -> str:
        """The bytes decoded as UTF-8 (undecodable bytes replaced)."""
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class ProcessResult:
    """How a process ended, and its output as text.

    ``exit_code`` is ``None`` when the process did not exit by itself (killed by a
    signal, never started). ``ok`` is true for a process that completed with exit code 0.
    """

    process_id: str
    status: ProcessStatus
    exit_code: int | None
    exit_reason: str | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the process completed with exit code 0."""
        return self.status == "completed" and self.exit_code == 0


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------


def encode_frame(stream: int, offset: int, payload: bytes) -> bytes:
    """One binary output frame."""
    if stream not in _STREAM_NAMES:
        raise ValueError(f"stream must be 1 (stdout) or 2 (stderr), got {stream!r}")
    if offset < 0 or offset >= 1 << 63:
        raise ValueError(f"offset {offset!r} is out of range")
    return bytes((stream,)) + offset.to_bytes(8, "big") + payload


def decode_frame(frame: bytes) -> tuple[int, int, bytes]:
    """``(stream, offset, payload)`` of a binary output frame."""
    if len(frame) < FRAME_HEADER or frame[0] not in _STREAM_NAMES:
        raise ProtocolError("invalid process output frame")
    return frame[0], int.from_bytes(frame[1:FRAME_HEADER], "big"), bytes(frame[FRAME_HEADER:])


class OutputCursor:
    """Follows a process's output across frames and reconnections.

    :meth:`feed` drops bytes already seen (a frame that overlaps the cursor is
    trimmed), so resuming from an offset never repeats output; a frame beyond
    the cursor (output the server no longer keeps) moves the cursor forward and
    is counted in :attr:`skipped`. With ``collect=True`` the text of each stream
    is kept (decoded incrementally, so a character split across frames survives).
    """

    def __init__(self, offset: int = 0, *, collect: bool = True) -> None:
        self.offset = offset
        self.skipped = 0
        self._collect = collect
        self._text: dict[int, list[str]] = {STDOUT: [], STDERR: []}
        self._decoders = {s: _decoder() for s in _STREAM_NAMES}

    def feed(self, frame: bytes) -> ProcessOutput | None:
        """The new part of ``frame``, or ``None`` when it holds nothing new."""
        stream, offset, payload = decode_frame(frame)
        end = offset + len(payload)
        if end <= self.offset:
            return None
        if offset > self.offset:
            self.skipped += offset - self.offset
            self._flush()
            self.offset = offset
        fresh = payload[self.offset - offset :]
        start = self.offset
        self.offset = end
        if self._collect:
            self._text[stream].append(self._decoders[stream].decode(fresh))
        return ProcessOutput(_STREAM_NAMES[stream], start, fresh)

    def _flush(self) -> None:
        if not self._collect:
            return
        for stream, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                self._text[stream].append(tail)
            self._decoders[stream] = _decoder()

    def text(self, stream: int) -> str:
        """The collected text of ``stream`` so far."""
        return "".join(self._text[stream])

    def result(self, process_id: str, event: Mapping[str, Any]) -> ProcessResult:
        """The :class:`ProcessResult` for an ``exit`` event (the cursor moves to its ``cursor``)."""
        self._flush()
        cursor = event.get("cursor")
        if isinstance(cursor, int) and cursor > self.offset:
            self.offset = cursor
        status = event.get("status")
        if status not in _FINAL_STATUSES:
            raise ProtocolError(f"exit event with an unknown status {status!r}")
        final = cast(ProcessStatus, status)
        code = event.get("exit_code")
        reason = event.get("exit_reason")
        return ProcessResult(
            process_id=process_id,
            status=final,
            exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
            exit_reason=reason if isinstance(reason, str) and reason else None,
            stdout=self.text(STDOUT),
            stderr=self.text(STDERR),
        )


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def start_message(
    command: str,
    *,
    terminal: bool | tuple[int, int] = False,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout_seconds: int | None = None,
) -> str:
    """``start``: run ``command`` with ``/bin/sh -c`` (``terminal`` is False, True or ``(cols, rows)``).

    Raises ``ValueError`` naming the bad argument (environment values are never
    quoted in the message: they may hold secrets).
    """
    if not isinstance(command, str) or not command.strip():
        raise ValueError("command must be a non-empty string")
    if "\x00" in command:
        raise ValueError("command must not contain a NUL byte")
    term: bool | dict[str, int]
    if isinstance(terminal, tuple):
        if len(terminal) != 2:
            raise ValueError("terminal must be False, True or a (cols, rows) pair")
        cols, rows = terminal
        term = {"cols": _side(cols, "terminal cols"), "rows": _side(rows, "terminal rows")}
    elif isinstance(terminal, bool):
        term = terminal
    else:
        raise ValueError("terminal must be False, True or a (cols, rows) pair")
    environment: dict[str, str] = {}
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"env name {name!r} is not a valid environment variable name")
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"env {name}: the value must be a string without NUL bytes")
        environment[name] = value
    message: dict[str, Any] = {
        "type": "start",
        "command": command,
        "terminal": term,
        "env": environment,
    }
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd or "\x00" in cwd:
            raise ValueError(f"cwd {cwd!r} is not a directory path")
        message["cwd"] = cwd
    if timeout_seconds is not None:
        if (
            isinstance(timeout_seconds, bool)
            or not isinstance(timeout_seconds, int)
            or timeout_seconds < 1
        ):
            raise ValueError(
                f"timeout_seconds must be a positive whole number of seconds, got {timeout_seconds!r}"
            )
        message["timeout_seconds"] = timeout_seconds
    return _dumps(message)


def _side(value: object, field: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= _MAX_TERMINAL_SIDE
    ):
        raise ValueError(
            f"{field} must be an integer from 1 to {_MAX_TERMINAL_SIDE}, got {value!r}"
        )
    return value


def input_frames(data: bytes | bytearray | memoryview | str) -> Iterator[bytes]:
    """Standard input as binary frames of at most :data:`MAX_INPUT_FRAME` bytes (text as UTF-8)."""
    if isinstance(data, str):
        payload = data.encode("utf-8")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        payload = bytes(data)
    else:
        raise TypeError(f"input must be bytes or str, not {type(data).__name__}")
    for start in range(0, len(payload), MAX_INPUT_FRAME):
        yield payload[start : start + MAX_INPUT_FRAME]


def attach_message(process_id: str, offset: int = 0) -> str:
    """``attach``: follow a running or finished process from ``offset``."""
    return _dumps({"type": "attach", "process_id": process_id, "offset": int(offset)})


def kill_message(process_id: str) -> str:
    """``kill``: stop a process (answered by ``{"type": "killed"}``)."""
    return _dumps({"type": "kill", "process_id": process_id})


def resize_message(process_id: str, cols: int, rows: int) -> str:
    """``resize``: change a terminal process's window (answered by ``{"type": "resized"}``)."""
    return _dumps(
        {
            "type": "resize",
            "process_id": process_id,
            "cols": _side(cols, "cols"),
            "rows": _side(rows, "rows"),
        }
    )


def close_stdin_message() -> str:
    """``close_stdin``: end the standard input of the process of this connection."""
    return _dumps({"type": "close_stdin"})


def event_message(kind: str, **fields: Any) -> str:
    """A server event (``started``, ``attached``, ``exit``, ``error``, ``killed``, ``resized``)."""
    return _dumps({"type": kind, **fields})


def parse_event(text: str) -> dict[str, Any]:
    """A JSON message of the protocol (either direction): an object with a string ``type``."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ProtocolError("a process message is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("a process message has no type")
    return data
