"""``archil disks|sandboxes|containers|tokens|images``: the console script against a local server."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import archil
from archil.local.embedded import LocalServer

from .helpers import Cli, clean_env


def _json(result: object) -> object:
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def test_help_everywhere_has_an_example(cli: Cli) -> None:
    for command in [
        ["disks", "ls"],
        ["disks", "exec"],
        ["disks", "users", "add"],
        ["sandboxes", "exec"],
        ["containers", "logs"],
        ["tokens", "create"],
        ["images", "build"],
        ["local", "status"],
        ["run"],
        ["shell"],
    ]:
        result = cli.ok(*command, "--help")
        assert result.stdout.startswith(f"usage: archil {' '.join(command)}")
        assert "Example" in result.stdout, command


def test_usage_errors_exit_2(cli: Cli) -> None:
    for args in (["disks", "nope"], ["disks", "get"], ["containers", "ls", "--status", "x"]):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "usage: archil" in result.stderr


def test_disks(cli: Cli) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = _json(cli.ok("disks", "create", name, "--json"))
    assert isinstance(created, dict)
    disk_id = created["id"]
    assert created["name"] == name
    # A disk's one-time token user is shown once, here, in full.
    assert any(str(u.get("token", "")).startswith("dtk-") for u in created["authorized_users"])

    listed = _json(cli.ok("disks", "ls", "--json"))
    assert isinstance(listed, list)
    with cli.client() as client:
        expected = client.disks.get(disk_id).model_dump(mode="json")
    mine = next(d for d in listed if d["id"] == disk_id)
    assert set(mine) == set(expected)
    table = cli.ok("disks", "ls").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "STATUS", "REGION", "DATA", "CREATED"]
    row = next(line for line in table if disk_id in line)
    assert name in row and "available" in row and ("just now" in row or "ago" in row)

    shown = _json(cli.ok("disks", "get", disk_id, "--json"))
    assert isinstance(shown, dict) and shown["id"] == disk_id and shown["status"] == "available"
    assert "name:" in cli.ok("disks", "get", disk_id).stdout

    done = cli(
        "disks",
        "exec",
        disk_id,
        "--",
        "mkdir -p /mnt/archil/d && echo hi > /mnt/archil/d/f.txt && echo out && echo err >&2; exit 3",
    )
    assert done.returncode == 3
    assert done.stdout == "out\n" and done.stderr == "err\n"
    words = cli.ok("disks", "exec", disk_id, "--", "echo", "a b", "c")
    assert words.stdout == "a b c\n"

    root = cli.ok("disks", "ls-dir", disk_id).stdout
    assert re.search(r"^d/\s+directory", root, re.M)
    sub = _json(cli.ok("disks", "ls-dir", disk_id, "d", "--json"))
    assert isinstance(sub, dict)
    assert [(e["name"], e["type"], e["size"]) for e in sub["entries"]] == [("f.txt", "file", 3)]
    missing = cli("disks", "ls-dir", disk_id, "d/nothing")
    assert missing.returncode == 1 and "d/nothing: no such file or directory" in missing.stderr

    user = _json(cli.ok("disks", "users", "add", disk_id, "--nickname", "laptop", "--json"))
    assert isinstance(user, dict) and user["nickname"] == "laptop"
    assert str(user["token"]).startswith("dtk-")
    with cli.client() as client:
        users = client.disks.get(disk_id).authorized_users
    identifier = next(u.identifier for u in users if u.nickname == "laptop")
    assert identifier
    cli.ok("disks", "users", "rm", disk_id, "token", identifier)
    with cli.client() as client:
        assert all(u.nickname != "laptop" for u in client.disks.get(disk_id).authorized_users)

    refused = cli("disks", "rm", disk_id)  # not a terminal: --yes is required
    assert refused.returncode == 2 and "--yes" in refused.stderr
    cli.ok("disks", "rm", disk_id, "--yes")
    with cli.client() as client, pytest.raises(archil.NotFoundError):
        client.disks.get(disk_id)


def test_a_bad_disk_id_is_one_line_and_exit_1(cli: Cli) -> None:
    result = cli("disks", "get", "dsk-00000000deadbeef")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("archil: error: ") and "dsk-00000000deadbeef" in lines[0]
    assert "not found" in lines[0] and "Traceback" not in result.stderr
    assert result.stdout == ""
    debug = cli("--debug", "disks", "get", "dsk-00000000deadbeef")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "NotFoundError" in debug.stderr
    assert debug.stderr.splitlines()[-1].startswith("archil: error: [404] disk ")
    invalid = cli("disks", "get", "bad/id")
    assert invalid.returncode == 1 and len(invalid.stderr.splitlines()) == 1


def test_settings_by_options_and_the_key_is_never_echoed(cli: Cli) -> None:
    key = cli.server.api_key
    env = clean_env()
    result = cli.ok("--api-key", key, "--base-url", cli.server.base_url, "tokens", "ls", env=env)
    assert key not in result.stdout + result.stderr
    wrong = cli("--api-key", key + "x", "--base-url", cli.server.base_url, "disks", "ls", env=env)
    assert wrong.returncode == 1 and key not in wrong.stderr
    assert len(wrong.stderr.splitlines()) == 1


def test_tokens(cli: Cli) -> None:
    created = _json(cli.ok("tokens", "create", "ci", "--description", "runners", "--json"))
    assert isinstance(created, dict)
    assert str(created["token"]).startswith("key-") and created["name"] == "ci"
    listed = _json(cli.ok("tokens", "ls", "--json"))
    assert isinstance(listed, list)
    mine = next(t for t in listed if t["id"] == created["id"])
    assert "token" not in mine and mine["description"] == "runners"
    assert created["id"] in cli.ok("tokens", "ls").stdout
    cli.ok("tokens", "rm", created["id"])
    listed = _json(cli.ok("tokens", "ls", "--json"))
    assert isinstance(listed, list) and all(t["id"] != created["id"] for t in listed)


def test_images(cli: Cli) -> None:
    source = f"python:{sys.version_info.major}.{sys.version_info.minor}"
    built = cli.ok("images", "build", source, "--json")
    image = json.loads(built.stdout)
    assert image["status"] == "ready" and image["source"].endswith(source)
    # Not a terminal: progress is plain lines on stderr.
    assert f"archil: building image {source}..." in built.stderr
    assert f"archil: building image {source}: ready in" in built.stderr
    shown = cli.ok("images", "get", image["image_id"]).stdout
    assert re.search(r"^status:\s+ready$", shown, re.M)
    listed = json.loads(cli.ok("images", "ls", "--json").stdout)
    assert image["image_id"] in [i["image_id"] for i in listed]
    assert set(listed[0]) == set(image)
    table = cli.ok("images", "ls").stdout.splitlines()
    assert table[0].split() == ["ID", "SOURCE", "STATUS", "CREATED"]
    assert any(line.startswith(image["image_id"]) and "ready" in line for line in table)
    bad = cli("images", "build", "registry.invalid/nothing:1")
    assert bad.returncode == 1 and "nothing" in bad.stderr.splitlines()[-1]


def test_sandboxes(cli: Cli) -> None:
    with cli.client() as client:
        disk = client.disks.create(f"cli-sbx-{uuid.uuid4().hex[:8]}")
        sandbox = client.sandboxes.create(mounts=[archil.SandboxMount(disk_id=disk.id)])
        process = sandbox.run("echo started; echo oops >&2")
        process.wait()
    sid = sandbox.id
    assert sid in cli.ok("sandboxes", "ls").stdout
    listed = _json(cli.ok("sandboxes", "ls", "--disk-id", disk.id, "--json"))
    assert isinstance(listed, list) and [s["sandbox_id"] for s in listed] == [sid]
    assert set(listed[0]) == set(sandbox.data.model_dump(mode="json"))
    shown = _json(cli.ok("sandboxes", "get", sid, "--json"))
    assert isinstance(shown, dict) and shown["status"] == "running"

    ran = cli(
        "sandboxes",
        "exec",
        sid,
        "--",
        "cat /proc/self/status >/dev/null; ls /mnt/archil; echo e >&2; exit 7",
    )
    assert ran.returncode == 7 and ran.stderr == "e\n"
    logs = cli.ok("sandboxes", "logs", sid, process.id)
    assert logs.stdout == "started\n" and logs.stderr == "oops\n"

    stopped = _json(cli.ok("sandboxes", "stop", sid, "--json"))
    assert isinstance(stopped, dict) and stopped["status"] == "stopped"
    cli.ok("sandboxes", "rm", sid)
    gone = cli("sandboxes", "get", sid)
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_containers(cli: Cli) -> None:
    with cli.client() as client:
        disk = client.disks.create(f"cli-ctr-{uuid.uuid4().hex[:8]}")
        container = client.containers.create(
            archil_mount=archil.ArchilMount(disk_id=disk.id),
            command="echo hello; echo warn >&2; sleep 30",
            metadata={"run": "cli"},
        )
    cid = container.container_id
    listed = _json(cli.ok("containers", "ls", "--disk-id", disk.id, "--json"))
    assert isinstance(listed, list) and [c["container_id"] for c in listed] == [cid]
    assert listed[0]["metadata"] == {"run": "cli"}
    table = cli.ok("containers", "ls").stdout
    assert cid in table and "echo hello; echo warn >&2; sleep 30" in table
    shown = _json(cli.ok("containers", "get", cid, "--json"))
    assert isinstance(shown, dict) and shown["status"] == "running"
    logs = cli.ok("containers", "logs", cid)
    assert logs.stdout == "hello\n" and logs.stderr == "warn\n"
    stopped = _json(cli.ok("containers", "stop", cid, "--json"))
    assert isinstance(stopped, dict) and stopped["status"] == "stopped"
    cli.ok("containers", "rm", cid)
    assert cli("containers", "get", cid).returncode == 1


def test_copy_to_and_from_a_disk(cli: Cli, tmp_path: Path) -> None:
    with cli.client() as client:
        disk = client.disks.create(f"cli-cp-{uuid.uuid4().hex[:8]}")
    payload = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "blob.bin"
    source.write_bytes(payload)
    up = cli.ok("disks", "cp", str(source), f"{disk.id}:in/", "--json")
    info = json.loads(up.stdout)
    assert info["key"] == "in/blob.bin" and info["size"] == len(payload)
    # Not a terminal: one line when it starts, one when it ends, with the size and rate.
    assert f"archil: uploading blob.bin to {disk.id}:in/blob.bin (3.0 MiB)...\n" in up.stderr
    assert re.search(r": 3\.0 MiB in [0-9.]+s \([0-9.]+ [KMG]?i?B/s\)\n$", up.stderr)
    (tmp_path / "out").mkdir()
    cli.ok("disks", "cp", f"{disk.id}:in/blob.bin", str(tmp_path / "out"))
    assert (tmp_path / "out" / "blob.bin").read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blob.bin"]
    missing = cli("disks", "cp", f"{disk.id}:in/nothing", str(tmp_path / "x"))
    assert missing.returncode == 1 and not (tmp_path / "x").exists()
    both = cli("disks", "cp", str(source), str(tmp_path / "y"))
    assert both.returncode == 2 and "DISK_ID:PATH" in both.stderr


def test_transfer_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from archil.cli._output import Transfer

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    with Transfer("uploading x", 4 * 1024 * 1024) as bar:
        bar.add(1024 * 1024)
        time.sleep(0.11)
        bar.add(1024 * 1024)
    text = err.getvalue()
    assert "[############............]  50% 2.0 MiB / 4.0 MiB" in text
    assert re.search(r"MiB/s\r\x1b\[2Karchil: uploading x: 2\.0 MiB in", text)


def test_images_ls_where_the_control_plane_has_no_listing(
    make_server: Callable[..., LocalServer],
) -> None:
    server = make_server(real_api_only=True)
    result = Cli(server)("images", "ls")
    assert result.returncode == 1
    assert result.stderr == (
        "archil: error: this control plane does not list images (GET /api/images is an "
        "archil extension of the local control plane); get one by id instead\n"
    )


def test_every_command_has_an_example() -> None:
    import click

    from archil.cli import cli as root

    def leaves(group: click.Group, path: str) -> list[tuple[str, click.Command]]:
        found = []
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += leaves(command, f"{path} {name}")
            else:
                found.append((f"{path} {name}", command))
        return found

    commands = leaves(root, "archil")
    assert len(commands) >= 30
    for path, command in commands:
        assert "Example" in (command.epilog or ""), path
        assert command.help, path


def test_import_archil_does_not_import_the_cli() -> None:
    code = "import sys, archil; print('archil.cli' in sys.modules, 'click' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"]
