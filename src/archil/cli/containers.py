"""``archil containers``: containers (a sandbox with a disk and one command)."""

from __future__ import annotations

import sys

import click

from ._base import ArchilGroup, json_option, state
from ._output import print_fields, print_json, print_table

__all__ = ["containers"]

_STATUSES = ["pending", "running", "exited", "paused", "stopped", "failed"]


@click.group(cls=ArchilGroup)
def containers() -> None:
    """Containers: a sandbox with a disk at /mnt/archil running one command."""


@containers.command(
    "ls",
    epilog="\b\nExamples:\n  archil containers ls\n  archil containers ls --status running --json",
)
@click.option("--status", type=click.Choice(_STATUSES), default=None, help="Only in this state.")
@click.option("--disk-id", default=None, help="Only the containers on this disk.")
@json_option
def list_containers(status: str | None, disk_id: str | None, as_json: bool) -> None:
    """List the containers of the account."""
    items = list(state().client().containers.list(status=status, disk_id=disk_id))
    if as_json:
        print_json(items)
        return
    print_table(
        ["ID", "STATUS", "EXIT", "DISK", "COMMAND", "CREATED"],
        (
            [
                c.container_id,
                c.status,
                c.exit_code,
                (c.archil_mount or {}).get("disk_id") or (c.archil_mount or {}).get("diskId"),
                _short(c.command),
                c.created_at,
            ]
            for c in items
        ),
        empty="no containers",
    )


def _short(command: str | None, width: int = 40) -> str:
    """A command on one line, shortened for a table (ids are never shortened, commands are)."""
    if not command:
        return "-"
    line = " ".join(command.split())
    return line if len(line) <= width else line[: width - 3] + "..."


@containers.command("get", epilog="\b\nExample:\n  archil containers get 8f14e45f-...")
@click.argument("container_id")
@json_option
def get_container(container_id: str, as_json: bool) -> None:
    """Show one container."""
    c = state().client().containers.get(container_id)
    if as_json:
        print_json(c)
        return
    print_fields(
        [
            ("id", c.container_id),
            ("status", c.status),
            ("exit code", c.exit_code),
            ("failure", c.failure_reason),
            ("disk", (c.archil_mount or {}).get("disk_id")),
            ("command", c.command),
            ("vcpus", c.vcpu_count),
            ("memory", f"{c.mem_size_mib} MiB" if c.mem_size_mib else None),
            ("metadata", ", ".join(f"{k}={v}" for k, v in c.metadata.items()) or None),
            ("created", c.created_at),
            ("started", c.started_at),
            ("finished", c.finished_at),
        ]
    )


@containers.command(
    "logs",
    epilog="\b\nExamples:\n  archil containers logs 8f14e45f-...\n"
    "  archil containers logs 8f14e45f-... --follow",
)
@click.argument("container_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the command ends.")
def container_logs(container_id: str, follow: bool) -> None:
    """Print a container's output (stdout to stdout, stderr to stderr)."""
    for entry in state().client().containers.logs(container_id, follow=follow):
        stream = sys.stdout if entry.stream == "stdout" else sys.stderr
        stream.write(entry.data)
        stream.flush()


@containers.command("stop", epilog="\b\nExample:\n  archil containers stop 8f14e45f-...")
@click.argument("container_id")
@json_option
def stop_container(container_id: str, as_json: bool) -> None:
    """Stop a container (its command is ended)."""
    c = state().client().containers.stop(container_id)
    if as_json:
        print_json(c)
        return
    click.echo(f"container {c.container_id} is {c.status}", err=True)


@containers.command("rm", epilog="\b\nExample:\n  archil containers rm 8f14e45f-...")
@click.argument("container_id")
def remove_container(container_id: str) -> None:
    """Stop a container if it runs, then delete it."""
    state().client().containers.delete(container_id)
    click.echo(f"deleted container {container_id}", err=True)
