"""Pieces of the pagers that are not generated: the page record and the awaitable mixin.

``_async/pagers.py`` bases its pager on :class:`AwaitableMixin`, so that
``await client.disks.list()`` gives a plain ``list``. ``__await__`` has no
blocking counterpart: the generator maps the mixin to :class:`BlockingMixin`,
and the blocking pager is simply iterated.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["AwaitableMixin", "BlockingMixin", "Page"]

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing: its items and the cursor of the next page (``None`` at the end)."""

    items: list[T] = field(default_factory=list)
    next_cursor: str | None = None


class AwaitableMixin(Generic[T]):
    """Makes an async pager awaitable: ``await pager`` collects every item into a list."""

    def to_list(self) -> Coroutine[Any, Any, list[T]]:
        """Collect every item of every page."""
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, list[T]]:
        return self.to_list().__await__()


class BlockingMixin(Generic[T]):
    """The blocking pager's base: iterate it, or call ``to_list()``."""
