"""Lazy, auto-paginating listings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from typing_extensions import Unpack

from .._pagination import AwaitableMixin, Page
from .._wire import RequestOptions
from ._transport import AsyncTransport

__all__ = ["AsyncCursorPager", "AsyncPager"]

T = TypeVar("T")


class AsyncPager(AwaitableMixin[T]):
    """A listing fetched page by page, on demand.

    Iterate it to walk every item of every page, use :meth:`pages` to walk the
    pages themselves, or :meth:`to_list` to collect everything.
    """

    async def _fetch_page(self, cursor: str | None) -> Page[T]:
        raise NotImplementedError

    async def pages(self) -> AsyncIterator[Page[T]]:
        """Yield each page in turn, fetching the next one only when asked for."""
        cursor: str | None = None
        while True:
            page = await self._fetch_page(cursor)
            yield page
            if not page.next_cursor or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()

    async def _items(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item

    async def to_list(self) -> list[T]:
        """Collect every item of every page into a list."""
        return [item async for item in self]


class AsyncCursorPager(AsyncPager[T]):
    """A control-plane listing paginated by ``cursor`` / ``nextCursor``."""

    def __init__(
        self,
        transport: AsyncTransport,
        path: str,
        params: Mapping[str, str | int],
        decode: Callable[[Any], list[T]],
        **options: Unpack[RequestOptions],
    ) -> None:
        self._transport = transport
        self._path = path
        self._params = dict(params)
        self._decode = decode
        self._options = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self._path!r}, params={self._params!r})"

    async def _fetch_page(self, cursor: str | None) -> Page[T]:
        params = dict(self._params)
        if cursor is not None:
            params["cursor"] = cursor
        envelope = await self._transport.request_json(
            "GET", self._path, params=params, **self._options
        )
        return Page(self._decode(envelope.data), envelope.next_cursor)
