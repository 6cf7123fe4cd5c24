"""The ``archil`` command line (``archil --help``; also ``python -m archil``).

One module per group of commands: :mod:`.run` (``archil run``), :mod:`.shell`
(``archil shell``), :mod:`.disks`, :mod:`.sandboxes`, :mod:`.containers`,
:mod:`.tokens`, :mod:`.images` and :mod:`.local` (``archil local serve|status``).
Commands use the blocking client :class:`archil.Archil`, configured by
``--api-key``/``--region``/``--base-url`` or the SDK's ``ARCHIL_*`` variables;
with none set they use the embedded local control plane, as the SDK does.

Exit codes: 0 on success, 1 on failure (one line on stderr, the traceback too
with ``--debug``), 2 for a usage error, 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from .. import __version__
from ._base import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ArchilGroup,
    report_error,
    reset_state,
    state,
)
from .containers import containers
from .disks import disks
from .images import images
from .local import local
from .run import run
from .sandboxes import sandboxes
from .shell import shell
from .tokens import tokens

__all__ = ["cli", "main"]


@click.group(
    cls=ArchilGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=(
        "\b\nExamples:\n"
        "  archil run app.py::train --epochs 3\n"
        "  archil shell dsk-0123456789abcdef\n"
        "  archil disks ls --json\n"
        "  archil local status"
    ),
)
@click.option(
    "--api-key",
    metavar="KEY",
    default=None,
    help="API key (default: $ARCHIL_API_KEY). Never printed. With no key and no base URL, "
    "the embedded local control plane is used.",
)
@click.option(
    "--region", default=None, help="Control plane region (default: $ARCHIL_REGION, aws-us-east-1)."
)
@click.option(
    "--base-url", default=None, help="Control plane URL (default: $ARCHIL_BASE_URL, the region's)."
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.version_option(__version__, "--version", prog_name="archil")
def cli(api_key: str | None, region: str | None, base_url: str | None, debug: bool) -> None:
    """Archil from the command line: run functions, open shells, manage every resource."""
    current = state()
    current.debug = debug
    # The settings go where both the CLI's client and the apps that `archil run` imports
    # look for them: this process's environment.
    for name, value in (
        ("ARCHIL_API_KEY", api_key),
        ("ARCHIL_REGION", region),
        ("ARCHIL_BASE_URL", base_url),
    ):
        if value is not None:
            os.environ[name] = value
    click.get_current_context().call_on_close(current.close)


for _command in (run, shell, disks, sandboxes, containers, tokens, images, local):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``archil`` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    current = reset_state()
    try:
        result = cli.main(args, prog_name="archil", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        report_error(exc)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        sys.stderr.write("archil: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        report_error(exc)
        return EXIT_FAILURE
    finally:
        current.close()
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return 0
