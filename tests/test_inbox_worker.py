"""The inbox worker on SQLite and PostgreSQL: order per lane, concurrency across lanes, retries,
and resuming after a crash."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from letta_appservice.db.inbox import InboxEvent, InboxStore
from letta_appservice.inbox import worker as worker_module
from letta_appservice.inbox.worker import InboxWorker, Retry
from tests.harness.events import message
from tests.harness.observe import eventually


async def counts_match_the_table(store: InboxStore) -> None:
    """The counts /metrics shows (kept in memory, adjusted by every write) are the table's."""
    kept = await store.counts()
    await store.recount()
    assert kept == await store.counts()


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
    assert first.error == "agent busy"  # why it was retried, for the operator


async def test_a_crashing_handler_fails_the_event_not_the_worker(store: InboxStore) -> None:
    await store.store_transaction("t", [message(1), message(2)])

    async def handler(ev: InboxEvent) -> None:
        if ev.event_id == "$event1":
            raise ValueError("bug " + "x" * 1000)

    worker = InboxWorker(store, handler)
    await worker.start()
    await worker.wait_idle()
    await counts_match_the_table(store)  # before stop(), which counts the table again
    assert (await store.counts())["failed"] == 1
    await worker.stop()
    failed, done = await store.get("$event1"), await store.get("$event2")
    assert failed is not None and failed.state == "failed"
    # What went wrong, for the operator, cut to 500 characters.
    error = failed.error or ""
    assert error.startswith("ValueError('bug xxx") and len(error) == 500
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


# --- memory: a flood is parked in the database, not held -----------------------------------------


async def test_a_flooded_lane_holds_at_most_lane_cap_events_and_takes_the_rest_back_in_order(
    store: InboxStore,
) -> None:
    await store.store_transaction("t", [message(i) for i in range(30)])  # one room: one lane
    held: list[int] = []  # events in memory as each one is handled
    gate = asyncio.Event()

    async def handler(ev: InboxEvent) -> None:
        await gate.wait()
        held.append(worker.in_flight)

    worker = InboxWorker(store, handler, claim_batch=5, max_claimed=20, lane_cap=4)
    await worker.start()
    # All claimed while the first event is handled: 4 held, 26 parked in the database.
    await eventually(
        lambda: store.db.fetchval("SELECT COUNT(*) = 26 FROM inbox WHERE lane IS NOT NULL")
    )
    assert worker.in_flight == 4
    await counts_match_the_table(store)  # parked events count as pending on /metrics
    gate.set()
    await worker.wait_idle()
    await worker.stop()
    # Taken back two at a time as the lane drains to half its cap, never beyond the cap.
    assert held == [4, 3] * 13 + [4, 3, 2, 1]
    rows = await store.db.fetch("SELECT event_id, state, lane FROM inbox ORDER BY seq")
    assert [(r["event_id"], r["state"], r["lane"]) for r in rows] == [
        (f"$event{i}", "done", None) for i in range(30)
    ]


async def test_with_memory_full_an_idle_lane_still_gets_its_events_one_at_a_time(
    store: InboxStore,
) -> None:
    busy, idle = "!busy:test.local", "!idle:test.local"
    await store.store_transaction("b", [message(i, room=busy) for i in range(4)])
    await store.store_transaction("i", [message(10 + i, room=idle) for i in range(8)])
    release = asyncio.Event()
    held: list[int] = []

    async def handler(ev: InboxEvent) -> None:
        if ev.room_id == busy:
            await release.wait()  # one slow agent holds all the memory there is (4 events)
        else:
            held.append(worker.in_flight)

    worker = InboxWorker(store, handler, claim_batch=5, max_claimed=4, lane_cap=4)
    await worker.start()
    try:
        await eventually(lambda: asyncio.sleep(0, len(held) == 8))
        # The idle lane got each of its events, but never more than one beyond the limit.
        assert held == [5] * 8
        await eventually(
            lambda: store.db.fetchval("SELECT COUNT(*) = 8 FROM inbox WHERE state = 'done'")
        )
        await counts_match_the_table(store)
        release.set()
        await worker.wait_idle()
    finally:
        await worker.stop()
    assert (await store.counts())["done"] == 12


async def test_a_busy_lane_stops_taking_events_into_memory_once_memory_is_full(
    store: InboxStore,
) -> None:
    await store.store_transaction("t", [message(i) for i in range(6)])  # one room: one lane
    release = asyncio.Event()
    handled: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        await release.wait()
        handled.append(ev.event_id)

    # The lane could hold 10; memory (4) fills first, and the lane has work: the rest wait in
    # the database, not one more in memory.
    worker = InboxWorker(store, handler, claim_batch=5, max_claimed=4, lane_cap=10)
    await worker.start()
    try:
        await eventually(
            lambda: store.db.fetchval("SELECT COUNT(*) = 2 FROM inbox WHERE lane IS NOT NULL")
        )
        assert worker.in_flight == 4
        release.set()
        await worker.wait_idle()
    finally:
        await worker.stop()
    assert handled == [f"$event{i}" for i in range(6)]


async def test_parking_and_done_marks_beyond_one_statements_worth_reach_every_event(
    store: InboxStore,
) -> None:
    # Ids go 500 to a statement: a burst of 1,001 takes three, and each event is in one.
    await store.store_transaction("t", [message(i) for i in range(1001)])
    seqs = [event.seq for event in await store.claim(1001)]
    await store.park({"!room:test.local": seqs})
    await counts_match_the_table(store)
    back = await store.unpark("!room:test.local", 2000)
    assert [event.seq for event in back] == seqs
    await store.finish_many(seqs)
    await counts_match_the_table(store)
    assert (await store.counts())["done"] == 1001


# --- stopping and the batched done marks ---------------------------------------------------------


def flaky_finish_many(
    store: InboxStore, monkeypatch: pytest.MonkeyPatch, meanwhile: asyncio.Event | None = None
) -> tuple[asyncio.Event, asyncio.Event]:
    """The database fails the first batch of done marks: (writing, failed), set as that write
    starts and as it fails. With ``meanwhile``, the write fails only once that is set (work
    that finished while the write was under way)."""
    writing, failed = asyncio.Event(), asyncio.Event()
    real = store.finish_many

    async def flaky(*args: Any) -> None:
        if not failed.is_set():
            writing.set()
            if meanwhile is not None:
                await meanwhile.wait()
                await asyncio.sleep(0)
            failed.set()
            raise ConnectionError("database went away")
        await real(*args)

    monkeypatch.setattr(store, "finish_many", flaky)
    return writing, failed


async def handled_after_restart(store: InboxStore) -> list[str]:
    handled: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        handled.append(ev.event_id)

    again = InboxWorker(store, handler)
    await again.start()
    await again.wait_idle()
    await again.stop()
    return handled


async def test_done_marks_the_database_failed_to_write_are_written_later(
    store: InboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.store_transaction("t", [message(1), message(2, room="!other:test.local")])
    second_done = asyncio.Event()
    writing, failed = flaky_finish_many(store, monkeypatch, meanwhile=second_done)
    handled: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        if ev.event_id == "$event2":
            await writing.wait()  # finishes while $event1's mark is being written
            second_done.set()
        handled.append(ev.event_id)

    worker = InboxWorker(store, handler)
    await worker.start()
    await worker.wait_idle(timeout=20)  # every mark written: the failed one and the one after
    await worker.stop()
    assert failed.is_set() and handled == ["$event1", "$event2"]
    assert (await store.counts())["done"] == 2
    assert await handled_after_restart(store) == []  # nothing handled twice


async def test_stop_writes_the_done_marks_still_waiting_and_takes_no_more_events(
    store: InboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.store_transaction("t", [message(1), message(2)])
    _, failed = flaky_finish_many(store, monkeypatch)
    handled: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        handled.append(ev.event_id)

    worker = InboxWorker(store, handler)
    await worker.start()
    await asyncio.wait_for(failed.wait(), 30)
    await worker.stop()  # while the marks wait for their next try
    before_stop = list(handled)
    assert before_stop[:1] == ["$event1"]
    assert (await store.counts())["done"] == len(before_stop)
    # A stopped worker is stopped: what arrives now waits for the next start.
    await store.store_transaction("t2", [message(3)])
    worker.wake()
    rest = [e for e in ["$event1", "$event2", "$event3"] if e not in before_stop]
    assert await handled_after_restart(store) == rest
    assert handled == before_stop


async def test_an_event_that_cannot_be_routed_goes_to_its_rooms_lane(store: InboxStore) -> None:
    await store.store_transaction("t", [message(1), message(2), message(3)])
    handled: list[str] = []

    async def lane_key(ev: InboxEvent) -> str:
        if ev.event_id == "$event2":
            raise LookupError("the router could not tell")
        return f"lane-of-{ev.room_id}"

    async def handler(ev: InboxEvent) -> None:
        handled.append(ev.event_id)

    worker = InboxWorker(store, handler, lane_key=lane_key)
    await worker.start()
    await worker.wait_idle()
    await worker.stop()
    assert sorted(handled) == ["$event1", "$event2", "$event3"]
    assert (await store.counts())["done"] == 3


# --- retries, polling, and a quiet log ----------------------------------------------------------


async def test_a_retry_waits_its_delay_and_a_handler_that_never_stops_asking_is_given_up(
    store: InboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "MAX_ATTEMPTS", 3)
    await store.store_transaction("t", [message(1), message(2)])
    tried: list[tuple[str, float]] = []

    async def handler(ev: InboxEvent) -> None:
        tried.append((ev.event_id, time.monotonic()))
        if ev.event_id == "$event1":
            raise Retry(0.3 if len(tried) == 1 else 0, "agent busy")

    worker = InboxWorker(store, handler)
    await worker.start()
    await worker.wait_idle()
    await worker.stop()
    assert [e for e, _ in tried] == ["$event1"] * 3 + ["$event2"]
    assert tried[1][1] - tried[0][1] >= 0.29  # not before its delay (ms precision)
    gave_up = await store.get("$event1")
    assert gave_up is not None and gave_up.state == "failed"
    assert gave_up.error == "gave up: agent busy" and gave_up.attempts == 3


async def test_an_event_stored_without_a_wake_up_is_found_by_polling(
    store: InboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "POLL_INTERVAL", 0.05)
    handled: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        handled.append(ev.event_id)

    worker = InboxWorker(store, handler)
    await worker.start()
    try:
        await asyncio.sleep(0.3)  # idle through a few polls
        await store.store_transaction("t", [message(1)])  # no wake()
        await eventually(lambda: asyncio.sleep(0, handled == ["$event1"]), timeout=10)
    finally:
        await worker.stop()


async def test_running_and_stopping_with_a_handler_still_busy_log_no_error(
    store: InboxStore, caplog: pytest.LogCaptureFixture
) -> None:
    busy, quick = "!busy:test.local", "!quick:test.local"
    await store.store_transaction("t", [message(1, room=busy), message(2, room=quick)])
    started, cleaned_up = asyncio.Event(), asyncio.Event()

    async def handler(ev: InboxEvent) -> None:
        if ev.room_id == busy:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0.5)  # a handler tidying up as it is stopped
                cleaned_up.set()
                raise

    worker = InboxWorker(store, handler)
    await worker.start()
    await asyncio.wait_for(started.wait(), 30)
    await eventually(lambda: store.db.fetchval("SELECT state = 'done' FROM inbox WHERE seq = 2"))
    await worker.stop()
    assert cleaned_up.is_set()  # stop() returns once its handlers have stopped
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_database_error_while_claiming_does_not_stop_the_worker(
    store: InboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.store_transaction("t", [message(1)])
    real, failures = store.claim, [ConnectionError("database went away")]

    async def flaky(limit: int) -> list[InboxEvent]:
        if failures:
            raise failures.pop()
        return await real(limit)

    monkeypatch.setattr(store, "claim", flaky)
    handled: list[str] = []

    async def handler(ev: InboxEvent) -> None:
        handled.append(ev.event_id)

    worker = InboxWorker(store, handler)
    await worker.start()
    await worker.wait_idle()
    await worker.stop()
    assert failures == [] and handled == ["$event1"]
