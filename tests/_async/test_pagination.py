"""Cursor pagination: lazy iteration, pages, collecting, empty lists."""

from __future__ import annotations

import pytest
import respx

from archil._async.client import AsyncArchil

from .helpers import disk_json, ok


def three_pages(router: respx.MockRouter) -> respx.Route:
    return router.get("/api/disks").mock(
        side_effect=[
            ok([disk_json("dsk-a", "a"), disk_json("dsk-b", "b")], cursor="c1"),
            ok([disk_json("dsk-c", "c")], cursor="c2"),
            ok([disk_json("dsk-d", "d")]),
        ]
    )


async def test_iterating_walks_every_page(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = three_pages(router)
    ids = [disk.id async for disk in client.disks.list(limit=2)]
    assert ids == ["dsk-a", "dsk-b", "dsk-c", "dsk-d"]
    params = [dict(call.request.url.params) for call in route.calls]
    assert params == [
        {"limit": "2"},
        {"limit": "2", "cursor": "c1"},
        {"limit": "2", "cursor": "c2"},
    ]


async def test_pages_are_fetched_lazily(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = three_pages(router)
    pager = client.disks.list()
    assert route.call_count == 0
    async for disk in pager:
        assert disk.id == "dsk-a"
        break
    assert route.call_count == 1


async def test_pages(client: AsyncArchil, router: respx.MockRouter) -> None:
    three_pages(router)
    pages = [page async for page in client.disks.list().pages()]
    assert [len(p.items) for p in pages] == [2, 1, 1]
    assert [p.next_cursor for p in pages] == ["c1", "c2", None]


async def test_to_list(client: AsyncArchil, router: respx.MockRouter) -> None:
    three_pages(router)
    disks = await client.disks.list().to_list()
    assert [d.name for d in disks] == ["a", "b", "c", "d"]


async def test_null_data_is_an_empty_list(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get("/api/disks").mock(return_value=ok(None))
    assert [d async for d in client.disks.list()] == []
    assert await client.disks.list().to_list() == []


async def test_name_filter(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.get("/api/disks").mock(return_value=ok([disk_json()]))
    await client.disks.list(name="data").to_list()
    assert route.calls[0].request.url.params["name"] == "data"


async def test_tokens_list_shape(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get("/api/tokens").mock(
        side_effect=[
            ok({"tokens": [{"id": "t1", "name": "ci"}]}, cursor="n1"),
            ok({"tokens": [{"id": "t2", "name": "dev", "tokenSuffix": "ab12"}]}),
        ]
    )
    tokens = [t async for t in client.tokens.list()]
    assert [t.id for t in tokens] == ["t1", "t2"]
    assert tokens[1].token_suffix == "ab12"


@pytest.mark.parametrize("limit", [0, 101, -1])
async def test_bad_limit(client: AsyncArchil, router: respx.MockRouter, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        client.disks.list(limit=limit)
    assert not router.calls


async def test_repeated_cursor_ends_the_listing(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.get("/api/disks").mock(
        side_effect=[
            ok([disk_json("dsk-a")], cursor="same"),
            ok([disk_json("dsk-b")], cursor="same"),
        ]
    )
    assert len(await client.disks.list().to_list()) == 2
    assert route.call_count == 2
