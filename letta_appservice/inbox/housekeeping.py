"""Housekeeping: forget what exactly-once no longer needs, so tables do not grow forever."""

from __future__ import annotations

import asyncio
import logging

from ..db.database import now_ms
from ..db.inbox import InboxStore
from ..db.sent_event import SentEventStore
from ..db.turn import TurnStore

log = logging.getLogger("letta_appservice.housekeeping")
# Far beyond any redelivery by the homeserver and any retry window (letta.retry_window).
RETENTION_MS = 7 * 24 * 3600 * 1000
INTERVAL = 3600.0


async def prune(
    inbox: InboxStore, sent: SentEventStore, turns: TurnStore, older_than_ms: int
) -> dict[str, int]:
    """Delete finished inbox events and txn ids, posted parts and stored answers older than
    the cut-off. Pending and processing events are kept whatever their age."""
    return {
        "inbox": await inbox.prune(older_than_ms),
        "sent_event": await sent.prune(older_than_ms),
        "letta_turn": await turns.prune(older_than_ms),
    }


async def run_periodically(inbox: InboxStore, sent: SentEventStore, turns: TurnStore) -> None:
    while True:
        try:
            removed = await prune(inbox, sent, turns, now_ms() - RETENTION_MS)
            if any(removed.values()):
                log.info("Pruned old rows: %s", removed)
        except Exception:
            # The database may be briefly unavailable; the next round tries again.
            log.exception("Pruning old rows failed")
        await asyncio.sleep(INTERVAL)
