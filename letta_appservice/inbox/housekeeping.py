"""Housekeeping: forget what exactly-once no longer needs, so tables do not grow forever."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from ..db.database import now_ms

log = logging.getLogger("letta_appservice.housekeeping")
# Far beyond any redelivery by the homeserver and any retry window (letta.retry_window).
RETENTION_MS = 7 * 24 * 3600 * 1000
INTERVAL = 3600.0


class Prunable(Protocol):
    async def prune(self, older_than_ms: int) -> int: ...


async def prune(stores: Mapping[str, Prunable], older_than_ms: int) -> dict[str, int]:
    """Delete what each table no longer needs from before the cut-off: finished inbox events
    and txn ids, posted parts, stored answers, decided approval cards. Pending and processing
    events are kept whatever their age. Returns the rows removed per table."""
    return {name: await store.prune(older_than_ms) for name, store in stores.items()}


async def run_periodically(stores: Mapping[str, Prunable]) -> None:
    while True:
        try:
            removed = await prune(stores, now_ms() - RETENTION_MS)
            if any(removed.values()):
                log.info("Pruned old rows: %s", removed)
        except Exception:
            # The database may be briefly unavailable; the next round tries again.
            log.exception("Pruning old rows failed")
        await asyncio.sleep(INTERVAL)
