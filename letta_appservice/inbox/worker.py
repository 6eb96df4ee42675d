"""Inbox worker: drains stored events in arrival order, one lane per key, retries with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from ..db.inbox import DONE, FAILED, PENDING, InboxEvent, InboxStore

log = logging.getLogger("letta_appservice.inbox")

Handler = Callable[[InboxEvent], Awaitable[None]]
LaneKey = Callable[[InboxEvent], Awaitable[str]]

# A handler that keeps asking for retries is stopped here even if it never gives up itself.
MAX_ATTEMPTS = 100
# Look for retries that came due even when nothing new arrives.
POLL_INTERVAL = 5.0


class Retry(Exception):
    """Raised by a handler: try this event again after ``delay`` seconds. Events behind it in
    the same lane wait, so their order is kept."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


async def room_lane(event: InboxEvent) -> str:
    return event.room_id


class InboxWorker:
    """Claims pending events, routes each into a FIFO lane (by ``lane_key``) and runs the
    handler for at most ``max_concurrency`` lanes at a time. Every outcome is written back, so
    a crash leaves only 'processing' rows, which the next start resumes."""

    def __init__(
        self,
        store: InboxStore,
        handler: Handler,
        *,
        lane_key: LaneKey = room_lane,
        max_concurrency: int = 8,
        claim_batch: int = 200,
        max_claimed: int = 2000,
    ) -> None:
        self.store = store
        self.handler = handler
        self.lane_key = lane_key
        self._sem = asyncio.Semaphore(max_concurrency)
        self._claim_batch = claim_batch
        self._max_claimed = max_claimed
        self._wake = asyncio.Event()
        self._lanes: dict[str, deque[InboxEvent]] = {}
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._claimed = 0
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
        # Whatever was claimed but not finished is picked up again by the next start().
        await self.store.resume_unfinished()

    async def wait_idle(self, timeout: float = 30) -> None:
        """Wait until nothing is pending or running (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = await self.store.counts()
            busy = self._claimed or self._done or counts[PENDING] or counts["processing"]
            if not busy:
                return
            self.wake()
            await asyncio.sleep(0.02)
        raise TimeoutError("inbox did not drain")

    @property
    def in_flight(self) -> int:
        return self._claimed

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._claimed < self._max_claimed:
                try:
                    events = await self.store.claim(
                        min(self._claim_batch, self._max_claimed - self._claimed)
                    )
                except Exception:
                    log.exception("Could not read the inbox; retrying in %.0f s", POLL_INTERVAL)
                    events = []
                for event in events:
                    await self._enqueue(event)
                if len(events) == self._claim_batch:
                    continue  # more may be waiting
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (stop())
            # that arrives in the same tick as the wake-up, and the worker would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._wake.wait()

    async def _enqueue(self, event: InboxEvent) -> None:
        try:
            key = await self.lane_key(event)
        except Exception:
            log.exception("Could not route %s; using its room's lane", event.event_id)
            key = event.room_id
        self._claimed += 1
        self._lanes.setdefault(key, deque()).append(event)
        if key not in self._lane_tasks:
            self._lane_tasks[key] = asyncio.create_task(self._lane(key), name=f"lane-{key}")

    async def _lane(self, key: str) -> None:
        queue = self._lanes[key]
        try:
            while queue:
                await self._process(queue[0])
                queue.popleft()
                self._claimed -= 1
        finally:
            # Non-empty only when cancelled: those rows stay 'processing' until resumed.
            self._claimed -= len(queue)
            del self._lanes[key], self._lane_tasks[key]

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
                    event.attempts = await self.store.postpone(
                        event.seq, event.not_before, retry.reason
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
                    await self.store.finish(event.seq, FAILED, f"gave up: {retry.reason}")
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # A bug in a handler must not stop the bridge; the row keeps the error.
                    log.exception("Handling %s failed", event.event_id)
                    await self.store.finish(event.seq, FAILED, repr(e)[:500])
                    return
            self._done.append(event.seq)
            self._done_flush.set()
            return

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
