from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import respx

from archil._async.client import AsyncArchil
from archil._async.resources.sandboxes import AsyncSandbox

from .helpers import BASE, FakeClock, make_client

# isort: split
# (tests/fake_sandbox_server.py lies outside the generated trees, so isort may class it
# either way depending on the checkout: it keeps a block of its own.)
import fake_sandbox_server
from fake_sandbox_server import SANDBOX_ID, FakeSandboxServer

# The fake sandbox server's fixtures (a session-wide server, reset for each test).
_fake_sandbox_server = fake_sandbox_server._fake_sandbox_server
sandbox_server = fake_sandbox_server.sandbox_server


@pytest.fixture(autouse=True)
def _no_archil_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ARCHIL_API_KEY", "ARCHIL_BASE_URL", "ARCHIL_REGION", "ARCHIL_OBJECT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(router: respx.MockRouter, clock: FakeClock) -> AsyncIterator[AsyncArchil]:
    c = make_client(clock)
    yield c
    await c.aclose()


@pytest.fixture
async def box(
    sandbox_server: FakeSandboxServer,
    clock: FakeClock,
) -> AsyncIterator[AsyncSandbox]:
    """The fake server's sandbox, through a client of it that never sleeps."""
    c = make_client(clock, api_key=sandbox_server.api_key, base_url=sandbox_server.base_url)
    try:
        yield await c.sandboxes.get(SANDBOX_ID)
    finally:
        await c.aclose()
