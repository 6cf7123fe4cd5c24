"""``archil images``: sandbox images built from OCI references."""

from __future__ import annotations

import click

from ._base import ArchilGroup, json_option, state
from ._output import print_fields, print_json, print_table, progress

__all__ = ["images"]


@click.group(cls=ArchilGroup)
def images() -> None:
    """Sandbox images, built from OCI references."""


@images.command("ls", epilog="\b\nExamples:\n  archil images ls\n  archil images ls --json")
@json_option
def list_images(as_json: bool) -> None:
    """List the images requested on this control plane (a local control plane extension)."""
    items = state().client().images.list()
    if as_json:
        print_json(items)
        return
    print_table(
        ["ID", "SOURCE", "STATUS", "CREATED"],
        ([i.image_id, i.source, i.status, i.created_at] for i in items),
        empty="no images",
    )


@images.command(
    "build",
    epilog="\b\nExamples:\n  archil images build python:3.11-slim\n"
    "  archil images build debian:bookworm-slim --json",
)
@click.argument("source")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=1800.0,
    show_default=True,
    help="Seconds to wait for the build.",
)
@json_option
def build_image(source: str, timeout: float, as_json: bool) -> None:
    """Build an image from an OCI reference (or join its build) and wait until it is ready."""
    client = state().client()
    with progress(f"building image {source}", done="ready"):
        image = client.images.build(source, timeout=timeout)
    if as_json:
        print_json(image)
        return
    print_fields(
        [
            ("id", image.image_id),
            ("source", image.source),
            ("status", image.status),
            ("digest", image.digest),
        ]
    )


@images.command("get", epilog="\b\nExample:\n  archil images get img-0123456789abcdef")
@click.argument("image_id")
@json_option
def get_image(image_id: str, as_json: bool) -> None:
    """Show one image and its build state."""
    image = state().client().images.get(image_id)
    if as_json:
        print_json(image)
        return
    print_fields(
        [
            ("id", image.image_id),
            ("source", image.source),
            ("status", image.status),
            ("digest", image.digest),
            ("failure", image.failure_reason),
            ("created", image.created_at),
        ]
    )
