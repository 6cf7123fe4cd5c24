"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archil.local.embedded import LocalServer

ServerFactory = Callable[..., LocalServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start local control planes (stopped at the end of the test)."""
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
