"""``archil sandboxes``: list, inspect, stop and delete sandboxes; run commands, read output."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ._base import ArchilGroup, json_option, state
from ._output import print_fields, print_json, print_table
from .disks import command_text

if TYPE_CHECKING:
    from .._process import ProcessOutput
    from .._sync.resources.sandboxes import Sandbox

__all__ = ["discard", "sandboxes", "write_output"]


@click.group(cls=ArchilGroup)
def sandboxes() -> None:
    """Sandboxes: the isolated machines functions, containers and shells run in."""


@sandboxes.command(
    "ls",
    epilog="\b\nExamples:\n  archil sandboxes ls\n  archil sandboxes ls --disk-id dsk-0123456789abcdef --json",
)
@click.option("--disk-id", default=None, help="Only the sandboxes that mount this disk.")
@json_option
def list_sandboxes(disk_id: str | None, as_json: bool) -> None:
    """List the sandboxes of the account."""
    items = state().client().sandboxes.list(disk_id=disk_id)
    if as_json:
        print_json([s.data for s in items])
        return
    print_table(
        ["ID", "NAME", "STATUS", "IMAGE", "VCPU", "MEM", "CREATED"],
        (
            [
                s.id,
                s.name,
                s.status,
                s.base_image or "-",
                s.vcpu_count,
                f"{s.mem_size_mib} MiB",
                s.created_at,
            ]
            for s in items
        ),
        empty="no sandboxes",
    )


@sandboxes.command("get", epilog="\b\nExample:\n  archil sandboxes get 8f14e45f-...")
@click.argument("sandbox_id")
@json_option
def get_sandbox(sandbox_id: str, as_json: bool) -> None:
    """Show one sandbox."""
    sandbox = state().client().sandboxes.get(sandbox_id)
    if as_json:
        print_json(sandbox.data)
        return
    data = sandbox.data
    print_fields(
        [
            ("id", data.sandbox_id),
            ("name", data.name),
            ("status", data.status),
            ("exit reason", data.exit_reason),
            ("image", data.base_image or "-"),
            ("vcpus", data.vcpu_count),
            ("memory", f"{data.mem_size_mib} MiB"),
            (
                "mounts",
                ", ".join(f"{m.disk_id} at {m.path or '/mnt/archil'}" for m in data.mounts) or "-",
            ),
            ("created", data.created_at),
            ("running since", data.running_at),
            ("finished", data.finished_at),
            ("last active", data.last_active_at),
            ("checkpoint", data.checkpoint),
        ]
    )


@sandboxes.command("stop", epilog="\b\nExample:\n  archil sandboxes stop 8f14e45f-...")
@click.argument("sandbox_id")
@json_option
def stop_sandbox(sandbox_id: str, as_json: bool) -> None:
    """Stop a sandbox (its processes end; its disk state is kept as a checkpoint)."""
    sandbox = state().client().sandboxes.get(sandbox_id).stop(wait=True)
    if as_json:
        print_json(sandbox.data)
        return
    click.echo(f"sandbox {sandbox.id} is {sandbox.status}", err=True)


def discard(sandbox: Sandbox) -> None:
    """Stop ``sandbox`` if it runs, then delete it."""
    if sandbox.status not in ("stopped", "exited", "failed", "deleted", "deleting"):
        sandbox.stop(wait=True)
    sandbox.delete()


@sandboxes.command("rm", epilog="\b\nExample:\n  archil sandboxes rm 8f14e45f-...")
@click.argument("sandbox_id")
def remove_sandbox(sandbox_id: str) -> None:
    """Stop a sandbox if it runs, then delete it."""
    discard(state().client().sandboxes.get(sandbox_id))
    click.echo(f"deleted sandbox {sandbox_id}", err=True)


def write_output(out: ProcessOutput) -> None:
    """A piece of a process's output, as bytes, to our stdout or stderr."""
    stream = sys.stdout if out.stream == "stdout" else sys.stderr
    stream.buffer.write(out.data)
    stream.buffer.flush()


@sandboxes.command(
    "exec",
    epilog="\b\nExamples:\n  archil sandboxes exec 8f14e45f-... -- python -c 'print(6 * 7)'\n"
    "  archil sandboxes exec 8f14e45f-... -- 'cd /mnt/archil && ls | wc -l'",
)
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True)
@click.option("--cwd", default=None, help="Working directory of the command.")
@click.option(
    "--timeout", type=click.IntRange(min=1), default=None, help="Kill it after this many seconds."
)
def exec_in_sandbox(
    sandbox_id: str, command: tuple[str, ...], cwd: str | None, timeout: int | None
) -> int:
    """Run a command in a running sandbox, streaming its output; its exit code is this command's.

    Ctrl-C kills the command.
    """
    sandbox = state().client().sandboxes.get(sandbox_id)
    process = sandbox.run(
        command_text(command), cwd=cwd, timeout_seconds=timeout, collect_output=False
    )
    with process:
        try:
            for out in process:
                write_output(out)
            result = process.wait()
        except KeyboardInterrupt:
            process.kill()
            raise
    if result.status == "completed" and result.exit_code is not None:
        return result.exit_code
    click.echo(
        f"archil: the command {result.status.replace('_', ' ')}"
        + (f": {result.exit_reason}" if result.exit_reason else ""),
        err=True,
    )
    return result.exit_code if result.exit_code is not None else 1


@sandboxes.command(
    "logs",
    epilog="\b\nExamples:\n  archil sandboxes logs 8f14e45f-... 3c59dc04-...\n"
    "  archil sandboxes logs 8f14e45f-... 3c59dc04-... --follow",
)
@click.argument("sandbox_id")
@click.argument("process_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the process ends.")
def sandbox_logs(sandbox_id: str, process_id: str, follow: bool) -> None:
    """Print the output of a process of a sandbox (all of it so far, or followed).

    The process id is printed by `archil run --detach`; a container's output is
    `archil containers logs`.
    """
    sandbox = state().client().sandboxes.get(sandbox_id)
    process = sandbox.attach(process_id, collect_output=False)
    with process:
        for out in process if follow else process.available():
            write_output(out)
