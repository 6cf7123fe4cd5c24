"""``archil local status``, ``archil local serve`` by the console script, and the embedded mode."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from .helpers import ARCHIL, ROOT, clean_env


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ARCHIL), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_status_of_a_served_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "served"
    env = clean_env()
    down = _run("local", "status", "--data-dir", str(data), "--json", env=env)
    assert down.returncode == 0
    assert json.loads(down.stdout) == {
        "data_dir": str(data.resolve()),
        "exists": False,
        "running": False,
        "url": None,
        "pid": None,
        "started_at": None,
        "api_key_file": None,
    }
    assert "not running" in _run("local", "status", "--data-dir", str(data), env=env).stdout

    serve = subprocess.Popen(
        [str(ARCHIL), "local", "serve", "--data-dir", str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stdout is not None
        lines = [serve.stdout.readline() for _ in range(3)]
        url = lines[1].strip().removeprefix("ARCHIL_BASE_URL=")
        key = lines[2].strip().removeprefix("ARCHIL_API_KEY=")
        assert url.startswith("http://127.0.0.1:") and key.startswith("key-")

        up = _run("local", "status", "--data-dir", str(data), "--json", env=env)
        report = json.loads(up.stdout)
        assert report["running"] is True and report["url"] == url and report["pid"] == serve.pid
        assert key not in up.stdout + up.stderr
        text = _run("local", "status", "--data-dir", str(data), env=env)
        assert url in text.stdout and "running" in text.stdout
        assert key not in text.stdout + text.stderr
        shown = _run("local", "status", "--data-dir", str(data), "--show-key", env=env)
        assert key in shown.stdout
        # ARCHIL_DATA_DIR is where status looks by default, as the SDK does.
        by_env = _run("local", "status", "--json", env=clean_env(ARCHIL_DATA_DIR=str(data)))
        assert json.loads(by_env.stdout)["url"] == url

        serve.send_signal(signal.SIGINT)
        assert serve.wait(15) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    after = json.loads(_run("local", "status", "--data-dir", str(data), "--json", env=env).stdout)
    assert after["running"] is False and after["exists"] is True


def test_embedded_mode_with_no_settings(tmp_path: Path) -> None:
    env = clean_env(ARCHIL_DATA_DIR=str(tmp_path / "embedded"))
    ran = _run("run", "examples/declarative_simple.py", "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == "greeted Archil"
    assert "embedded local control plane" in ran.stderr
    listed = _run("disks", "ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [d["id"] for d in json.loads(listed.stdout)] == ["disk_abc123"]
    key = (tmp_path / "embedded" / "api_key").read_text().strip()
    for result in (ran, listed):
        assert key not in result.stdout + result.stderr
