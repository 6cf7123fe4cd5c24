"""``archil disks``: list, inspect, create and delete disks; users, directories, exec."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import click

from ._base import ArchilGroup, fail, json_option, state
from ._output import Transfer, human_bytes, print_fields, print_json, print_table

__all__ = ["command_text", "disks"]


@click.group(cls=ArchilGroup)
def disks() -> None:
    """Disks: the storage apps and sandboxes live on."""


@disks.command("ls", epilog="\b\nExamples:\n  archil disks ls\n  archil disks ls --json")
@click.option("--name", default=None, help="Only the disk with this name.")
@json_option
def list_disks(name: str | None, as_json: bool) -> None:
    """List the disks of the account."""
    items = list(state().client().disks.list(name=name))
    if as_json:
        print_json(items)
        return
    print_table(
        ["ID", "NAME", "STATUS", "REGION", "DATA", "CREATED"],
        (
            [d.id, d.name, d.status, d.region, human_bytes(d.active_data_bytes), d.created_at]
            for d in items
        ),
        empty="no disks",
    )


@disks.command("get", epilog="\b\nExample:\n  archil disks get dsk-0123456789abcdef")
@click.argument("disk_id")
@json_option
def get_disk(disk_id: str, as_json: bool) -> None:
    """Show one disk."""
    disk = state().client().disks.get(disk_id)
    if as_json:
        print_json(disk)
        return
    print_fields(
        [
            ("id", disk.id),
            ("name", disk.name),
            ("status", disk.status),
            ("provider", disk.provider),
            ("region", disk.region),
            ("created", disk.created_at),
            ("last accessed", disk.last_accessed),
            ("data", human_bytes(disk.active_data_bytes)),
            ("mounts", ", ".join(m.name or m.type or "?" for m in disk.mounts) or "-"),
            ("users", ", ".join(_user_label(u) for u in disk.authorized_users) or "-"),
        ]
    )


def _user_label(user: Any) -> str:
    label = user.nickname or user.principal or user.identifier or "?"
    return f"{label} ({user.type})" if user.type else str(label)


@disks.command("create", epilog="\b\nExample:\n  archil disks create my-data")
@click.argument("name")
@json_option
def create_disk(name: str, as_json: bool) -> None:
    """Create a disk on Archil-managed storage (the same name again returns that disk).

    The one-time tokens of the users made for it are printed once, here.
    """
    disk = state().client().disks.create(name)
    data = disk.model_dump(mode="json")
    for i, user in enumerate(disk.authorized_users):
        if user.token is not None:
            data["authorized_users"][i]["token"] = user.token.get_secret_value()
    if as_json:
        print_json(data)
        return
    print_fields([("id", disk.id), ("name", disk.name), ("status", disk.status)])
    for user in disk.authorized_users:
        if user.token is not None:
            print_fields([(f"token of {_user_label(user)}", user.token.get_secret_value())])


def _confirm(what: str, yes: bool) -> None:
    """Ask before a deletion on a terminal; elsewhere require ``--yes``."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"deleting {what} needs --yes when not run from a terminal")
    if not click.confirm(f"Delete {what}?", default=False, err=True):
        raise fail("nothing deleted")


@disks.command("rm", epilog="\b\nExample:\n  archil disks rm dsk-0123456789abcdef --yes")
@click.argument("disk_id")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def remove_disk(disk_id: str, yes: bool) -> None:
    """Delete a disk and everything on it."""
    _confirm(f"disk {disk_id} and everything on it", yes)
    state().client().disks.delete(disk_id)
    click.echo(f"deleted disk {disk_id}", err=True)


@disks.group("users", cls=ArchilGroup)
def users() -> None:
    """The users authorized to mount a disk."""


@users.command(
    "add",
    epilog="\b\nExamples:\n  archil disks users add dsk-0123456789abcdef --nickname laptop\n"
    "  archil disks users add dsk-0123456789abcdef --type awssts "
    "--principal arn:aws:iam::123456789012:role/r",
)
@click.argument("disk_id")
@click.option(
    "--type",
    "user_type",
    type=click.Choice(["token", "awssts"]),
    default="token",
    show_default=True,
    help="A token user, or an AWS STS principal.",
)
@click.option("--nickname", default=None, help="The token user's name.")
@click.option("--principal", default=None, help="The AWS principal (ARN) of an awssts user.")
@click.option("--token-suffix", default=None, help="The suffix of a token you already hold.")
@json_option
def add_user(
    disk_id: str,
    user_type: str,
    nickname: str | None,
    principal: str | None,
    token_suffix: str | None,
    as_json: bool,
) -> None:
    """Authorize a user to mount a disk; a new token is printed once, here."""
    user = (
        state()
        .client()
        .disks.add_user(
            disk_id,
            "awssts" if user_type == "awssts" else "token",
            principal=principal,
            nickname=nickname,
            token_suffix=token_suffix,
        )
    )
    data = user.model_dump(mode="json")
    if user.token is not None:
        data["token"] = user.token.get_secret_value()
    if as_json:
        print_json(data)
        return
    print_fields((k, v) for k, v in data.items() if v is not None)


@users.command(
    "rm", epilog="\b\nExample:\n  archil disks users rm dsk-0123456789abcdef token laptop"
)
@click.argument("disk_id")
@click.argument("user_type", metavar="TYPE", type=click.Choice(["token", "awssts"]))
@click.argument("identifier")
def remove_user(disk_id: str, user_type: str, identifier: str) -> None:
    """Remove an authorized user (TYPE token or awssts, IDENTIFIER as the server named it)."""
    state().client().disks.remove_user(
        disk_id, "awssts" if user_type == "awssts" else "token", identifier
    )
    click.echo(f"removed {user_type} user {identifier} from disk {disk_id}", err=True)


@disks.command(
    "ls-dir",
    epilog="\b\nExamples:\n  archil disks ls-dir dsk-0123456789abcdef\n"
    "  archil disks ls-dir dsk-0123456789abcdef models/checkpoints",
)
@click.argument("disk_id")
@click.argument("path", default="/")
@json_option
def list_directory(disk_id: str, path: str, as_json: bool) -> None:
    """List a directory of a disk (PATH from the disk's root, default the root)."""
    client_disks = state().client().disks
    listing = client_disks.read_directory(disk_id, 1)
    walked: list[str] = []
    for part in [p for p in path.split("/") if p and p != "."]:
        entry = next((e for e in listing.entries if e.name == part), None)
        walked.append(part)
        if entry is None:
            raise fail(f"{'/'.join(walked)}: no such file or directory on disk {disk_id}")
        if entry.type != "directory":
            raise fail(f"{'/'.join(walked)}: not a directory on disk {disk_id}")
        listing = client_disks.read_directory(disk_id, entry.inode_id)
    if as_json:
        print_json(listing)
        return
    print_table(
        ["NAME", "TYPE", "SIZE", "MODIFIED"],
        (
            [
                e.name + ("/" if e.type == "directory" else ""),
                e.type,
                human_bytes(e.size) if e.type == "file" else "-",
                e.modified_at,
            ]
            for e in sorted(listing.entries, key=lambda e: e.name)
        ),
        empty=f"{'/'.join(walked) or '/'} is empty",
    )


def command_text(words: Sequence[str]) -> str:
    """The shell command of the words after ``--``: one word as it is, several quoted and joined."""
    if not words:
        raise click.UsageError("give the command after --, e.g. -- ls -la /mnt/archil")
    return words[0] if len(words) == 1 else shlex.join(words)


@disks.command(
    "exec",
    epilog="\b\nExamples:\n  archil disks exec dsk-0123456789abcdef -- ls -la /mnt/archil\n"
    "  archil disks exec dsk-0123456789abcdef -- 'du -sh /mnt/archil/* | sort -h'",
)
@click.argument("disk_id")
@click.argument("command", nargs=-1, required=True)
@click.option(
    "--timeout", type=click.FloatRange(0, min_open=True), default=None, help="Seconds to wait."
)
@json_option
def exec_on_disk(
    disk_id: str, command: tuple[str, ...], timeout: float | None, as_json: bool
) -> int:
    """Run a shell command in a short-lived container with the disk at /mnt/archil.

    Its output is printed and its exit code is this command's.
    """
    result = state().client().disks.exec(disk_id, command_text(command), timeout=timeout)
    if as_json:
        print_json(result)
        return result.exit_code
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    sys.stderr.flush()
    return result.exit_code


_CHUNK = 1 << 20


def _remote(text: str) -> tuple[str, str] | None:
    """``(disk_id, key)`` of ``DISK_ID:KEY``; ``None`` for a local path."""
    if text.startswith(("/", "./", "../", "~")) or ":" not in text:
        return None
    disk_id, _, key = text.partition(":")
    return (disk_id, key.lstrip("/")) if disk_id else None


@disks.command(
    "cp",
    epilog="\b\nExamples:\n"
    "  archil disks cp data.csv dsk-0123456789abcdef:datasets/\n"
    "  archil disks cp dsk-0123456789abcdef:models/model.bin ./model.bin",
)
@click.argument("source")
@click.argument("destination")
@json_option
def copy(source: str, destination: str, as_json: bool) -> None:
    """Copy a file to a disk or from one; the disk side is written DISK_ID:PATH.

    A destination ending with / (or a local directory) keeps the source's file
    name. Progress is shown on stderr: a bar with bytes and rate on a
    terminal, a line at the start and at the end otherwise.
    """
    from pathlib import Path

    src, dst = _remote(source), _remote(destination)
    if (src is None) == (dst is None):
        raise click.UsageError("give one local path and one DISK_ID:PATH")
    objects = state().client().objects
    if dst is not None:
        local = Path(source).expanduser()
        if not local.is_file():
            raise fail(f"{source}: not a file")
        disk_id, key = dst
        if not key or key.endswith("/"):
            key += local.name
        size = local.stat().st_size
        with Transfer(f"uploading {local.name} to {disk_id}:{key}", size) as bar:

            def chunks() -> Iterator[bytes]:
                with local.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        bar.add(len(chunk))
                        yield chunk

            info = objects.put(disk_id, key, chunks())
    else:
        assert src is not None
        disk_id, key = src
        if not key or key.endswith("/"):
            raise click.UsageError("the source must be a file: DISK_ID:PATH/TO/FILE")
        target = Path(destination).expanduser()
        if target.is_dir() or destination.endswith("/"):
            target = target / key.rsplit("/", 1)[-1]
        head = objects.head(disk_id, key)
        partial = target.with_name(f".{target.name}.partial")
        with Transfer(f"downloading {disk_id}:{key} to {target}", head.size) as bar:
            try:
                with partial.open("wb") as f:
                    for chunk in objects.iter_bytes(disk_id, key, chunk_size=_CHUNK):
                        f.write(chunk)
                        bar.add(len(chunk))
                partial.replace(target)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        info = head
    if as_json:
        print_json(info)
