"""A real local control plane for SDK-level tests (both the async and the blocking client)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from archil.local.embedded import LocalServer


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server for the tests of a module that need no special settings."""
    server = LocalServer(tmp_path_factory.mktemp("sdk-local"), stop_grace=2.0)
    server.start()
    yield server
    server.stop()
