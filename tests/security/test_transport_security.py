"""Turning TLS verification off, sending the key over plain HTTP off-host, or exposing the
local control plane beyond this machine is never silent or accidental."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import httpx
import pytest

import archil

KEY = "key-tls-test-0123456789abcdef"


def _caught(make: object) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [w for w in caught if issubclass(w.category, archil.InsecureTransportWarning)]


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "async"])
def test_verify_false_warns_once_and_logs(blocking: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="archil")
    http: httpx.Client | httpx.AsyncClient = (
        httpx.Client(verify=False) if blocking else httpx.AsyncClient(verify=False)
    )
    cls = archil.Archil if blocking else archil.AsyncArchil
    clients: list[object] = []
    got = _caught(
        lambda: clients.append(
            cls(api_key=KEY, base_url="https://control.example.com", http_client=http)  # type: ignore[arg-type]
        )
    )
    assert len(got) == 1
    assert "verify" in str(got[0].message) and KEY not in str(got[0].message)
    assert got[0].filename == __file__  # points at the caller's line
    assert [r for r in caplog.records if "does not verify TLS" in r.getMessage()]
    assert all(KEY not in r.getMessage() for r in caplog.records)
    copy = clients[0].with_options(timeout=5)  # type: ignore[attr-defined]
    assert _caught(lambda: copy.with_options(max_retries=1)) == []


def test_a_verifying_client_and_loopback_http_do_not_warn() -> None:
    assert (
        _caught(
            lambda: archil.Archil(
                api_key=KEY, base_url="https://control.example.com", http_client=httpx.Client()
            )
        )
        == []
    )
    assert _caught(lambda: archil.Archil(api_key=KEY, base_url="https://control.example.com")) == []
    for url in ("http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:8080"):
        assert _caught(lambda u=url: archil.Archil(api_key=KEY, base_url=u)) == [], url


def test_plain_http_to_another_host_warns() -> None:
    got = _caught(lambda: archil.Archil(api_key=KEY, base_url="http://control.example.com"))
    assert got and "plain HTTP" in str(got[0].message)
    assert KEY not in str(got[0].message)


def test_a_mounted_transport_without_verification_warns() -> None:
    http = httpx.Client(mounts={"https://": httpx.HTTPTransport(verify=False)})
    got = _caught(
        lambda: archil.Archil(api_key=KEY, base_url="https://control.example.com", http_client=http)
    )
    assert len(got) == 1


def test_the_local_server_binds_another_address_only_when_told(tmp_path: Path) -> None:
    from archil.local.embedded import LocalServer

    for host in ("0.0.0.0", "192.0.2.1", "::", "example.com"):
        with pytest.raises(ValueError, match="allow_remote"):
            LocalServer(tmp_path / "data", host=host)
    assert not (tmp_path / "data").exists()
    for host in ("127.0.0.1", "localhost", "::1", "127.1.2.3"):
        LocalServer(tmp_path / "data", host=host)
    LocalServer(tmp_path / "data", host="0.0.0.0", allow_remote=True)
