"""Bad input to the client's resources, sent through a client to a real local server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import archil

from .conftest import BADINPUT, Server, attempt
from .strategies import (
    bad_ids,
    bad_ports,
    bad_sandbox_names,
    env_names,
    guest_paths,
    ids,
    image_references,
    mount_specs,
    not_a_string,
    object_keys,
    out_of,
    port_lists,
    sizes,
    subdirectories,
    text,
)

# -- disks and tokens -------------------------------------------------------------------------


@BADINPUT
@given(disk_id=st.one_of(ids, not_a_string))
def test_disk_lookups(server: Server, client: archil.Archil, disk_id: Any) -> None:
    fields = ("disk_id",)
    attempt(server, "disks.get", disk_id, lambda: client.disks.get(disk_id), fields)
    attempt(server, "disks.delete", disk_id, lambda: client.disks.delete(disk_id), fields)
    attempt(
        server,
        "disks.read_directory",
        disk_id,
        lambda: client.disks.read_directory(disk_id),
        fields,
    )
    attempt(
        server,
        "disks.add_user",
        disk_id,
        lambda: client.disks.add_user(disk_id, nickname="n"),
        fields,
    )
    attempt(
        server,
        "containers.list(disk_id)",
        disk_id,
        lambda: list(client.containers.list(disk_id=disk_id)),
        fields,
    )


@BADINPUT
@given(name=st.one_of(text, not_a_string))
def test_disk_names(server: Server, client: archil.Archil, name: Any) -> None:
    attempt(
        server,
        "disks.create(name)",
        name,
        lambda: client.disks.create(name=name),
        ("name",),
        cleanup=lambda disk: client.disks.delete(disk.id),
    )


@BADINPUT
@given(mount=mount_specs, provider=st.one_of(st.none(), text))
@example(mount={"disk_id": None}, provider="r2")  # the error must name mounts[0], not just disk_id
def test_disk_bucket_mounts(
    server: Server, client: archil.Archil, mount: dict[str, Any], provider: str | None
) -> None:
    spec = {"provider": provider, **mount} if provider is not None else mount
    attempt(
        server,
        "disks.create(mounts)",
        spec,
        lambda: client.disks.create(name="bucket", mounts=[spec]),
        ("mounts", "provider", "bucket"),
        cleanup=lambda disk: client.disks.delete(disk.id),
    )


@BADINPUT
@given(nickname=st.one_of(text, not_a_string), user_type=st.one_of(text, st.just("token")))
def test_disk_users(
    server: Server, client: archil.Archil, disk: str, nickname: Any, user_type: Any
) -> None:
    def remove(user: archil.AuthorizedUser) -> None:
        assert user.identifier
        client.disks.remove_user(disk, "token", user.identifier)

    attempt(
        server,
        "disks.add_user",
        (user_type, nickname),
        lambda: client.disks.add_user(disk, user_type=user_type, nickname=nickname),
        ("nickname", "user_type", "type"),
        cleanup=remove,
    )


@BADINPUT
@given(name=st.one_of(text, not_a_string), description=st.one_of(st.none(), text))
def test_tokens(server: Server, client: archil.Archil, name: Any, description: Any) -> None:
    attempt(
        server,
        "tokens.create",
        (name, description),
        lambda: client.tokens.create(name, description=description),
        ("name", "description"),
        cleanup=lambda token: client.tokens.delete(token.id),
    )
    attempt(server, "tokens.delete", name, lambda: client.tokens.delete(name), ("token_id",))


# -- objects -----------------------------------------------------------------------------------


@BADINPUT
@given(key=object_keys)
def test_object_keys(server: Server, client: archil.Archil, disk: str, key: str) -> None:
    fields = ("key",)

    def put() -> Any:
        return client.objects.put(disk, key, b"payload")

    outcome = attempt(
        server, "objects.put", key, put, fields, cleanup=lambda _: client.objects.delete(disk, key)
    )
    for name, call in (
        ("objects.get", lambda: client.objects.get(disk, key)),
        ("objects.head", lambda: client.objects.head(disk, key)),
        ("objects.delete", lambda: client.objects.delete(disk, key)),
        ("objects.append", lambda: client.objects.append(disk, key, b"x")),
        ("objects.multipart.create", lambda: client.objects.multipart.create(disk, key)),
    ):
        attempt(server, name, key, call, fields, cleanup=_undo(client, disk, key, name))
    attempt(
        server,
        "objects.list(prefix)",
        key,
        lambda: list(client.objects.list(disk, prefix=key)),
        ("prefix",),
    )
    if outcome == "ok":  # a key the SDK took went to the disk and nowhere else
        assert client.objects.get(disk, "kept.txt") == b"kept"


def _undo(client: archil.Archil, disk: str, key: str, name: str) -> Any:
    def undo(result: Any) -> None:
        if name == "objects.append":
            client.objects.delete(disk, key)
        elif name == "objects.multipart.create":
            client.objects.multipart.abort(disk, key, result.upload_id)

    return undo


@BADINPUT
@given(disk_id=st.one_of(bad_ids, not_a_string), key=st.sampled_from(["k", "../k"]))
def test_object_disk_ids(server: Server, client: archil.Archil, disk_id: Any, key: str) -> None:
    fields = ("disk_id", "key")
    attempt(
        server,
        "objects.put(disk_id)",
        disk_id,
        lambda: client.objects.put(disk_id, key, b"x"),
        fields,
    )
    attempt(
        server, "objects.get(disk_id)", disk_id, lambda: client.objects.get(disk_id, key), fields
    )
    attempt(
        server,
        "objects.list(disk_id)",
        disk_id,
        lambda: list(client.objects.list(disk_id)),
        fields,
    )


@BADINPUT
@given(part_size=sizes, threshold=sizes, concurrency=sizes)
def test_object_transfer_sizes(
    server: Server,
    client: archil.Archil,
    disk: str,
    part_size: Any,
    threshold: Any,
    concurrency: Any,
) -> None:
    for name, kwargs in (
        ("objects.put(part_size)", {"part_size": part_size}),
        ("objects.put(multipart_threshold)", {"multipart_threshold": threshold}),
        ("objects.put(concurrency)", {"concurrency": concurrency}),
    ):
        value = next(iter(kwargs.values()))
        attempt(
            server,
            name,
            value,
            lambda kw=kwargs: client.objects.put(disk, "sized.bin", b"x" * 10, **kw),  # type: ignore[misc]
            tuple(kwargs),
            cleanup=lambda _: client.objects.delete(disk, "sized.bin"),
        )
    attempt(
        server,
        "objects.list(page_size)",
        part_size,
        lambda: list(client.objects.list(disk, page_size=part_size)),
        ("page_size",),
    )


# -- images ------------------------------------------------------------------------------------


@BADINPUT
@given(source=st.one_of(image_references, not_a_string.filter(lambda v: not isinstance(v, bytes))))
def test_image_references(server: Server, client: archil.Archil, source: Any) -> None:
    attempt(server, "images.build", source, lambda: client.images.build(source), ("source",))


@BADINPUT
@given(image_id=st.one_of(ids, not_a_string))
def test_image_ids(server: Server, client: archil.Archil, image_id: Any) -> None:
    attempt(server, "images.get", image_id, lambda: client.images.get(image_id), ("image_id",))


# -- sandboxes ---------------------------------------------------------------------------------


def _discard(client: archil.Archil) -> Any:
    def discard(sandbox: archil.Sandbox) -> None:
        sandbox.stop()
        sandbox.delete()

    return discard


@BADINPUT
@given(sandbox_id=st.one_of(ids, not_a_string))
def test_sandbox_lookups(server: Server, client: archil.Archil, sandbox_id: Any) -> None:
    attempt(
        server,
        "sandboxes.get",
        sandbox_id,
        lambda: client.sandboxes.get(sandbox_id),
        ("sandbox_id",),
    )
    attempt(
        server,
        "sandboxes.find",
        sandbox_id,
        lambda: client.sandboxes.find(sandbox_id),
        ("name",),
    )


@BADINPUT
@given(
    which=st.sampled_from(
        [
            "vcpu_count",
            "mem_size_mib",
            "max_ttl_seconds",
            "idle_ttl_seconds",
            "max_concurrent_execs",
        ]
    ),
    value=sizes,
)
def test_sandbox_sizes(server: Server, client: archil.Archil, which: str, value: Any) -> None:
    attempt(
        server,
        f"sandboxes.create({which})",
        value,
        lambda: client.sandboxes.create(**{which: value}, wait=False),
        (which,),
        cleanup=_discard(client),
    )


@BADINPUT
@given(
    name=st.one_of(bad_sandbox_names, not_a_string),
    ports=st.one_of(port_lists, not_a_string),
    env=st.dictionaries(env_names, st.text(max_size=5), min_size=1, max_size=2),
    base_image=st.one_of(image_references, st.sampled_from([""])),
)
def test_sandbox_create(
    server: Server,
    client: archil.Archil,
    name: Any,
    ports: Any,
    env: dict[str, str],
    base_image: str,
) -> None:
    for field, value in (
        ("name", name),
        ("ports", ports),
        ("env", env),
        ("base_image", base_image),
    ):
        attempt(
            server,
            f"sandboxes.create({field})",
            value,
            lambda f=field, v=value: client.sandboxes.create(**{f: v}, wait=False),  # type: ignore[misc]
            (field, "port"),
            cleanup=_discard(client),
        )


@BADINPUT
@given(mounts=st.lists(mount_specs, min_size=1, max_size=3))
def test_sandbox_mount_specs(
    server: Server, client: archil.Archil, disk: str, mounts: list[dict[str, Any]]
) -> None:
    # Every spec is bad: a disk id missing or ill-formed.
    attempt(
        server,
        "sandboxes.create(mounts)",
        mounts,
        lambda: client.sandboxes.create(mounts=mounts, wait=False),
        ("mounts", "disk_id"),
        cleanup=_discard(client),
    )
    # The same paths and subdirectories on a disk that exists.
    on_disk = [{k: v for k, v in m.items() if k != "disk_id"} | {"disk_id": disk} for m in mounts]
    attempt(
        server,
        "sandboxes.create(mounts on a disk)",
        on_disk,
        lambda: client.sandboxes.create(mounts=on_disk, wait=False),
        ("mounts", "path", "subdirectory", "queue_ms", "read_only", "conditional"),
        cleanup=_discard(client),
    )


@pytest.fixture(scope="module")
def sandbox(client: archil.Archil) -> Iterator[archil.Sandbox]:
    sbx = client.sandboxes.create()
    assert sbx.exec("true").exit_code == 0  # its process records exist from here on
    try:
        yield sbx
    finally:
        with contextlib.suppress(archil.ArchilError):
            sbx.stop()
            sbx.delete()


@BADINPUT
@given(port=bad_ports, timeout=out_of(1, 86_400), idle=out_of(0, 86_400))
def test_sandbox_methods(
    server: Server,
    sandbox: archil.Sandbox,
    port: Any,
    timeout: Any,
    idle: Any,
) -> None:
    attempt(server, "sandbox.expose_port", port, lambda: sandbox.expose_port(port), ("port",))
    attempt(server, "sandbox.unexpose_port", port, lambda: sandbox.unexpose_port(port), ("port",))
    attempt(
        server, "sandbox.set_timeout", timeout, lambda: sandbox.set_timeout(timeout), ("timeout",)
    )
    attempt(
        server,
        "sandbox.set_timeout(idle_ttl_seconds)",
        idle,
        lambda: sandbox.set_timeout(idle_ttl_seconds=idle),
        ("idle_ttl_seconds",),
    )


@BADINPUT
@given(
    name=bad_sandbox_names,
    env=st.dictionaries(env_names, st.text(max_size=5), min_size=1, max_size=2),
    cwd=st.one_of(text, not_a_string),
)
def test_sandbox_processes_and_forks(
    server: Server,
    client: archil.Archil,
    sandbox: archil.Sandbox,
    name: str,
    env: dict[str, str],
    cwd: Any,
) -> None:
    attempt(server, "sandbox.fork(name)", name, lambda: sandbox.fork(name=name), ("name",))
    attempt(server, "sandbox.exec(env)", env, lambda: sandbox.exec("true", env=env), ("env",))
    attempt(
        server, "sandbox.exec(command)", name, lambda: sandbox.exec(name + "\x00"), ("command",)
    )
    attempt(
        server,
        "sandbox.exec(cwd)",
        cwd,
        lambda: sandbox.exec("true", cwd=cwd),
        ("cwd", "directory"),
    )


# -- containers -------------------------------------------------------------------------------


@BADINPUT
@given(
    archil_mount=st.one_of(mount_specs, not_a_string),
    additional=st.lists(
        st.fixed_dictionaries({"path": guest_paths, "disk_id": st.one_of(ids, not_a_string)}),
        min_size=1,
        max_size=2,
    ),
    container_id=st.one_of(ids, not_a_string),
    subdirectory=subdirectories,
)
def test_containers(
    server: Server,
    client: archil.Archil,
    disk: str,
    archil_mount: Any,
    additional: list[dict[str, Any]],
    container_id: Any,
    subdirectory: str,
) -> None:
    attempt(
        server,
        "containers.create(archil_mount)",
        archil_mount,
        lambda: client.containers.create(archil_mount=archil_mount, command="true"),
        ("archil_mount", "disk_id"),
    )
    attempt(
        server,
        "containers.create(additional_mounts)",
        additional,
        lambda: client.containers.create(
            archil_mount={"disk_id": disk}, additional_mounts=additional, command="true"
        ),
        ("additional_mounts", "path", "disk_id"),
    )
    for name, call in (
        ("containers.get", lambda: client.containers.get(container_id)),
        ("containers.stop", lambda: client.containers.stop(container_id)),
        ("containers.delete", lambda: client.containers.delete(container_id)),
    ):
        attempt(server, name, container_id, call, ("container_id",))
    attempt(
        server,
        "disks.exec(subdirectory)",
        subdirectory,
        lambda: client.exec(
            disks={"data": {"disk": disk, "subdirectory": subdirectory}}, command="true"
        ),
        ("subdirectory", "disks"),
    )
