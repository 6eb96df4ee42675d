"""The inbox worker on SQLite and PostgreSQL: order per lane, concurrency across lanes, retries,
and resuming after a crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.inbox import InboxEvent, InboxStore
from letta_appservice.inbox.worker import InboxWorker, Retry
from tests.harness.events import message


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[InboxStore]:
    db = await open_database(DatabaseURL.parse(database_url), in_child=False)
    yield InboxStore(db)
    await db.stop()


async def test_events_of_one_lane_run_in_order_lanes_run_concurrently(store: InboxStore) -> None:
    events = [message(i, room=f"!r{i % 2}:test.local") for i in range(10)]
    await store.store_transaction("t", events)
    seen: list[str] = []
    running: dict[str, int] = {"!r0:test.local": 0, "!r1:test.local": 0}
    both_at_once = asyncio.Event()

    async def handler(ev: InboxEvent) -> None:
        running[ev.room_id] += 1
        assert running[ev.room_id] == 1, "two events of one lane ran at once"
        if all(running.values()):
            both_at_once.set()
        await asyncio.sleep(0.01)
        seen.append(ev.event_id)
        running[ev.room_id] -= 1

    worker = InboxWorker(store, handler)
    await worker.start()
    await worker.wait_idle()
    await worker.stop()
    assert [e for e in seen if e in {f"$event{i}" for i in range(0, 10, 2)}] == [
        f"$event{i}" for i in range(0, 10, 2)
    ]
    assert [e for e in seen if e in {f"$event{i}" for i in range(1, 10, 2)}] == [
        f"$event{i}" for i in range(1, 10, 2)
    ]
    assert both_at_once.is_set()
    assert (await store.counts())["done"] == 10


async def test_retry_holds_the_lane_and_keeps_order(store: InboxStore) -> None:
    await store.store_transaction("t", [message(1), message(2)])
    calls: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        calls.append(ev.event_id)
        if ev.event_id == "$event1" and calls.count("$event1") < 3:
            raise Retry(0.01, "agent busy")

    worker = InboxWorker(store, handler)
    await worker.start()
    await worker.wait_idle()
    await worker.stop()
    assert calls == ["$event1", "$event1", "$event1", "$event2"]
    first = await store.get("$event1")
    assert first is not None and first.state == "done" and first.attempts == 2


async def test_a_crashing_handler_fails_the_event_not_the_worker(store: InboxStore) -> None:
    await store.store_transaction("t", [message(1), message(2)])

    async def handler(ev: InboxEvent) -> None:
        if ev.event_id == "$event1":
            raise ValueError("bug")

    worker = InboxWorker(store, handler)
    await worker.start()
    await worker.wait_idle()
    await worker.stop()
    failed, done = await store.get("$event1"), await store.get("$event2")
    assert failed is not None and failed.state == "failed" and "bug" in (failed.error or "")
    assert done is not None and done.state == "done"


async def test_unfinished_events_resume_after_a_crash(store: InboxStore) -> None:
    await store.store_transaction("t", [message(1), message(2)])
    started = asyncio.Event()

    async def stuck(ev: InboxEvent) -> None:
        started.set()
        await asyncio.sleep(3600)

    first = InboxWorker(store, stuck)
    await first.start()
    await asyncio.wait_for(started.wait(), 10)
    # Simulate a crash: the worker's tasks vanish, rows stay 'processing'.
    for task in [first._runner, *first._lane_tasks.values()]:
        assert task is not None
        task.cancel()
    await asyncio.sleep(0.05)
    assert (await store.counts())["processing"] == 2

    handled: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        handled.append(ev.event_id)

    second = InboxWorker(store, handler)
    await second.start()
    await second.wait_idle()
    await second.stop()
    assert handled == ["$event1", "$event2"]
