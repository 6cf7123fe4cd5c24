"""The embedded local control plane: ensure_embedded, auto-created disks, the CLI, secrets in logs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from httpx_ws import connect_ws

from archil._process import start_message
from archil.local import embedded
from archil.local.embedded import LocalServer, default_data_dir, ensure_embedded

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
NOTICE = "archil: no ARCHIL_API_KEY set; running on the embedded local control plane at "


def _run_python(
    code: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIL_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ARCHIL_DATA_DIR", str(tmp_path / "explicit"))
    assert default_data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("ARCHIL_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "archil" / "local"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "archil" / "local"


def _sandbox_pids(sid: str) -> list[str]:
    marker = f"ARCHIL_SANDBOX_ID={sid}\0".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_ensure_embedded_in_a_fresh_process(tmp_path: Path) -> None:
    data = tmp_path / "embedded"
    code = f"""
        import json, os, httpx
        from httpx_ws import connect_ws
        from archil._process import start_message
        from archil.local.embedded import ensure_embedded
        s = ensure_embedded()
        assert ensure_embedded() is s
        c = httpx.Client(base_url=s.base_url, headers={{"Authorization": s.api_key}}, trust_env=False, timeout=60)
        disk = c.get("/api/disks/disk_abc123").json()["data"]
        c.get("/api/disks/disk_abc123")
        body = {{"base_image": "python:{PY}-slim", "mounts": [{{"disk_id": "disk_abc123"}}]}}
        sb = c.post("/api/sandboxes", params={{"wait": "true"}}, json=body).json()["data"]
        sid = sb["sandbox_id"]
        url = c.post(f"/api/sandboxes/{{sid}}/connections").json()["data"]["url"]
        with connect_ws(url, c) as ws:
            ws.send_text(start_message("sleep 600"))
            started = json.loads(ws.receive().data)["type"]
        marker = f"ARCHIL_SANDBOX_ID={{sid}}\\0".encode()
        alive = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                alive += marker in open(f"/proc/{{pid}}/environ", "rb").read()
            except OSError:
                pass
        print(json.dumps({{"url": s.base_url, "disk": disk, "sb": sb, "started": started, "alive": alive}}))
    """
    result = _run_python(code, {"ARCHIL_DATA_DIR": str(data)})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["disk"]["id"] == "disk_abc123" and out["disk"]["name"] == "disk_abc123"
    assert out["sb"]["status"] == "running" and out["started"] == "started"
    assert out["sb"]["mounts"][0]["disk_id"] == "disk_abc123"
    assert out["alive"] > 0
    notices = [line for line in result.stderr.splitlines() if line.startswith(NOTICE)]
    assert notices == [
        f"{NOTICE}{out['url']} (data in {data.resolve()}). Set ARCHIL_API_KEY to use Archil's cloud."
    ]
    created = [line for line in result.stderr.splitlines() if "on first use" in line]
    assert created == ["archil: created local disk 'disk_abc123' on first use"]
    assert not (data / "server.json").exists()
    assert _sandbox_pids(out["sb"]["sandbox_id"]) == [], "a sandbox outlived its process"
    key = (data / "api_key").read_text().strip()
    assert key not in result.stderr and key not in result.stdout


def test_ensure_embedded_reuses_a_server_of_another_process(
    make_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    server = make_server(tmp_path / "shared")
    code = """
        import json, httpx
        from archil.local.embedded import ensure_embedded
        s = ensure_embedded()
        r = httpx.get(s.base_url + "/api/disks", headers={"Authorization": s.api_key}, trust_env=False)
        print(json.dumps({"url": s.base_url, "attached": s.attached, "status": r.status_code}))
    """
    result = _run_python(code, {"ARCHIL_DATA_DIR": str(tmp_path / "shared")})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {"url": server.base_url, "attached": True, "status": 200}
    assert sum(line.startswith(NOTICE) for line in result.stderr.splitlines()) == 1
    assert server.running


def test_ensure_embedded_is_one_per_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results: list[LocalServer] = []

    def call() -> None:
        results.append(ensure_embedded(tmp_path / "one"))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len({id(s) for s in results}) == 1
        server = results[0]
        assert server.running and server.settings.auto_create_disks
        assert capsys.readouterr().err.count(NOTICE) == 1
    finally:
        results[0].stop()
        embedded._EMBEDDED.pop((tmp_path / "one").resolve(), None)
    again = ensure_embedded(tmp_path / "one")
    try:
        assert again is not results[0] and again.running
    finally:
        again.stop()
        embedded._EMBEDDED.pop((tmp_path / "one").resolve(), None)


def test_auto_create_mode(
    make_server: Callable[..., LocalServer],
    make_client: Callable[..., httpx.Client],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(auto_create_disks=True)
    client = make_client(server)
    r = client.get("/api/disks/disk_abc123")
    assert r.status_code == 200
    assert r.json()["data"]["id"] == "disk_abc123" and r.json()["data"]["name"] == "disk_abc123"
    assert client.get("/api/disks/disk_abc123").status_code == 200

    mounts = [
        {"disk_id": "disk_training", "path": "/mnt/archil"},
        {"disk_id": "disk_shared", "path": "/datasets", "read_only": True},
    ]
    r = client.post(
        "/api/sandboxes",
        params={"wait": "true"},
        json={"base_image": f"python:{PY}-slim", "mounts": mounts},
    )
    assert r.status_code == 202, r.text
    sid = r.json()["data"]["sandbox_id"]
    try:
        assert r.json()["data"]["status"] == "running", r.text
        url = client.post(f"/api/sandboxes/{sid}/connections").json()["data"]["url"]
        with connect_ws(url, client) as ws:
            ws.send_text(
                start_message("echo ok > /mnt/archil/x && ! touch /datasets/y 2>/dev/null")
            )
            events = [ws.receive().data, ws.receive().data]
        assert [json.loads(e)["type"] for e in events] == ["started", "exit"], events
        assert json.loads(events[-1])["exit_code"] == 0, events
    finally:
        client.post(f"/api/sandboxes/{sid}/stop")
        assert client.delete(f"/api/sandboxes/{sid}").status_code == 204
    assert client.get("/s3/disk_training/x").content == b"ok\n"
    assert client.put("/s3/disk_objects/k", content=b"v").status_code == 200
    assert client.get("/s3/disk_listing", params={"list-type": 2}).status_code == 200
    r = client.post("/api/disks/disk_exec/exec", json={"command": "echo hi"})
    assert r.json()["data"]["stdout"] == "hi\n"
    r = client.post("/api/exec", json={"disks": {"a": "disk_multi"}, "command": "true"})
    assert r.status_code == 200
    assert client.get("/api/disks/disk_dir/directory").json()["data"]["entries"] == []

    names = sorted(d["name"] for d in client.get("/api/disks").json()["data"])
    expected = [
        "disk_abc123",
        "disk_dir",
        "disk_exec",
        "disk_listing",
        "disk_multi",
        "disk_objects",
        "disk_shared",
        "disk_training",
    ]
    assert names == expected
    err = capsys.readouterr().err
    for name in expected:
        assert err.count(f"archil: created local disk '{name}' on first use") == 1

    for bad in ("bad id", "-dash", "x" * 200):
        assert client.get(f"/api/disks/{bad}").status_code == 404
    assert len(client.get("/api/disks").json()["data"]) == len(expected)

    r = client.post("/api/disks", json={"name": "disk_abc123"})
    assert r.status_code == 200 and r.json()["data"]["diskId"] == "disk_abc123"


def test_auto_create_is_off_by_default(client: httpx.Client) -> None:
    assert client.get("/api/disks/disk_abc123").status_code == 404
    r = client.post("/api/sandboxes", json={"mounts": [{"disk_id": "disk_abc123"}]})
    assert r.status_code == 404 and "mounts[0].disk_id" in r.json()["error"]
    assert client.get("/api/disks").json()["data"] == []
    assert client.get("/api/sandboxes").json()["data"]["sandboxes"] == []


def test_the_key_never_reaches_the_logs(
    make_server: Callable[..., LocalServer],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    server = make_server(access_log=True, chaos_rate=0.0)
    with httpx.Client(base_url=server.base_url, trust_env=False) as c:
        ok = {"Authorization": server.api_key}
        c.get("/api/disks", headers=ok)
        c.get("/api/disks", headers={"Authorization": server.api_key + "x"})
        c.post("/api/disks", json={"name": "x"}, headers=ok)
        server.set_chaos(1.0, seed=3)
        for _ in range(5):
            with contextlib.suppress(httpx.TransportError):
                c.post("/api/disks", json={"name": "y"}, headers=ok)
        server.set_chaos(0.0)
    server.stop()
    captured = capfd.readouterr()
    assert caplog.records, "expected some log records to check"
    for text in (caplog.text, captured.out, captured.err):
        assert server.api_key not in text
    assert server.api_key not in repr(server)


def test_cli_serve(tmp_path: Path) -> None:
    data = tmp_path / "cli"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "archil.cli",
            "local",
            "serve",
            "--data-dir",
            str(data),
            "--chaos",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        url = lines[1].strip().removeprefix("ARCHIL_BASE_URL=")
        key = lines[2].strip().removeprefix("ARCHIL_API_KEY=")
        assert url.startswith("http://127.0.0.1:") and url in lines[0]
        assert key == (data / "api_key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": key}, trust_env=False) as c:
            assert c.get("/api/disks").status_code == 200
            assert c.get("/api/disks/disk_abc123").status_code == 404
        assert json.loads((data / "server.json").read_text())["url"] == url
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert not (data / "server.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "args",
    [
        ["local", "serve", "--chaos", "2"],
        ["local", "serve", "--port", "99999"],
        ["local", "serve", "--exec-timeout", "nan"],
        ["local", "serve", "--exec-timeout", "inf"],
        ["local"],
        [],
    ],
)
def test_cli_rejects_bad_arguments(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "archil.cli", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "usage: archil" in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_cli_binds_a_non_loopback_address_only_with_allow_remote(host: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "archil.cli",
            "local",
            "serve",
            "--host",
            host,
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()


def test_cli_reports_a_busy_data_dir(
    make_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    server = make_server(tmp_path / "busy")
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "archil.cli",
            "local",
            "serve",
            "--data-dir",
            str(tmp_path / "busy"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert server.base_url in result.stderr
    assert time.monotonic() - started < 20
