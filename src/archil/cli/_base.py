"""What every command of the ``archil`` command line shares.

The click classes (so that every command, generated ones included, prints
``usage:`` the same way), the state the root group keeps (the client, ``--debug``),
``--json``, and how an exception becomes one line on stderr and an exit code.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from .._client import Archil

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "ArchilCommand",
    "ArchilContext",
    "ArchilGroup",
    "CliState",
    "fail",
    "json_option",
    "report_error",
    "state",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


class _HelpFormatter(click.HelpFormatter):
    """Click's formatter, with ``usage:`` in lower case as in the rest of the toolchain."""

    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        super().write_usage(prog, args, "usage: " if prefix is None else prefix)


class ArchilContext(click.Context):
    """The context of every ``archil`` command."""

    formatter_class = _HelpFormatter


class ArchilCommand(click.Command):
    """A command of the ``archil`` command line."""

    context_class = ArchilContext


class ArchilGroup(click.Group):
    """A group of commands; its subcommands and subgroups use the archil classes too."""

    context_class = ArchilContext
    command_class = ArchilCommand
    group_class = type


class CliState:
    """What the root group knows: ``--debug`` and the client, made on first use."""

    def __init__(self) -> None:
        self.debug = False
        self._client: Archil | None = None

    def client(self) -> Archil:
        """The blocking client, configured by the options and ``ARCHIL_*`` variables."""
        if self._client is None:
            from .._client import Archil

            self._client = Archil()
        return self._client

    def close(self) -> None:
        """Close the client (and wait for its background cleanup)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


_STATE = CliState()


def state() -> CliState:
    """The state of this invocation."""
    return _STATE


def reset_state() -> CliState:
    """A fresh state for a new invocation of :func:`archil.cli.main`."""
    global _STATE
    _STATE = CliState()
    return _STATE


def json_option(f: F) -> F:
    """``--json``: one JSON document on stdout instead of text for people."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON document (the Python models' field names) for scripts.",
    )(f)


def fail(message: str) -> click.ClickException:
    """An error that ends the command with exit code 1 and ``message`` on stderr."""
    return click.ClickException(message)


def _scrub(text: str) -> str:
    """``text`` without the API key, whatever produced it."""
    key = os.environ.get("ARCHIL_API_KEY", "")
    if len(key) >= 4:
        text = text.replace(key, "***")
    return text


def one_line(exc: BaseException) -> str:
    """An exception as one line of text (its first line; the type when it has no message)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    from .._errors import ArchilError

    if not first:
        return type(exc).__name__
    if isinstance(exc, (ArchilError, click.ClickException, OSError, ValueError)):
        return first
    return f"{type(exc).__name__}: {first}"


def report_error(exc: BaseException) -> None:
    """Print ``exc`` on stderr: one line, after the traceback with ``--debug``."""
    if _STATE.debug:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(_scrub(text))
    message = exc.format_message() if isinstance(exc, click.ClickException) else one_line(exc)
    sys.stderr.write(f"archil: error: {_scrub(message)}\n")
    sys.stderr.flush()
