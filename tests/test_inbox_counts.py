"""The inbox counts kept in memory (the metrics page, the worker's idle check) stay the table's
when a recount (at start, after the hourly prune) meets writes in flight, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from letta_appservice.db.inbox import InboxStore
from tests.harness.events import message


async def test_a_recount_while_a_transaction_is_stored_counts_its_events_once(
    store: InboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted by the recount's query and again by the store's own adjustment, an event kept
    the inbox looking busy forever (found as a benchmark's worker that never went idle)."""
    await store.counts()  # kept in memory from here on
    committed, counted = asyncio.Event(), asyncio.Event()
    real_store, real_count = store._store, store._count_table

    async def store_then_wait(*args: Any) -> Any:
        result = await real_store(*args)
        committed.set()
        # Committed; the recount may read the table now (it waits for us, if it is right).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(counted.wait(), timeout=1)
        return result

    async def count_then_release() -> dict[str, int]:
        counts = await real_count()
        counted.set()
        return counts

    monkeypatch.setattr(store, "_store", store_then_wait)
    monkeypatch.setattr(store, "_count_table", count_then_release)
    storing = asyncio.create_task(store.store_transaction("t", [message(1), message(2)]))
    await committed.wait()
    await asyncio.gather(store.recount(), storing)
    assert (await store.counts())["pending"] == 2
    monkeypatch.setattr(store, "_count_table", real_count)
    await store.recount()
    assert (await store.counts())["pending"] == 2
