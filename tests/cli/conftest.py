"""Fixtures for the command line tests: local servers shared by a module's tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from archil.local.embedded import LocalServer

from .helpers import Cli


def _server(factory: pytest.TempPathFactory, name: str, **kwargs: Any) -> Iterator[LocalServer]:
    server = LocalServer(factory.mktemp(name), stop_grace=2.0, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A local control plane that creates nothing by itself (an unknown disk is a 404)."""
    yield from _server(tmp_path_factory, "cli-plain")


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A local control plane that creates a disk on first use, as the embedded one does."""
    yield from _server(tmp_path_factory, "cli-auto", auto_create_disks=True)


@pytest.fixture(scope="module")
def cli(plain_server: LocalServer) -> Iterator[Cli]:
    """The console script against :func:`plain_server`; no output of it shows the API key."""
    runner = Cli(plain_server)
    yield runner
    for text in runner.outputs:
        assert plain_server.api_key not in text


@pytest.fixture(scope="module")
def cli_auto(auto_server: LocalServer) -> Iterator[Cli]:
    """The console script against :func:`auto_server`; no output of it shows the API key."""
    runner = Cli(auto_server)
    yield runner
    for text in runner.outputs:
        assert auto_server.api_key not in text
