"""A real local control plane for SDK-level tests (both the async and the blocking client)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archil.local.embedded import LocalServer

ServerFactory = Callable[..., LocalServer]


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server for the tests of a module that need no special settings."""
    server = LocalServer(tmp_path_factory.mktemp("sdk-local"), stop_grace=2.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers with their own data directory and settings, stopped after the test."""
    started: list[LocalServer] = []

    def make(data_dir: Path | None = None, **kwargs: Any) -> LocalServer:
        kwargs.setdefault("stop_grace", 2.0)
        server = LocalServer(data_dir or tmp_path / "data", **kwargs)
        server.start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()
