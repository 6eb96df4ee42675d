"""Inbox worker: drains stored events in arrival order, one lane per key, retries with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..db.inbox import DONE, FAILED, PENDING, InboxEvent, InboxStore
from ..errors import log_failure

log = logging.getLogger("letta_appservice.inbox")
# A lane must never die silently.
_LANE_FAILED = log_failure(log, "Inbox lane")

T = TypeVar("T")
Handler = Callable[[InboxEvent], Awaitable[None]]
LaneKey = Callable[[InboxEvent], Awaitable[str]]

# A handler that keeps asking for retries is stopped here even if it never gives up itself.
MAX_ATTEMPTS = 100
# Look for retries that came due even when nothing new arrives.
POLL_INTERVAL = 5.0
# Bookkeeping writes that fail (database down) are retried, waiting up to this long between.
MAX_BOOKKEEPING_DELAY = 30.0


class Retry(Exception):
    """Raised by a handler: try this event again after ``delay`` seconds. Events behind it in
    the same lane wait, so their order is kept."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


async def room_lane(event: InboxEvent) -> str:
    return event.room_id


class _Lane:
    """A lane's events in memory, in order, and how many more wait in the database (parked:
    all of them come after the ones in memory)."""

    __slots__ = ("parked", "queue")

    def __init__(self) -> None:
        self.queue: deque[InboxEvent] = deque()
        self.parked = 0


class InboxWorker:
    """Claims pending events, routes each into a FIFO lane (by ``lane_key``) and runs the
    handler for at most ``max_concurrency`` lanes at a time. Every outcome is written back, so
    a crash leaves only 'processing' rows, which the next start resumes.

    Fairness: a lane keeps at most ``lane_cap`` events in memory, all lanes together about
    ``max_claimed``; the events beyond are parked in the database (marked with their lane)
    and taken back in order as the lane drains. Claiming therefore never stops, so an idle
    lane's event is reached however many wait for one busy agent."""

    def __init__(
        self,
        store: InboxStore,
        handler: Handler,
        *,
        lane_key: LaneKey = room_lane,
        max_concurrency: int = 8,
        claim_batch: int = 200,
        max_claimed: int = 2000,
        lane_cap: int = 200,
    ) -> None:
        self.store = store
        self.handler = handler
        self.lane_key = lane_key
        self._sem = asyncio.Semaphore(max_concurrency)
        self._claim_batch = claim_batch
        self._max_claimed = max_claimed
        self._lane_cap = lane_cap
        self._wake = asyncio.Event()
        self._lanes: dict[str, _Lane] = {}
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._in_memory = 0
        # Parking (runner) and taking back (lanes) are serialised, so a lane never looks for
        # parked rows whose UPDATE has not run yet.
        self._park_lock = asyncio.Lock()
        self._runner: asyncio.Task[None] | None = None
        # Finished events are marked done in batches: one UPDATE for many events instead of
        # one each. A crash can lose at most the last few milliseconds of marks; those events
        # then run again, which handlers must tolerate anyway (they are idempotent).
        self._done: list[int] = []
        self._done_flush = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Called after a transaction is stored: look for work now."""
        self._wake.set()

    async def start(self) -> None:
        resumed = await self.store.resume_unfinished()
        if resumed:
            log.info("Resuming %d event(s) left unfinished by the last run", resumed)
        self._runner = asyncio.create_task(self._run(), name="inbox-worker")
        self._flusher = asyncio.create_task(self._flush_loop(), name="inbox-flush")
        self.wake()

    async def stop(self) -> None:
        tasks = [t for t in (self._runner, self._flusher, *self._lane_tasks.values()) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = self._flusher = None
        await self._flush()
        # Whatever was claimed or parked but not finished is picked up by the next start().
        await self.store.resume_unfinished()

    async def wait_idle(self, timeout: float = 30) -> None:
        """Wait until nothing is pending or running (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = await self.store.counts()
            busy = self._in_memory or self._done or counts[PENDING] or counts["processing"]
            if not busy:
                return
            self.wake()
            await asyncio.sleep(0.02)
        raise TimeoutError("inbox did not drain")

    @property
    def in_flight(self) -> int:
        """Events claimed and held in memory."""
        return self._in_memory

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                events = await self.store.claim(self._claim_batch)
            except Exception:
                log.exception("Could not read the inbox; retrying in %.0f s", POLL_INTERVAL)
                events = []
            if events:
                await self._admit(events)
            if len(events) == self._claim_batch:
                continue  # more may be waiting
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (stop())
            # that arrives in the same tick as the wake-up, and the worker would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._wake.wait()

    async def _admit(self, events: list[InboxEvent]) -> None:
        """Put claimed events into their lanes' memory, or park them: behind events already
        parked (order), in a full lane, or when memory is full and the lane has work anyway
        (a lane with nothing to do always gets its event)."""
        keys = [await self._key(event) for event in events]
        async with self._park_lock:
            parking: dict[str, list[int]] = {}
            for event, key in zip(events, keys, strict=True):
                lane = self._lanes.get(key)
                if lane is None:
                    lane = self._lanes[key] = _Lane()
                full = len(lane.queue) >= self._lane_cap or (
                    lane.queue and self._in_memory >= self._max_claimed
                )
                if lane.parked or full:
                    parking.setdefault(key, []).append(event.seq)
                    lane.parked += 1
                else:
                    lane.queue.append(event)
                    self._in_memory += 1
                if key not in self._lane_tasks:
                    task = asyncio.create_task(self._lane(key, lane), name=f"lane-{key}")
                    task.add_done_callback(_LANE_FAILED)
                    self._lane_tasks[key] = task
            if parking:
                await self._bookkeeping("park events", self.store.park, parking)

    async def _key(self, event: InboxEvent) -> str:
        try:
            return await self.lane_key(event)
        except Exception:
            log.exception("Could not route %s; using its room's lane", event.event_id)
            return event.room_id

    async def _lane(self, key: str, lane: _Lane) -> None:
        queue = lane.queue
        try:
            while True:
                if lane.parked and len(queue) <= self._lane_cap // 2:
                    await self._unpark(key, lane)
                if not queue:
                    if lane.parked:
                        continue  # memory was full: _unpark takes at least one now
                    break  # no await between this check and the lane's removal below
                await self._process(queue[0])
                queue.popleft()
                self._in_memory -= 1
                # An event in a room nobody serves is handled without a real suspension: give
                # the loop back after each, or a lane of 200 holds the homeserver's ack for
                # its whole run (and every lane ready in that tick adds its own).
                await asyncio.sleep(0)
        finally:
            # Non-empty only when cancelled: those rows stay 'processing' until resumed.
            self._in_memory -= len(queue)
            queue.clear()
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            self._lane_tasks.pop(key, None)

    async def _unpark(self, key: str, lane: _Lane) -> None:
        async with self._park_lock:
            room = self._lane_cap - len(lane.queue)
            if self._in_memory >= self._max_claimed:
                room = 0 if lane.queue else 1
            if not lane.parked or room <= 0:
                return
            events = await self._bookkeeping(
                "take back parked events", self.store.unpark, key, room
            )
            lane.parked = lane.parked - len(events) if len(events) == room else 0
            lane.queue.extend(events)
            self._in_memory += len(events)

    async def _process(self, event: InboxEvent) -> None:
        while True:
            delay = event.not_before / 1000 - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._sem:
                try:
                    await self.handler(event)
                except Retry as retry:
                    event.not_before = int((time.time() + retry.delay) * 1000)
                    event.attempts = await self._bookkeeping(
                        "record a retry",
                        self.store.postpone,
                        event.seq,
                        event.not_before,
                        retry.reason,
                    )
                    if event.attempts < MAX_ATTEMPTS:
                        log.info(
                            "Retrying %s in %.1f s (attempt %d): %s",
                            event.event_id,
                            retry.delay,
                            event.attempts,
                            retry.reason,
                        )
                        continue
                    await self._bookkeeping(
                        "record a failure",
                        self.store.finish,
                        event.seq,
                        FAILED,
                        f"gave up: {retry.reason}",
                    )
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # A bug in a handler must not stop the bridge; the row keeps the error.
                    log.exception("Handling %s failed", event.event_id)
                    await self._bookkeeping(
                        "record a failure", self.store.finish, event.seq, FAILED, repr(e)[:500]
                    )
                    return
            self._done.append(event.seq)
            self._done_flush.set()
            return

    async def _bookkeeping(self, what: str, write: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a write of the worker's own until it succeeds: a lane outlives a database
        outage instead of dying with its events left 'processing' until a restart."""
        delay = 0.5
        while True:
            try:
                return await write(*args)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Could not %s; retrying in %.1f s", what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BOOKKEEPING_DELAY)

    async def _flush_loop(self) -> None:
        while True:
            await self._done_flush.wait()
            self._done_flush.clear()
            await asyncio.sleep(0.005)  # let a burst of completions gather
            try:
                await self._flush()
            except Exception:
                log.exception("Could not mark events done; will retry")
                await asyncio.sleep(1)
                self._done_flush.set()

    async def _flush(self) -> None:
        done, self._done = self._done, []
        if not done:
            return
        try:
            await self.store.finish_many(done, DONE)
        except BaseException:
            self._done[:0] = done
            raise
