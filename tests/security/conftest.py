"""The secret scanner shared by the security tests.

:class:`SecretScan` holds the secrets a test has seen (the API key, disk tokens, bucket
secrets, process connection tokens...) under a label, records every log record of every
logger at DEBUG while the test runs, and checks that no secret appears in them, in the
test's captured stdout and stderr, in any text the test hands it (reprs, exception
messages and tracebacks), or in any file under a directory (what a disk holds)::

    def test_something(secret_scan: SecretScan) -> None:
        secret_scan.add("api key", key)
        ...
        secret_scan.check_text("repr(client)", repr(client))
        secret_scan.check_exception(exc)
        secret_scan.check_files("the disk", disk_dir)
        # the logs and the captured output are checked when the test ends

A new kind of secret is covered by calling :meth:`SecretScan.add` with it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

_LOGGERS = ("", "archil", "archil.local", "httpx", "httpcore", "uvicorn", "uvicorn.error")


class _Everything(logging.Handler):
    """Keeps every record, formatted the way a handler would write it (arguments and
    exception text included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot be formatted is a finding too
            self.lines.append(f"unformattable record {record.msg!r} {record.args!r}: {exc}")


class SecretScan:
    """Secrets by label, and the checks that none of them leaks."""

    def __init__(self, handler: _Everything) -> None:
        self.secrets: dict[str, str] = {}
        self._handler = handler
        self.checked: list[str] = []

    def add(self, label: str, value: str | None) -> None:
        """Watch ``value`` from now on (values shorter than 8 characters are refused)."""
        assert value and len(value) >= 8, f"{label}: too short to scan for"
        self.secrets[label] = value

    def leaks(self, text: str) -> list[str]:
        return [label for label, value in self.secrets.items() if value in text]

    def check_text(self, where: str, text: str) -> None:
        self.checked.append(where)
        leaked = self.leaks(text)
        assert not leaked, f"{', '.join(leaked)} in {where}: {text[:2000]}"

    def check_exception(self, exc: BaseException) -> None:
        """Its message, repr, arguments and whole traceback (chained exceptions too)."""
        text = "".join(traceback.format_exception(exc))
        self.check_text(f"{type(exc).__name__}", f"{exc}\n{exc!r}\n{exc.args!r}\n{text}")

    def check_files(self, where: str, root: Path) -> int:
        """Every file under ``root``; returns how many were read."""
        count = 0
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                leaked = [k for k, v in self.secrets.items() if v.encode() in data]
                assert not leaked, f"{', '.join(leaked)} in {where}: {path}"
                count += 1
        self.checked.append(where)
        return count

    def log_lines(self) -> list[str]:
        return list(self._handler.lines)

    def check_logs(self) -> None:
        lines = self.log_lines()
        self.check_text(f"the logs ({len(lines)} records)", "\n".join(lines))


@pytest.fixture
def secret_scan(capfd: pytest.CaptureFixture[str]) -> Iterator[SecretScan]:
    """A :class:`SecretScan` that records every logger at DEBUG during the test, and checks
    the logs and the captured stdout and stderr when the test ends."""
    handler = _Everything()
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [lg.level for lg in loggers]
    root = logging.getLogger()
    root.addHandler(handler)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    scan = SecretScan(handler)
    try:
        yield scan
    finally:
        root.removeHandler(handler)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    scan.check_logs()
    out, err = capfd.readouterr()
    scan.check_text("stdout", out)
    scan.check_text("stderr", err)
