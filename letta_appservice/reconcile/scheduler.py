"""Periodic runner for reconcile passes: one at a time, on a timer, on demand, and soon after
drift was seen; the last result is kept in bridge_state for the status command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger("letta_appservice.scheduler")
LAST_RESULT_KEY = "last_reconcile"


class Summary(Protocol):
    result: str

    def to_json(self) -> dict[str, Any]: ...


class StateStore(Protocol):
    async def set(self, key: str, value: Any) -> None: ...


PassRunner = Callable[[bool], Awaitable[Summary]]


class Scheduler:
    """Runs ``run_pass(full)`` every ``interval`` seconds (the first pass, at start, is full).

    ``run_now()`` waits for a pass in progress and then runs its own, so the caller always gets
    a result that reflects the moment it asked. ``poke()`` asks for a pass ``poke_delay``
    seconds from now (several pokes in that window make one pass).
    """

    def __init__(
        self,
        run_pass: PassRunner,
        interval: float,
        state: StateStore,
        *,
        poke_delay: float = 2.0,
    ) -> None:
        self._run_pass = run_pass
        self.interval = interval
        self.poke_delay = poke_delay
        self._state = state
        self._lock = asyncio.Lock()
        self._poked = asyncio.Event()
        self._done = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.last: Summary | None = None
        self.passes = 0

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="reconcile-scheduler")

    async def stop(self) -> None:
        """Stop the timer; a pass in progress is cancelled (each agent's row is saved after
        its own Matrix calls, so a cut pass is completed by the next one)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poke(self) -> None:
        self._poked.set()

    async def run_now(
        self, full: bool = False, *, first: Callable[[], Awaitable[None]] | None = None
    ) -> Summary:
        """Run a pass once none is running. ``first`` runs before it, under the same lock, so
        no other pass sees the state half-changed or writes an older copy of it back."""
        async with self._lock:
            if first is not None:
                await first()
            summary = await self._run_pass(full)
            self.last, self.passes = summary, self.passes + 1
            try:
                await self._state.set(LAST_RESULT_KEY, summary.to_json())
            except Exception as e:  # the pass itself went fine; don't lose it over bookkeeping
                log.warning("Could not store the reconcile result: %s", e)
        async with self._done:
            self._done.notify_all()
        return summary

    async def wait_for_passes(self, count: int) -> Summary | None:
        """Wait until ``count`` passes have finished since start (e.g. the start-up pass)."""
        async with self._done:
            await self._done.wait_for(lambda: self.passes >= count)
        return self.last

    async def _loop(self) -> None:
        full = True
        while True:
            try:
                await self.run_now(full)
                full = False
            except Exception:
                # A bug, not an outage (those are summarised by the pass): keep the timer alive.
                log.exception("Reconcile pass crashed")
            await self._sleep()

    async def _sleep(self) -> None:
        try:
            async with asyncio.timeout(self.interval):  # not wait_for: see inbox/worker.py
                await self._poked.wait()
        except TimeoutError:
            return
        await asyncio.sleep(self.poke_delay)  # let related events arrive: one pass for all
        self._poked.clear()
