"""Inbox events per state, kept in memory so the metrics page and the worker's idle check cost
no query."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable


class StateCounts:
    """Adjusted by every write to the inbox, taken from the table again by ``recount``. A
    recount waits for the writes in flight and holds new ones back until it has read the
    table: a write is then either in the count it reads or applied after it, never both (a
    count that stays too high forever: the inbox never looks idle) or neither."""

    def __init__(self, states: Iterable[str]) -> None:
        self._states = tuple(states)
        self._counts: dict[str, int] | None = None
        self._writes = 0
        self._no_writes = asyncio.Event()
        self._no_writes.set()
        self._open = asyncio.Event()  # cleared while a recount reads the table
        self._open.set()
        self._recounting = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[Callable[[int, str | None, str | None], None]]:
        """Around a write and its adjustment: yields ``moved(n, from_state, to_state)``."""
        await self._open.wait()
        self._writes += 1
        self._no_writes.clear()
        try:
            yield self._moved
        finally:
            self._writes -= 1
            if not self._writes:
                self._no_writes.set()

    def _moved(self, n: int, src: str | None, dst: str | None) -> None:
        if self._counts is None or not n:
            return
        if src:
            self._counts[src] = max(0, self._counts[src] - n)
        if dst:
            self._counts[dst] += n

    async def recount(self, count: Callable[[], Awaitable[dict[str, int]]]) -> None:
        """Take the counts from ``count()`` (a query), with no write of ours in flight."""
        async with self._recounting:
            self._open.clear()
            try:
                await self._no_writes.wait()
                self._counts = {**dict.fromkeys(self._states, 0), **await count()}
            finally:
                self._open.set()

    async def get(self, count: Callable[[], Awaitable[dict[str, int]]]) -> dict[str, int]:
        if self._counts is None:
            await self.recount(count)
        assert self._counts is not None
        return dict(self._counts)
