"""Bad input to the declarative layer and the mount models: ``App``, ``app.function(...)``,
``app.run(...)``, ``Image`` builders, ``Volume``, ``ArchilMount``, ``SandboxMount``.

None of them talks to the server when its input is bad; the server is watched anyway.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import archil

from .conftest import BADINPUT, Server, attempt
from .strategies import (
    bad_ids,
    env_names,
    guest_paths,
    image_references,
    mount_specs,
    not_a_string,
    out_of,
    package_names,
    port_lists,
    sizes,
    subdirectories,
    text,
)

APP_DISK = "disk_badinput_app"


@BADINPUT
@given(
    name=st.one_of(st.sampled_from(["", " ", "\t\n"]), not_a_string),
    disk_id=st.one_of(bad_ids, not_a_string),
    disk_env=st.one_of(st.just(""), not_a_string),
    api_key=st.one_of(st.sampled_from(["", " ", "\n"]), st.integers()),
)
def test_app(server: Server, name: Any, disk_id: Any, disk_env: Any, api_key: Any) -> None:
    attempt(server, "App(name)", name, lambda: archil.App(name, APP_DISK), ("name",))
    attempt(server, "App(disk_id)", disk_id, lambda: archil.App("a", disk_id), ("disk_id",))
    attempt(
        server,
        "App(disk_env)",
        disk_env,
        lambda: archil.App("a", APP_DISK, disk_env=disk_env),
        ("disk_env",),
    )
    attempt(
        server,
        "App(api_key)",
        api_key,
        lambda: archil.App("a", APP_DISK, api_key=api_key),
        ("api_key",),
    )


@BADINPUT
@given(
    which=st.sampled_from(["vcpu_count", "mem_size_mib", "timeout"]),
    value=sizes,
    kernel_variant=st.one_of(text, not_a_string),
    ports=st.one_of(port_lists, st.integers(), st.text(max_size=3)),
    env=st.dictionaries(env_names, st.text(max_size=5), min_size=1, max_size=2),
    command=st.one_of(st.sampled_from(["", " ", "\n\t"]), not_a_string),
)
def test_function_options(
    server: Server,
    which: str,
    value: Any,
    kernel_variant: Any,
    ports: Any,
    env: dict[str, str],
    command: Any,
) -> None:
    app = archil.App("badinput", APP_DISK)
    for decorator in ("function", "run"):

        def declare(decorator: str = decorator, **kwargs: Any) -> Any:
            if decorator == "run":
                return app.run(command="true", **kwargs)
            return app.function(**kwargs)

        attempt(
            server, f"app.{decorator}({which})", value, lambda: declare(**{which: value}), (which,)
        )
        attempt(
            server,
            f"app.{decorator}(kernel_variant)",
            kernel_variant,
            lambda: declare(kernel_variant=kernel_variant),
            ("kernel_variant",),
        )
        attempt(
            server,
            f"app.{decorator}(ports)",
            ports,
            lambda: declare(ports=ports),
            ("ports", "port"),
        )
        attempt(server, f"app.{decorator}(env)", env, lambda: declare(env=env), ("env",))
    attempt(server, "app.run(command)", command, lambda: app.run(command=command), ("command",))


@BADINPUT
@given(
    path=guest_paths,
    volume=st.one_of(not_a_string, st.just(APP_DISK)),
    volumes=st.one_of(
        st.lists(st.text(max_size=3), max_size=2), st.integers(), st.text(max_size=3)
    ),
)
def test_function_volumes(server: Server, path: str, volume: Any, volumes: Any) -> None:
    app = archil.App("badinput", APP_DISK)
    fields = ("additional_volumes",)
    attempt(
        server,
        "app.function(additional_volumes path)",
        path,
        lambda: app.function(additional_volumes={path: archil.Volume("disk_other")}),
        fields,
    )
    spec = {"/data": archil.Volume(volume) if volume == APP_DISK else volume}
    attempt(
        server,
        "app.function(additional_volumes value)",
        volume,
        lambda: app.function(additional_volumes=spec),
        fields,
    )
    attempt(
        server,
        "app.function(additional_volumes)",
        volumes,
        lambda: app.function(additional_volumes=volumes),
        fields,
    )


@BADINPUT
@given(
    version=st.one_of(text, not_a_string),
    tag=image_references,
    packages=st.lists(package_names, min_size=1, max_size=3),
    path=st.one_of(text, not_a_string),
    env_name=env_names,
)
def test_image_builders(
    server: Server, version: Any, tag: str, packages: list[str], path: Any, env_name: str
) -> None:
    base = archil.Image.python()
    attempt(
        server, "Image.python", version, lambda: archil.Image.python(version), ("python_version",)
    )
    attempt(
        server,
        "Image.debian_slim",
        version,
        lambda: archil.Image.debian_slim(version),
        ("python_version",),
    )
    attempt(server, "Image.ubuntu", version, lambda: archil.Image.ubuntu(version), ("ubuntu",))
    attempt(
        server,
        "Image.from_registry",
        tag,
        lambda: archil.Image.from_registry(tag),
        ("base image", "image reference"),
    )
    attempt(
        server, "Image.apt_install", packages, lambda: base.apt_install(*packages), ("apt_install",)
    )
    attempt(
        server, "Image.pip_install", packages, lambda: base.pip_install(*packages), ("pip_install",)
    )
    attempt(
        server,
        "Image.run_commands",
        packages,
        lambda: base.run_commands(
            *(p if "\n" in p or not p.strip() else p + "\n" for p in packages)
        ),
        ("run_commands",),
    )
    attempt(server, "Image.workdir", path, lambda: base.workdir(path), ("workdir",))
    attempt(server, "Image.env", env_name, lambda: base.env(**{env_name: "v"}), ("env",))


@BADINPUT
@given(
    disk_id=st.one_of(bad_ids, not_a_string),
    env=st.one_of(st.just(""), not_a_string),
    shared=st.one_of(st.integers(), st.text(max_size=3), st.none()),
    path=guest_paths,
)
def test_volumes(server: Server, disk_id: Any, env: Any, shared: Any, path: str) -> None:
    attempt(server, "Volume(disk_id)", disk_id, lambda: archil.Volume(disk_id), ("disk_id",))
    attempt(
        server,
        "Volume.from_disk_id(env)",
        env,
        lambda: archil.Volume.from_disk_id("disk_ok", env=env),
        ("env",),
    )
    attempt(
        server,
        "Volume(shared)",
        shared,
        lambda: archil.Volume("disk_ok", shared=shared),
        ("shared",),
    )
    attempt(
        server,
        "Volume.from_disk",
        disk_id,
        lambda: archil.Volume.from_disk(disk_id),
        ("disk",),
    )
    attempt(
        server, "Volume.mount_at", path, lambda: archil.Volume("disk_ok").mount_at(path), ("path",)
    )


@BADINPUT
@given(spec=mount_specs, path=guest_paths, sub=subdirectories, queue=out_of(0, 3_600_000))
def test_mount_models(
    server: Server, spec: dict[str, Any], path: str, sub: str, queue: Any
) -> None:
    attempt(
        server,
        "ArchilMount",
        spec,
        lambda: archil.ArchilMount(**spec),
        (
            "disk_id",
            "env",
            "path",
            "subdirectory",
            "read_only",
            "conditional",
            "queue_ms",
            "nonsense",
        ),
    )
    attempt(
        server,
        "SandboxMount",
        spec,
        lambda: archil.SandboxMount(**spec),
        (
            "disk_id",
            "env",
            "path",
            "subdirectory",
            "read_only",
            "conditional",
            "queue_ms",
            "nonsense",
        ),
    )
    attempt(
        server,
        "SandboxMount(path)",
        path,
        lambda: archil.SandboxMount(disk_id="disk_ok", path=path),
        ("path",),
    )
    attempt(
        server,
        "SandboxMount(subdirectory)",
        sub,
        lambda: archil.SandboxMount(disk_id="disk_ok", subdirectory=sub),
        ("subdirectory",),
    )
    attempt(
        server,
        "SandboxMount(queue_ms)",
        queue,
        lambda: archil.SandboxMount(disk_id="disk_ok", queue_ms=queue),
        ("queue_ms",),
    )
    attempt(
        server,
        "AdditionalMount(path)",
        path,
        lambda: archil.AdditionalMount(disk_id="disk_ok", path=path),
        ("path",),
    )
