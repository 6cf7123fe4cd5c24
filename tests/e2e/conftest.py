from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from archil.local.embedded import LocalServer


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    data = tmp_path_factory.mktemp("archil-e2e")
    srv = LocalServer(Path(data), auto_create_disks=True)
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
