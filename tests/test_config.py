"""Configuration: arguments, environment, regions, and the embedded local default."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import archil
from archil._config import REGIONS, object_url_for, resolve_config

ENV = (
    "ARCHIL_API_KEY",
    "ARCHIL_BASE_URL",
    "ARCHIL_REGION",
    "ARCHIL_OBJECT_URL",
    "ARCHIL_NO_LOCAL",
    "ARCHIL_TIMEOUT",
    "ARCHIL_MAX_RETRIES",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_region_table_and_default() -> None:
    cfg = resolve_config(api_key="key-abc")
    assert cfg.region == "aws-us-east-1"
    assert cfg.base_url == "https://control.green.us-east-1.aws.prod.archil.com"
    assert cfg.object_base_url == "https://s3.green.us-east-1.aws.prod.archil.com"
    for region, url in REGIONS.items():
        assert resolve_config(api_key="k", region=region).base_url == url


def test_environment_is_read_and_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIL_API_KEY", "key-from-env")
    monkeypatch.setenv("ARCHIL_REGION", "gcp-us-central1")
    cfg = resolve_config()
    assert cfg.api_key.get_secret_value() == "key-from-env"
    assert cfg.base_url == REGIONS["gcp-us-central1"]
    cfg = resolve_config(api_key="key-arg", region="aws-eu-west-1")
    assert cfg.api_key.get_secret_value() == "key-arg"
    assert cfg.base_url == REGIONS["aws-eu-west-1"]
    monkeypatch.setenv("ARCHIL_BASE_URL", "http://127.0.0.1:9/")
    cfg = resolve_config()
    assert cfg.base_url == "http://127.0.0.1:9"
    assert cfg.object_base_url == "http://127.0.0.1:9/s3"
    monkeypatch.setenv("ARCHIL_OBJECT_URL", "http://127.0.0.1:10")
    assert resolve_config().object_base_url == "http://127.0.0.1:10"


def test_timeout_and_retries_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIL_TIMEOUT", "12.5")
    monkeypatch.setenv("ARCHIL_MAX_RETRIES", "9")
    cfg = resolve_config(api_key="k")
    assert (cfg.timeout, cfg.max_retries) == (12.5, 9)
    cfg = resolve_config(api_key="k", timeout=3, max_retries=0)
    assert (cfg.timeout, cfg.max_retries) == (3.0, 0)
    for name, bad in (
        ("ARCHIL_TIMEOUT", "0"),
        ("ARCHIL_TIMEOUT", "soon"),
        ("ARCHIL_MAX_RETRIES", "-1"),
        ("ARCHIL_MAX_RETRIES", "2.5"),
    ):
        monkeypatch.setenv(name, bad)
        with pytest.raises(archil.ConfigurationError, match=name):
            resolve_config(api_key="k")
        monkeypatch.delenv(name)
    assert resolve_config(api_key="k").max_retries == 3


def test_object_url_swaps_the_control_host() -> None:
    assert object_url_for("https://control.blue.us-central1.gcp.prod.archil.com") == (
        "https://s3.blue.us-central1.gcp.prod.archil.com"
    )
    assert object_url_for("http://localhost:8700") == "http://localhost:8700/s3"


def test_errors_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIL_NO_LOCAL", "1")
    with pytest.raises(archil.ConfigurationError, match="ARCHIL_API_KEY"):
        resolve_config()
    with pytest.raises(archil.ConfigurationError, match="ARCHIL_API_KEY"):
        resolve_config(base_url="http://127.0.0.1:9")
    with pytest.raises(archil.ConfigurationError, match="ARCHIL_REGION"):
        resolve_config(api_key="k", region="mars-1")
    with pytest.raises(archil.ConfigurationError, match="api_key"):
        resolve_config(api_key="  ")
    with pytest.raises(archil.ConfigurationError, match="ARCHIL_BASE_URL"):
        resolve_config(api_key="k", base_url="ftp://x")
    with pytest.raises(ValueError, match="timeout"):
        resolve_config(api_key="k", timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        resolve_config(api_key="k", max_retries=-1)


def test_the_key_is_never_in_the_repr() -> None:
    cfg = resolve_config(api_key="key-very-secret-123")
    assert "key-very-secret-123" not in repr(cfg)
    assert "key-very-secret-123" not in repr(cfg.with_options(timeout=5))


SCRIPT = textwrap.dedent(
    """
    import asyncio
    import archil

    with archil.Archil() as client:
        disk = client.disks.create("first-disk")
        print("sync", client.config.local, disk.id)

    async def main():
        async with archil.aio.Archil() as client:
            disks = await client.disks.list()
            print("async", [d.name for d in disks])

    asyncio.run(main())
    """
)


def test_no_key_starts_the_embedded_control_plane(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    env["HOME"] = str(tmp_path)
    env.pop("XDG_CACHE_HOME", None)
    env.pop("ARCHIL_DATA_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("sync True dsk-")
    assert lines[1] == "async ['first-disk']"
    notices = [line for line in proc.stderr.splitlines() if "embedded local control plane" in line]
    assert len(notices) == 1
    assert "ARCHIL_API_KEY" in notices[0]
    assert (tmp_path / ".cache" / "archil" / "local").is_dir()
