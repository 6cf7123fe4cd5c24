"""A call's output on the caller's side: printed as it arrives, its tail kept for errors."""

from __future__ import annotations

import codecs
import sys
from typing import IO

__all__ = ["LogPrinter", "OutputTail"]


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
