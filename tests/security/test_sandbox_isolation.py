"""What a sandbox can reach: its own mounts, nothing of the server or of other disks.

Run through the SDK against a real local control plane with namespaced sandboxes.
(Process mode, used where namespaces do not work, isolates far less; see the README.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import archil
from archil.local.embedded import LocalServer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("iso") / "data", stop_grace=2.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(srv: LocalServer) -> Iterator[archil.Archil]:
    with archil.Archil(api_key=srv.api_key, base_url=srv.base_url) as c:
        yield c


@pytest.fixture(scope="module")
def namespaced(client: archil.Archil) -> None:
    sandbox = client.sandboxes.create()
    try:
        isolation = sandbox.exec("echo $ARCHIL_ISOLATION").stdout.strip()
    finally:
        _end(sandbox)
    if isolation != "namespace":
        pytest.skip("namespaces do not work on this machine")


def _end(sandbox: archil.Sandbox) -> None:
    sandbox.stop()
    sandbox.delete()


def _disk(client: archil.Archil) -> str:
    return client.disks.create(name=f"iso-{uuid.uuid4().hex[:8]}").id


def test_a_sandbox_sees_neither_the_server_nor_other_disks(
    srv: LocalServer, client: archil.Archil, namespaced: None
) -> None:
    mine, other = _disk(client), _disk(client)
    secret = f"other-disk-{uuid.uuid4().hex}"
    client.objects.put(other, "private.txt", secret.encode())
    client.objects.put(mine, "mine.txt", b"mine")
    sandbox = client.sandboxes.create(mounts=[archil.SandboxMount(disk_id=mine)])
    try:
        data = str(srv.data_dir)
        script = "; ".join(
            [
                "cat /mnt/archil/mine.txt; echo",
                f"ls {data} >/dev/null 2>&1 && echo DATA-VISIBLE",
                f"ls {data}/disks/{other} >/dev/null 2>&1 && echo OTHER-VISIBLE",
                f"grep -rsl {secret} /mnt /tmp /root /home /run /srv /opt /var 2>/dev/null"
                " && echo SECRET-FOUND",
                f"grep -rsl {srv.api_key} /mnt /tmp /root /home /run /srv /opt /var /etc"
                " 2>/dev/null && echo KEY-FOUND",
                f"cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c {srv.api_key}",
                "cat /proc/[0-9]*/comm | sort -u | tr '\\n' ','",
            ]
        )
        result = sandbox.exec(script)
        lines = result.stdout.split()
        assert lines[0] == "mine"
        for marker in ("DATA-VISIBLE", "OTHER-VISIBLE", "SECRET-FOUND", "KEY-FOUND"):
            assert marker not in result.stdout, result.stdout
        assert lines[-2] == "0"  # no process environment holds the key
        # The sandbox's own PID namespace: its agent and this script's commands, nothing else.
        assert set(lines[-1].strip(",").split(",")) <= {
            "python",
            "python3",
            "sh",
            "cat",
            "sort",
            "tr",
        }
        assert secret not in result.stdout and srv.api_key not in result.stdout
    finally:
        _end(sandbox)


def test_a_read_only_mount_and_a_subdirectory_hold(
    srv: LocalServer, client: archil.Archil, namespaced: None
) -> None:
    disk = _disk(client)
    client.objects.put(disk, "sub/inner.txt", b"inner")
    client.objects.put(disk, "outer.txt", b"outer")
    sandbox = client.sandboxes.create(
        mounts=[archil.SandboxMount(disk_id=disk, path="/data", read_only=True, subdirectory="sub")]
    )
    try:
        result = sandbox.exec(
            "cat /data/inner.txt; echo; "
            "echo x > /data/new.txt 2>/dev/null || echo REFUSED; "
            "rm /data/inner.txt 2>/dev/null || echo KEPT; "
            "ls /data/../outer.txt 2>/dev/null || echo NO-ESCAPE; "
            "mount -o remount,rw /data 2>/dev/null && echo REMOUNTED"
        )
        assert result.stdout.split() == ["inner", "REFUSED", "KEPT", "NO-ESCAPE"]
        assert client.objects.get(disk, "sub/inner.txt") == b"inner"
        assert not (srv.data_dir / "disks" / disk / "sub" / "new.txt").exists()
    finally:
        _end(sandbox)
