"""``archil.Archil``: the blocking client, also usable with ``async with``.

``with archil.Archil() as client:`` gives the blocking client. For code that
prefers coroutines, ``async with archil.Archil() as client:`` gives an
:class:`~archil.aio.AsyncArchil` built with the same configuration, closed on exit.
"""

from __future__ import annotations

from types import TracebackType

from ._async.client import AsyncArchil
from ._sync.client import Archil as _BlockingArchil

__all__ = ["Archil"]


class Archil(_BlockingArchil):
    """A client of the Archil control plane.

    Blocking by default (``client.disks.get(...)``); ``async with Archil() as
    client`` yields the async client (``await client.disks.get(...)``) built with
    the same configuration. See :class:`archil.aio.AsyncArchil` for the arguments.
    """

    _aio: AsyncArchil | None = None

    async def __aenter__(self) -> AsyncArchil:
        if self._aio is None:
            self._aio = AsyncArchil.from_config(self.config)
        return self._aio

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        aio, self._aio = self._aio, None
        if aio is not None:
            await aio.aclose()
