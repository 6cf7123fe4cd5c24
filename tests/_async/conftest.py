from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import respx

from archil._async.client import AsyncArchil

from .helpers import BASE, FakeClock, make_client


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
