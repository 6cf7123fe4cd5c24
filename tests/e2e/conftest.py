from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from archil.local.embedded import LocalServer


@pytest.fixture(scope="session", params=["extensions", "real-api-only"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    """A local control plane, once with archil's extensions and once in real-API-only mode.

    The SDK's compute path must need nothing that the live control plane lacks, so every
    end-to-end test runs against both.
    """
    data = tmp_path_factory.mktemp(f"archil-e2e-{request.param}")
    srv = LocalServer(
        Path(data), auto_create_disks=True, real_api_only=request.param == "real-api-only"
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def conn(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Client settings for the test server, also exported the way users configure them."""
    monkeypatch.setenv("ARCHIL_BASE_URL", server.base_url)
    monkeypatch.setenv("ARCHIL_API_KEY", server.api_key)
    return {"base_url": server.base_url, "api_key": server.api_key}
