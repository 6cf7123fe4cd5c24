"""What the command line prints: tables and fields for people, JSON for scripts, progress.

Tables never truncate a value (ids are copied from them) and show times
relative to now; ``--json`` prints the models as ``model_dump(mode="json")``
gives them, so a script sees the Python SDK's field names.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "Transfer",
    "dumpable",
    "human_bytes",
    "print_fields",
    "print_json",
    "print_table",
    "progress",
    "relative_time",
]


def dumpable(value: Any) -> Any:
    """``value`` as JSON data: models dumped with ``mode="json"``, lists and dicts walked."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, dict):
        return {str(k): dumpable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [dumpable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(dumpable(value), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def relative_time(when: datetime | None, now: datetime | None = None) -> str:
    """``when`` relative to ``now``: ``12s ago``, ``5m ago``, ``3h ago``, ``2d ago`` (``-`` if none)."""
    if when is None:
        return "-"
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now or datetime.now(timezone.utc)
    seconds = int((current - when).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            amount = f"{seconds // size}{unit}"
            break
    else:
        if seconds < 2:
            return "just now"
        amount = f"{seconds}s"
    return f"in {amount}" if future else f"{amount} ago"


def human_bytes(size: float | None) -> str:
    """``size`` bytes as ``512 B``, ``1.5 KiB``, ``3.0 MiB``... (``-`` if unknown)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return relative_time(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "") -> None:
    """An aligned table on stdout (nothing truncated); ``empty`` on stderr when there are no rows."""
    cells = [[_cell(v) for v in row] for row in rows]
    if not cells:
        if empty:
            sys.stderr.write(empty + "\n")
        return
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *cells]:
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row))
        lines.append(line.rstrip())
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def print_fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """``name: value`` lines on stdout, the names aligned."""
    items = [(k, _cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        sys.stdout.write(f"{(key + ':').ljust(width + 1)} {value}\n")
    sys.stdout.flush()


_FRAMES = "|/-\\"


@contextmanager
def progress(message: str, *, done: str = "done") -> Iterator[None]:
    """Show that ``message`` is under way on stderr, then how long it took.

    On a terminal a spinner with the elapsed time turns on one line; otherwise
    one line when it starts and one when it ends, for logs.
    """
    stream = sys.stderr
    started = time.monotonic()
    live = stream.isatty()
    stop = threading.Event()
    spinner: threading.Thread | None = None
    if live:

        def spin() -> None:
            i = 0
            while not stop.wait(0.1):
                elapsed = time.monotonic() - started
                stream.write(f"\r{_FRAMES[i % len(_FRAMES)]} {message} ({elapsed:.1f}s)")
                stream.flush()
                i += 1

        spinner = threading.Thread(target=spin, name="archil-progress", daemon=True)
        spinner.start()
    else:
        stream.write(f"archil: {message}...\n")
        stream.flush()
    outcome = "failed"
    try:
        yield
        outcome = done
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        stop.set()
        if spinner is not None:
            spinner.join()
        elapsed = time.monotonic() - started
        prefix = "\r\x1b[2K" if live else ""
        stream.write(f"{prefix}archil: {message}: {outcome} in {elapsed:.1f}s\n")
        stream.flush()


class Transfer:
    """Progress of a transfer of ``total`` bytes (``None`` if unknown) on stderr.

    On a terminal, a bar with the bytes done, the total and the rate, redrawn
    at most ten times a second; otherwise a line when it starts and one when
    it ends, for logs. Use it as a context manager and call :meth:`add`.
    """

    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = sys.stderr
        self._live = self._stream.isatty()
        self._started = 0.0
        self._drawn = 0.0

    def __enter__(self) -> Transfer:
        self._started = time.monotonic()
        if self._live:
            self._draw()
        else:
            size = f" ({human_bytes(self.total)})" if self.total is not None else ""
            self._stream.write(f"archil: {self.label}{size}...\n")
            self._stream.flush()
        return self

    def add(self, count: int) -> None:
        """``count`` more bytes are done."""
        self.done += count
        if self._live and time.monotonic() - self._drawn >= 0.1:
            self._draw()

    def _rate(self) -> float:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return self.done / elapsed

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        rate = f"{human_bytes(self._rate())}/s"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            bar = "#" * int(fraction * 24)
            text = (
                f"{self.label} [{bar.ljust(24, '.')}] {fraction:4.0%} "
                f"{human_bytes(self.done)} / {human_bytes(self.total)} {rate}"
            )
        else:
            text = f"{self.label} {human_bytes(self.done)} {rate}"
        self._stream.write("\r\x1b[2K" + text)
        self._stream.flush()

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        elapsed = time.monotonic() - self._started
        if exc_type is None:
            outcome = f"{human_bytes(self.done)} in {elapsed:.1f}s ({human_bytes(self._rate())}/s)"
        else:
            outcome = "interrupted" if exc_type is KeyboardInterrupt else "failed"
            outcome += f" after {human_bytes(self.done)}"
        prefix = "\r\x1b[2K" if self._live else ""
        self._stream.write(f"{prefix}archil: {self.label}: {outcome}\n")
        self._stream.flush()
