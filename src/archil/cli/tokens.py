"""``archil tokens``: the API keys of the account."""

from __future__ import annotations

import click

from ._base import ArchilGroup, json_option, state
from ._output import print_fields, print_json, print_table

__all__ = ["tokens"]


@click.group(cls=ArchilGroup)
def tokens() -> None:
    """API keys: list, create and revoke them."""


@tokens.command("ls", epilog="\b\nExamples:\n  archil tokens ls\n  archil tokens ls --json")
@json_option
def list_tokens(as_json: bool) -> None:
    """List the API keys of the account (their records, never the keys)."""
    items = list(state().client().tokens.list())
    if as_json:
        print_json(items)
        return
    print_table(
        ["ID", "NAME", "SUFFIX", "CREATED", "LAST USED"],
        ([t.id, t.name, t.token_suffix, t.created_at, t.last_used_at] for t in items),
        empty="no API keys",
    )


@tokens.command(
    "create", epilog="\b\nExample:\n  archil tokens create ci --description 'CI runners'"
)
@click.argument("name")
@click.option("--description", default=None, help="What the key is for.")
@json_option
def create_token(name: str, description: str | None, as_json: bool) -> None:
    """Create an API key; the key is printed once, here, and never again."""
    created = state().client().tokens.create(name, description=description)
    data = created.model_dump(mode="json")
    if created.token is not None:
        data["token"] = created.token.get_secret_value()
    if as_json:
        print_json(data)
        return
    print_fields([("id", created.id), ("name", created.name), ("token", data.get("token"))])
    click.echo("archil: keep the token now: it is not shown again", err=True)


@tokens.command("rm", epilog="\b\nExample:\n  archil tokens rm tok_0123456789abcdef")
@click.argument("token_id")
def remove_token(token_id: str) -> None:
    """Revoke and delete an API key."""
    state().client().tokens.delete(token_id)
    click.echo(f"deleted API key {token_id}", err=True)
